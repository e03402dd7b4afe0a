import "lib.pat
attend = dense
