# prelude.pat - the named patterns every script can use, written in the language itself.
# A script's own `let` or `def` of the same name takes its place.

# Longformer (Beltagy et al., 2020): a sliding window of w on each side, plus g global tokens
# at the start that attend to everything and that everything attends to.
def longformer(w = 256, g = 64) = window(w) | global(first(g))

# BigBird ITC (Zaheer et al., 2020): sliding blocks (band(1) = three blocks), g global tokens
# (two blocks by default) and `blocks` random key blocks per query block, drawn, as BigBird
# does, outside the sliding and global blocks (so each non-global row gains exactly `blocks`).
def bigbird(r = 1, g = 2 * B, blocks = 3, seed = 0) =
    band(r) | global(first(g)) | random(blocks, seed = seed, outside = band(r) | global(first(g)))

# Sparse Transformer, strided (Child et al., 2019): the s nearest keys and every s-th key.
# The paper's decoder is this with the `causal` statement.
def sparse_transformer_strided(s = 128) = window(s) | strided(s)

# Sparse Transformer, fixed (Child et al., 2019): blocks of `length` tokens attend within themselves,
# and the last c tokens of every block are summaries that everyone attends to (fixed(length, c)).
# With patterns = P > 1, head h takes the c tokens that end c * (h % P) before the block's end,
# so that heads summarise different tokens (DeepSpeed's num_different_global_patterns). A c above
# length counts as length, as in fixed(length, c).
def sparse_transformer_fixed(length = 128, c = 8, patterns = 1) =
    chunk(length) |
    columns(every(length, offset = length - min(c, length) * (1 + h % patterns), width = min(c, length)))

# StreamingLLM (Xiao et al., 2023): `sinks` attention-sink tokens at the start plus a causal
# window of the w most recent keys. Causal by construction.
def streaming(sinks = 4, w = 1024) = (columns(first(sinks)) & causal) | window(left = w, right = 0)
