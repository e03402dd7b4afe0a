# local_window.pat - sliding-window (local) attention: each token sees the 128 tokens on each
# side (Image Transformer, Parmar et al., 2018; the window of Longformer). Cost grows as n * w,
# but information needs n / w layers to cross the sequence.
block 64
heads 8
layers 6

attend = window(128)
