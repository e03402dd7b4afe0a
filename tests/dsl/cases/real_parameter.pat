attend = window(sqrt(n))
