# sparse_transformer_strided.pat - Sparse Transformer, strided (Child et al., 2019): each token
# sees the previous s tokens and every s-th token before it; with s near sqrt(n), two layers
# connect every pair. Suited to data with a period, like images and audio.
block 64
heads 8
layers 6
causal

let s = 64                          # about sqrt(n) at n = 4096
attend = window(left = s, right = 0) | strided(s)
