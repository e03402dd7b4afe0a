attend = global({0, window(3)})
