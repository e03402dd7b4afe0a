# golden: n=1024
# One summary pattern per head, 4 of them: heads 4..7 repeat heads 0..3.
heads 8
causal
attend = sparse_transformer_fixed(128, 8, patterns = 4)
