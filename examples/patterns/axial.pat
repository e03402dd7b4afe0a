# axial.pat - axial attention (Ho et al., 2019): on a 64 x 64 grid, each position attends to
# its whole row and its whole column; two layers connect every pair at a cost of n * (64 + 64).
# Run at n = 4096 (= 64 x 64).
block 64
heads 4
layers 4

attend = axial(width = 64)
