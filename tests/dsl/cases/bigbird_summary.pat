# golden: n=1000
block 64
heads 2
layers 2
let g = 2 * B
attend = band(1) | global(first(g)) | random(3, seed = 7)
