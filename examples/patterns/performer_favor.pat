# performer_favor.pat - Performer (Choromanski et al., 2021): FAVOR+ estimates dense softmax
# attention with positive orthogonal random features, in O(n m d) time instead of O(n^2 d)
# (m = features). It is not a mask: every key contributes to every query, approximately, so it
# stands alone on its attend line (`window(64) | favor(256)` is an error) and its heads keep no
# pairs for `stats` to count. The error against exact attention falls about as 1 / sqrt(m), and
# grows quickly with the size of the scores (|q| |k| scale): `sparsa run --check` measures it.
block 64
heads 8
layers 6

# Every head: 256 features, drawn from (seed, layer, head), so heads differ and runs repeat.
# Under a `causal` statement the same line computes causal attention by prefix sums.
attend = favor(features = 256)

# Two exact local heads beside the approximate ones (a head is either FAVOR+ or a mask).
attend[head 6..8] = window(128)
