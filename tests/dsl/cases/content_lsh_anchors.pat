attend = lsh(8) | anchors(4, fit = "content/anchors_1x4x16.npz")
