# bigbird.pat - BigBird (ITC): sliding blocks + global tokens + random blocks
block 64
heads 8
layers 6

let g = 2 * B                      # two global blocks
attend = band(1) | gobal(first(g)) | random(3, seed = 7)
