let f = favor(64)
def twice(p) = p | p
attend = twice(f)
