attend = columns(every(-4))
