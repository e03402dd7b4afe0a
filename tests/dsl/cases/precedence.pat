# golden: n=64 block=16
# ! binds tightest, then &, then -, then |
heads 3
attend = window(1) | window(8) - window(2) & causal
attend[head 1] = (window(1) | window(8)) - (window(2) & causal)
attend[head 2] = window(1) | (window(8) - (window(2) & causal))
