attend = dense
attend = window(3)
