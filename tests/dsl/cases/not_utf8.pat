# Latin-1, not UTF-8
attend = window(4) # fine in a comment: é
let xé = 1
