attend = rows(first(10))
