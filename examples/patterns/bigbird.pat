# bigbird.pat - BigBird ITC (Zaheer et al., 2020): sliding blocks + global tokens + random
# blocks. Random blocks shorten the paths between distant tokens (an expander graph), so few
# layers connect everything.
block 64
heads 8
layers 6

let g = 2 * B                      # two global blocks
attend = band(1) | global(first(g)) | random(3, seed = 7)
