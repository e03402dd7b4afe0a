attend = !window(3)
