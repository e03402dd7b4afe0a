# golden: n=300 block=16
# Under causal, P counts with causal applied: window(left = -1, right = 3) keeps only pairs
# above the diagonal, so no block is taken and the draw is that of plain random: the same
# masks as causal_random.pat.
heads 2
causal
attend = random(2, seed = 1, outside = window(left = -1, right = 3)) | window(4)
