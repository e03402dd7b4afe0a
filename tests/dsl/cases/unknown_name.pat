let width = 32
attend = window(wdth)
