attend = window(left = -3, right = 1)
