# Per-head patterns found by `sparsa learn distill --method search` (target share 0.900).
# Each comment gives the head's recall (share of the teacher's attention mass kept, averaged over
# query rows and the held-out inputs) and its block density.
block 16
heads 4
layers 2

attend = dense
attend[layer 0, head 0] = dense                                    # recall 1.0000, density 1.0000
attend[layer 0, head 1] = dense                                    # recall 1.0000, density 1.0000
attend[layer 0, head 2] = band(4)                                  # recall 0.9272, density 0.4844
attend[layer 0, head 3] = band(8)                                  # recall 0.9219, density 0.7812
attend[layer 1, head 0] = band(0)                                  # recall 0.9583, density 0.0625
attend[layer 1, head 1] = band(0)                                  # recall 0.9618, density 0.0625
attend[layer 1, head 2] = band(0)                                  # recall 0.9650, density 0.0625
attend[layer 1, head 3] = band(0)                                  # recall 0.9615, density 0.0625
