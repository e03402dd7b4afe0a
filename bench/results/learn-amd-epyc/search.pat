# Per-head patterns found by `sparsa learn distill --method search` (target share 0.900).
# Each comment gives the head's recall (share of the teacher's attention mass kept, averaged over
# query rows and the held-out inputs) and its block density.
block 16
heads 4
layers 2

attend = dense
attend[layer 0, head 0] = band(8)                                  # recall 0.9377, density 0.7812
attend[layer 0, head 1] = columns(first(16)) | band(4)             # recall 0.9036, density 0.5273
attend[layer 0, head 2] = band(0)                                  # recall 0.9671, density 0.0625
attend[layer 0, head 3] = band(0)                                  # recall 0.9658, density 0.0625
attend[layer 1, head 0] = band(0)                                  # recall 0.9923, density 0.0625
attend[layer 1, head 1] = band(0)                                  # recall 0.9931, density 0.0625
attend[layer 1, head 2] = band(0)                                  # recall 0.9945, density 0.0625
attend[layer 1, head 3] = band(0)                                  # recall 0.9924, density 0.0625
