block 64
heads 2
