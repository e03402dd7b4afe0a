attend = lsh(8.5)
