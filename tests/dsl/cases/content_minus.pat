attend = lsh(8) - window(2)
