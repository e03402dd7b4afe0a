attend = favor(128, redraw = -1)
