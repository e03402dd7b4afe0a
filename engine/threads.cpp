// Thread count from SPARSA_THREADS or the hardware, and a chunked parallel-for.
#include "engine/threads.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

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
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

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
    // only, never on how many threads could be started.
    auto run_chunk = [&](int64_t w) noexcept {
        try {
            body(count * w / workers, count * (w + 1) / workers);
        } catch (...) {
            std::lock_guard<std::mutex> guard(error_lock);
            if (!first_error) first_error = std::current_exception();
        }
    };
    std::vector<std::thread> pool;
    int64_t started = 0;
    try {
        pool.reserve(static_cast<size_t>(workers - 1));
        // Chunk 0 runs on the calling thread. A thread that cannot start (under a memory limit
        // each one's stack is address space: EAGAIN, or bad_alloc for its state) is not an
        // error: the calling thread runs the chunks no thread took.
        for (; started < workers - 1; ++started) pool.emplace_back(run_chunk, started + 1);
    } catch (const std::system_error&) {
    } catch (const std::bad_alloc&) {
    }
    run_chunk(0);
    for (int64_t w = started + 1; w < workers; ++w) run_chunk(w);
    for (auto& t : pool) t.join();
    if (first_error) std::rethrow_exception(first_error);
}

} // namespace sparsa
