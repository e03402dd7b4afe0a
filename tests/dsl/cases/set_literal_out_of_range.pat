attend = window(2) | global({0, 999})
