# golden: n=512
heads 5
attend = longformer(w = 32, g = 16)
attend[head 1] = bigbird()
attend[head 2] = sparse_transformer_strided(32)
attend[head 3] = sparse_transformer_fixed(64, 4)
attend[head 4] = streaming(sinks = 4, w = 64)
