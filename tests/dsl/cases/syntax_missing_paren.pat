attend = window(3
