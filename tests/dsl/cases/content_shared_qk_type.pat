attend = lsh(8, shared_qk = 1)
