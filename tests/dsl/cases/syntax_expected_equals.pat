attend window(3)
