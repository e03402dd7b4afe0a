# golden: a setting whose expression calls a pattern with an unknown keyword is checked
# like an attend line (found by the parser fuzz: it used to write past the argument table)
layers 4 | lsh(bucketx = 8, rounds = 2)
attend = window(64)
