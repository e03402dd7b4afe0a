# under causal: the fixed part is intersected with causal, the spec carries causal
block 16
causal
attend = lsh(8, chunk = 32, seed = 3, shared_qk = false) | window(8) | global(first(4))
