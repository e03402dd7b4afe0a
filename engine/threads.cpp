// Thread count from SPARSA_THREADS or the hardware, and a chunked parallel-for.
#include "engine/threads.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#ifndef __EMSCRIPTEN__
#include <pthread.h>
#include <sys/resource.h>
#endif

namespace sparsa {

int thread_count() {
    if (const char* env = std::getenv("SPARSA_THREADS"); env != nullptr && *env != '\0') {
        char* end = nullptr;
        long value = std::strtol(env, &end, 10);
        if (*end != '\0' || value < 1 || value > 4096) {
            throw Error("SPARSA_THREADS='" + std::string(env) +
                        "' is not a thread count (use an integer from 1 to 4096, or unset it)");
        }
        return static_cast<int>(value);
    }
#ifdef __EMSCRIPTEN__
    return 1;  // the WebAssembly build (web/) has no threads: see parallel_for
#else
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
#endif
}

#ifdef __EMSCRIPTEN__

// The page's WebAssembly build (web/) is single-threaded (threads there need cross-origin
// isolation, which a page opened as file:// does not have). The chunks are the same as with
// threads, run in order on the calling thread, so the results are too.
void parallel_for(int64_t count, int threads, const std::function<void(int64_t, int64_t)>& body) {
    if (count <= 0) return;
    if (threads <= 0) threads = thread_count();
    const int64_t workers = std::min<int64_t>(threads, count);
    for (int64_t w = 0; w < workers; ++w) body(count * w / workers, count * (w + 1) / workers);
}

#else

namespace {

// How many more threads may start under a memory limit (RLIMIT_AS, ulimit -v): as many as have
// their stacks (each reserves its full size of address space) in a quarter of the address space
// left, so that the work keeps the rest. INT64_MAX without a limit.
int64_t threads_memory_allows() {
    struct rlimit limit {};
    if (::getrlimit(RLIMIT_AS, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return INT64_MAX;
    size_t stack = size_t{8} << 20;
#ifdef __GLIBC__
    pthread_attr_t attr;
    if (::pthread_getattr_default_np(&attr) == 0) {
        ::pthread_attr_getstacksize(&attr, &stack);
        ::pthread_attr_destroy(&attr);
    }
#endif
    unsigned long long used_kb = 0;
    if (std::FILE* status = std::fopen("/proc/self/status", "r")) {
        char line[256];
        while (std::fgets(line, sizeof line, status) != nullptr && std::sscanf(line, "VmSize: %llu kB", &used_kb) != 1) {}
        std::fclose(status);
    }
    const unsigned long long used = used_kb * 1024, cap = limit.rlim_cur;
    return used >= cap ? 0 : static_cast<int64_t>((cap - used) / 4 / (stack + (size_t{64} << 10)));
}

} // namespace

void parallel_for(int64_t count, int threads, const std::function<void(int64_t, int64_t)>& body) {
    if (count <= 0) return;
    if (threads <= 0) threads = thread_count();
    const int64_t workers = std::min<int64_t>(threads, count);
    if (workers <= 1) {
        body(0, count);
        return;
    }
    std::exception_ptr first_error;
    std::mutex error_lock;
    // Chunk w is [count * w / workers, count * (w + 1) / workers): the split depends on `workers`
    // only, never on how many threads run the chunks, which each take the next one left.
    std::atomic<int64_t> next{0};
    auto run_chunks = [&]() noexcept {
        for (int64_t w; (w = next.fetch_add(1)) < workers;) {
            try {
                body(count * w / workers, count * (w + 1) / workers);
            } catch (...) {
                std::lock_guard<std::mutex> guard(error_lock);
                if (!first_error) first_error = std::current_exception();
            }
        }
    };
    // The calling thread is one of the workers. Under a memory limit fewer threads start; a thread
    // that cannot start anyway (EAGAIN, or bad_alloc for its state) is not an error either.
    const int64_t helpers = std::min(workers - 1, threads_memory_allows());
    std::vector<std::thread> pool;
    try {
        pool.reserve(static_cast<size_t>(helpers));
        for (int64_t t = 0; t < helpers; ++t) pool.emplace_back(run_chunks);
    } catch (const std::system_error&) {
    } catch (const std::bad_alloc&) {
    }
    run_chunks();
    for (auto& t : pool) t.join();
    if (first_error) std::rethrow_exception(first_error);
}

#endif // __EMSCRIPTEN__

} // namespace sparsa
