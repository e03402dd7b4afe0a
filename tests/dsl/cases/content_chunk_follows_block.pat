# golden: block=32
# chunk defaults to the compile's block (here --block 32, not the script's 16)
block 16
attend = lsh(8) | window(2)
