attend = lsh(8, seed = -1)
