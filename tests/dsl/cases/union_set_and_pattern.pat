attend = window(3) | first(4)
