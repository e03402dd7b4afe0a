attend = anchors(4, fit = "content/nope.npz")
