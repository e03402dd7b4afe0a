attend = window(8) | anchors(4)
