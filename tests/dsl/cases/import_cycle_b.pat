import "import_cycle_a.pat"
let x = 3
