attend = lsh(8, file = "content/not_npy.npy")
