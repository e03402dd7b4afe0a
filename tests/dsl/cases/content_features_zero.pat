attend = favor(0)
