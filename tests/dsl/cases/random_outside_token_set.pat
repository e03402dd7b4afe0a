attend = band(1) | random(3, outside = first(128))
