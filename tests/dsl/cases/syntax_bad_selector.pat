heads 4
attend = dense
attend[heads 2] = window(4)
