import "does_not_exist.pat"
attend = dense
