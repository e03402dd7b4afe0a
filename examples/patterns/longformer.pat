# longformer.pat - Longformer (Beltagy et al., 2020): a sliding window plus a few global
# tokens (e.g. [CLS] and question tokens) that attend everywhere and are attended by all.
block 64
heads 12
layers 12

attend = window(256) | global(first(64))

# The same from the prelude: attend = longformer(w = 256, g = 64)
