let g = 3
let g = 4
attend = window(g)
