let true = 1
attend = window(true)
