# reformer_lsh.pat - Reformer (Kitaev et al., 2020): angular LSH buckets. Each token's query is
# hashed (a random rotation R, bucket = argmax([qR, -qR])); tokens are sorted by (bucket,
# position), the sorted sequence is cut into chunks of 64, and each chunk attends to itself and
# the chunk before it. Queries and keys share one hash (Reformer ties Q and K), and a token
# attends to itself only when it has no other key. The pairs depend on Q and K, so they exist
# only when attention runs: `sparsa run` realises them and reports bucket sizes, density and
# recall; `sparsa stats` and `show` count the window part and say which heads hash.
block 64
heads 8
layers 6
causal

# Heads 0-3: Reformer's causal LM layer, buckets alone. Two rounds (two rotations) unite their
# pairs: a neighbour split off by one hash is often caught by the other. 64 buckets suit
# n = 4096 (Reformer takes about n / chunk buckets, so a bucket fills about one chunk); lsh
# needs n >= buckets.
attend = lsh(64, rounds = 2, chunk = 64)

# Heads 4-7: a local window united with the hashed pairs; a token always sees its 64 nearest
# predecessors, whatever the hash does. The softmax is exact over the union (a pair found twice
# counts once).
attend[head 4..8] = window(64) | lsh(64, rounds = 2, chunk = 64)
