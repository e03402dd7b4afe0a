# lsh alone: an empty fixed part, and no empty-row warning (its pairs come per input)
block 32
layers 2
heads 2
attend = lsh(16, seed = 5)
