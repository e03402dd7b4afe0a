def f(w) = w(3)
attend = f(2)
