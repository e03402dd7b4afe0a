# dense.pat - full attention, as in the original Transformer (Vaswani et al., 2017).
# Every query attends to every key: the baseline every sparse pattern is measured against.
block 64
heads 8
layers 6

attend = dense
