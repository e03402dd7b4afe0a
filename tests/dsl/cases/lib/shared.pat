# a library of definitions for import_ok.pat
def my_local(w) = window(w)
let sinks = columns(first(4))
attend = dense   # ignored when imported
