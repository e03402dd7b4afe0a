attend = global(every(8, offset = 2, width = 9))
