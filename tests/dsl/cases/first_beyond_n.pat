# golden: n=256
attend = window(8) | global(first(1000))
