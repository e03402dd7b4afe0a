attend = window(mni(n, 64))
