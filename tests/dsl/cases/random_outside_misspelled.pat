attend = band(1) | random(3, outsde = band(1))
