# sparse_transformer_fixed.pat - Sparse Transformer, fixed (Child et al., 2019): tokens attend
# within their block of l, and the last c tokens of every block act as summaries that all
# later tokens attend to. Suited to text, where the strided pattern's period means little.
block 64
heads 8
layers 6
causal

attend = fixed(128, 8)
