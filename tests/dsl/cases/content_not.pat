attend = window(2) | !lsh(8)
