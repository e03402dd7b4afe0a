block 64
block 32
attend = dense
