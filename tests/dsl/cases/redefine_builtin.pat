let window = 3
attend = dense
