# lsh united with a window: the window compiles, the spec goes beside it (chunk = B)
block 16
attend = window(4) | lsh(8, rounds = 2)
