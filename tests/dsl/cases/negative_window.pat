attend = window(-1)
