attend = window(n / (B - 64))
