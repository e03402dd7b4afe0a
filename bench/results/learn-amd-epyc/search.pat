# Per-head patterns found by `sparsa learn distill --method search` (target share 0.900).
# Each comment gives the head's recall (share of the teacher's attention mass kept, averaged over
# query rows and the held-out inputs) and its block density.
block 16
heads 4
layers 2

attend = dense
attend[layer 0, head 0] = dense                                    # recall 1.0000, density 1.0000
attend[layer 0, head 1] = dense                                    # recall 1.0000, density 1.0000
attend[layer 0, head 2] = dense                                    # recall 1.0000, density 1.0000
attend[layer 0, head 3] = dense                                    # recall 1.0000, density 1.0000
attend[layer 1, head 0] = dense                                    # recall 1.0000, density 1.0000
attend[layer 1, head 1] = dense                                    # recall 1.0000, density 1.0000
attend[layer 1, head 2] = dense                                    # recall 1.0000, density 1.0000
attend[layer 1, head 3] = dense                                    # recall 1.0000, density 1.0000
