attend = band(1) | random(3, outside = anchors(4, fit = "content/anchors_1x4x16.npz"))
