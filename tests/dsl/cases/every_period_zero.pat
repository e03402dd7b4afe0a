attend = global(every(0, width = 1))
