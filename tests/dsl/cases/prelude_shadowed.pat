def longformer(w) = window(w)
attend = longformer(4)
