// How much of this thread's stack is left. The language's few recursive parts (the grammar's
// nesting, the evaluator's calls of definitions) stop with a diagnostic before the stack runs
// out, on any thread: a Python thread or a viewer's worker may have far less than the 8 MiB of
// a main thread. Everything else in dsl/ walks deep structures with explicit stacks.
#pragma once

#include <cstddef>

namespace sparsa::dsl {

// Recursion stops when less than this is left: room for the diagnostic, the exception's
// unwinding and the caller's own frames.
constexpr size_t kStackReserve = 256 * 1024;

// Bytes between the current frame and the far end of this thread's stack; SIZE_MAX where the
// platform does not say (then only the fixed limits apply). The bounds are read once per thread.
size_t stack_left();

inline bool stack_nearly_exhausted() { return stack_left() < kStackReserve; }

} // namespace sparsa::dsl
