heads 2
attend = window(4)
attend[head 5] = dense
