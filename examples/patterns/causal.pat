# causal.pat - a decoder's causal mask (GPT, Radford et al., 2018): each token sees itself and
# the tokens before it. Dense in the lower triangle, so half the pairs of `dense`.
block 64
heads 8
layers 6
causal

attend = dense
