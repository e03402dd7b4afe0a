attend = window(3) )
