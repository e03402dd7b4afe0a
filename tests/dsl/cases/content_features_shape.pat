attend = favor(32, file = "content/features_64x16.npy")
