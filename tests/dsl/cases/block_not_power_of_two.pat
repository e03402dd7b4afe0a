block 48
attend = dense
