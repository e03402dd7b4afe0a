# through let and def, as any pattern
block 16
let hashed = lsh(16, rounds = 2)
def with(p) = p | hashed
attend = with(band(1)) | global(first(16))
