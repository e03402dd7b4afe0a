# golden: n=1000
# BigBird: 3 random blocks outside the band and the global blocks. Every (layer, head)
# keeps the same count: 2 global rows of 16 blocks, the band and global columns elsewhere,
# and exactly 3 more blocks on each of the 14 other rows.
block 64
heads 2
layers 2
let local = band(1) | global(first(2 * B))
attend = local | random(3, seed = 7, outside = local)
