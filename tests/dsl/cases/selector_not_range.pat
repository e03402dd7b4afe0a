heads 4
attend = dense
attend[head window(3)] = window(3)
