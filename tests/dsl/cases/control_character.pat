attend = window(4) [31m
