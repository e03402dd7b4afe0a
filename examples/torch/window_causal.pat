# window_causal.pat - a causal window of 4 tokens plus the first 4 (the first two pairs), for
# train_tiny_lm.py: a pair outside both is out of reach, so this pattern cannot learn the whole task.
block 16
heads 4
causal

attend = window(left = 4, right = 0) | columns(first(4))
