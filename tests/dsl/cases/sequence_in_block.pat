block B * 2
attend = dense
