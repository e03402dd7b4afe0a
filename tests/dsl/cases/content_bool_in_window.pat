attend = window(true)
