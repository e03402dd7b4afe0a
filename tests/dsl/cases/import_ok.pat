import "lib/shared.pat"
heads 2
attend = my_local(8)
attend[head 1] = my_local(8) | sinks
