let w = 3
attend = w
