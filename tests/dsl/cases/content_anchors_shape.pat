attend = anchors(8, fit = "content/anchors_1x4x16.npz")
