attend = lsh(8, rounds = 3, file = "content/rotations_2x16x4.npy")
