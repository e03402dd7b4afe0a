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
// When threads cannot be started (a memory limit), the calling thread runs their chunks: fewer
// threads, the same chunks and the same results.
void parallel_for(int64_t count, int threads, const std::function<void(int64_t, int64_t)>& body);

} // namespace sparsa
