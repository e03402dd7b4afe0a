attend = window(64) | lsh(7)
