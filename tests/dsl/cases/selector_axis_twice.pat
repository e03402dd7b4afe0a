heads 4
attend = dense
attend[head 1, head 2] = window(3)
