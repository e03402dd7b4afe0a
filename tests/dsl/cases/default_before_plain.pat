def f(a = 1, b) = window(a + b)
attend = f(2)
