# golden: n=300 block=16
# Under causal, P & causal keeps blocks qb - 1 and qb: the 2 random blocks are drawn among
# 0 .. qb - 2 (row 2 has one candidate; rows 0 and 1 none).
heads 2
causal
attend = window(4) | random(2, seed = 1, outside = window(4))
