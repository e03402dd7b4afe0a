heads 4
attend = dense
attend[head 2..8] = window(3)
