// The main thread's stack under a memory limit (ulimit -v): room reserved at start, and a stack
// that cannot grow reported as "out of memory" instead of a segmentation fault.
#pragma once

#include <cstddef>

namespace sparsa::cli {

// Call first in main(). Installs a SIGSEGV handler on its own stack and grows the main stack by
// `reserve` bytes now, while the address space has room (the kernel counts a stack's pages
// against RLIMIT_AS as it grows, and later the heap may have taken them). A fault in the main
// stack's range then prints "sparsa COMMAND: error: out of memory: ..." and exits 1, or, past the
// stack's size limit, says the stack is full and exits 3; any other fault keeps the default
// action (a crash with a core). Either way the temporary files of unfinished writes are removed.
void stack_guard_install(const char* command, size_t reserve);

} // namespace sparsa::cli
