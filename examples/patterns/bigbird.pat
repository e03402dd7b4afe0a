# bigbird.pat - BigBird ITC (Zaheer et al., 2020): sliding blocks + global tokens + random
# blocks. Random blocks shorten the paths between distant tokens (an expander graph), so few
# layers connect everything. As in BigBird, they are drawn outside the window and the global
# blocks: every query block that is not global gains exactly 3 key blocks of its own.
block 64
heads 8
layers 6

let g = 2 * B                      # two global blocks
let local = band(1) | global(first(g))
attend = local | random(3, seed = 7, outside = local)
