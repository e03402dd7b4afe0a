attend = fixed(16, 20)
