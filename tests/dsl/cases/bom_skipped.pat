# a UTF-8 byte order mark before the first line is skipped
heads 2
attend = window(8)
