let café = window(4)
attend = café
