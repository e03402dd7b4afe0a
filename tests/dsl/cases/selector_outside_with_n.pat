heads 2
# selectors that need n are checked when n is known
attend = window(4)
attend[head n / 100] = dense
