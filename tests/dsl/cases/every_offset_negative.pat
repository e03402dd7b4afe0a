attend = columns(every(16, offset = -1, width = 2))
