// Thread count and a plain parallel-for over index ranges; results never depend on the count.
#pragma once

#include <cstdint>
#include <functional>

namespace sparsa {

// Threads to use: SPARSA_THREADS when set to a positive integer, else the core count.
// Throws sparsa::Error when SPARSA_THREADS is set to something else.
int thread_count();

// Runs body(begin, end) over [0, count) split into contiguous chunks on up to `threads` threads
// (0: thread_count()). The first exception thrown by any chunk is rethrown after all finish.
// The calling thread runs chunks too. Under a memory limit (ulimit -v) fewer threads start, as
// many as have their stacks in a quarter of the address space left, and a thread that cannot
// start is not an error: the chunks are the same, and so are the results.
void parallel_for(int64_t count, int threads, const std::function<void(int64_t, int64_t)>& body);

} // namespace sparsa
