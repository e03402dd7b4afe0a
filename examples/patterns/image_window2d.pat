# image_window2d.pat - neighbourhood attention on an image (NATTEN, Hassani et al., 2023;
# Swin-like locality): a 64 x 64 grid of patches in row-major order, each attending to the
# 7 x 7 patches around it. Run at n = 4096 (= 64 x 64).
block 64
heads 4
layers 4

attend = window2d(3, width = 64)
