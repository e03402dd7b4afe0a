attend = band(1) | random(3, outside = 2)
