# golden: n=300 block=16
heads 2
causal
attend = random(2, seed = 1) | window(4)
