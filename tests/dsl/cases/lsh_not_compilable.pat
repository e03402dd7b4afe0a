attend = window(64) | lsh(buckets = 8, rounds = 2)
