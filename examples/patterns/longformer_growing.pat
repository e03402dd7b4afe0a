# longformer_growing.pat - Longformer's autoregressive character-LM setting (Beltagy et al.,
# 2020, section 4): the window grows with depth (small windows low in the stack for local
# detail, large ones high up), and some heads of the upper layers are dilated, so they reach
# further at the same cost.
block 64
heads 8
layers 12
causal

let w = 32 * 2 ^ (l / 3)            # 32 in layers 0-2, 64 in 3-5, 128 in 6-8, 256 in 9-11
attend = window(w)

# Two heads of each upper layer use dilation 2: the same number of keys, twice the span.
attend[layer 6..12, head 0..2] = dilated(w, 2)
