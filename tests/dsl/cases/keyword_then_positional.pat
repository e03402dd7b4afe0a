attend = window(left = 1, 2)
