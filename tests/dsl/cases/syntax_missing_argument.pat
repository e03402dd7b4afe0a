attend = window(3) | global(first(g), )
