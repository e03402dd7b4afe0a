attend = anchors(4, chunk = 0, fit = "content/anchors_1x4x16.npz")
