def local(w) = window(w)
attend = local
