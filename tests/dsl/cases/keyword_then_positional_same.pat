attend = random(3, seed = 1, band(1))
