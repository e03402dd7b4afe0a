attend = band(1) | random(3, outside = 0..128)
