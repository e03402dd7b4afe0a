attend = favor(64, file = "content/features_64x16_f64.npy")
