# per_head_mix.pat - different heads, different patterns (as in the Longformer and Sparse
# Transformer ablations): two local heads, two dilated, two strided, two with global tokens.
# Selectors are half-open ranges of heads; a later line wins.
block 64
heads 8
layers 4

attend = window(64)                                   # heads 0-1: local
attend[head 2..4] = dilated(32, 1 + h % 2 * 3)        # heads 2-3: dilation 1 and 4
attend[head 4..6] = window(32) | strided(256)         # heads 4-5: local + strided
attend[head 6..8] = window(32) | global(first(128))   # heads 6-7: local + global
