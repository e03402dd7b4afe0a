# paragraph_starters.pat - global tokens at the start of each paragraph (as in ETC's
# global-local attention, Ainslie et al., 2020, with one global token per paragraph): local
# windows carry detail, and the paragraph starters, every 256 tokens here, carry a summary
# across the whole document.
block 64
heads 8
layers 6

let paragraph = 256
attend = window(64) | global(every(paragraph))
