attend = window
