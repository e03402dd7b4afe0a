attend = global(every(8, width = band(1)))
