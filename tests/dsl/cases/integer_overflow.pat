attend = window(2 ^ 70)
