# 9 summary patterns of 8 tokens do not fit in 64: head 8 would start before its block.
heads 9
attend = sparse_transformer_fixed(64, 8, patterns = 9)
