# sparse_transformer_fixed.pat - Sparse Transformer, fixed (Child et al., 2019): tokens attend
# within their block of `length`, and the last c tokens of every block act as summaries that
# all later tokens attend to. Suited to text, where the strided pattern's period means little.
# The same mask as fixed(length, c); the prelude's sparse_transformer_fixed(length, c,
# patterns = 4) gives each head its own c summary tokens, as the paper suggests for several heads.
block 64
heads 8
layers 6
causal

let length = 128
let c = 8
attend = chunk(length) | columns(every(length, offset = length - c, width = c))  # c summaries every block
