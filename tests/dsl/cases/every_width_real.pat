attend = global(every(8, width = 2.5))
