attend = lsh(8, file = 3)
