# recall_sparse.pat - for train_tiny_lm.py --filler (the GPU run in README.md): every token sees the
# first 16 tokens (the 8 key-value pairs) and its own last 16; the filler between is out of reach,
# as the task allows. 4 heads, as the example model has; every layer of the model uses this one.
block 64
heads 4
causal

attend = columns(first(16)) | window(left = 16, right = 0)
