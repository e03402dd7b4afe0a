attend = load("no_such_mask.npz")
