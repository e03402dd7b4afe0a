attend = lsh(0)
