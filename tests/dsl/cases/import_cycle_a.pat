import "import_cycle_b.pat"
attend = dense
