heads 0
attend = dense
