# explicit random numbers: rotations [rounds, d, buckets / 2], features [features, d]
block 16
heads 2
attend = lsh(8, rounds = 2, file = "content/rotations_2x16x4.npy")
attend[head 1] = favor(64, redraw = 10, file = "content/features_64x16.npy")
