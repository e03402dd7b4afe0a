# golden: n=32
block 16
attend = window(4) | lsh(64)
