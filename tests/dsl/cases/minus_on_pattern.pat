attend = -window(3)
