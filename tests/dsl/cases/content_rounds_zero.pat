attend = lsh(8, rounds = 0)
