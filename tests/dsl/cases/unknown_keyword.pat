attend = window(lft = 3, right = 0)
