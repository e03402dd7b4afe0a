# dense_causal.pat - every earlier token: the same function as dense causal SDPA, for train_tiny_lm.py
# (4 heads, as the example model has; every layer of the model uses this one).
block 16
heads 4
causal

attend = dense
