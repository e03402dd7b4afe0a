attend = global(every(8, width = -1))
