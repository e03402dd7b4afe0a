let g = 64
attend = window(g(2))
