attend = band(1, 2)
