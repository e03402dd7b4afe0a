# distinct heads, distinct families; equal specs shared
block 16
heads 4
layers 2
attend = window(8) | lsh(8)
attend[head 1] = anchors(4, fit = "content/anchors_1x4x16.npz")
attend[head 2..4] = favor(64, seed = 1)
attend[layer 1, head 3] = dense
