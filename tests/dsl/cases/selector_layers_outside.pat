layers 3
attend = window(4)
attend[layer 2..4] = dense
attend[layer 3..6] = band(1)
