attend = lsh(8) | window(4) | lsh(16)
