// Thread count from SPARSA_THREADS or the hardware, and a chunked parallel-for.
#include "engine/threads.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
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
    int64_t workers = std::min<int64_t>(threads, count);
    if (workers <= 1) {
        body(0, count);
        return;
    }
    std::exception_ptr first_error;
    std::mutex error_lock;
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(workers));
    for (int64_t w = 0; w < workers; ++w) {
        int64_t begin = count * w / workers;
        int64_t end = count * (w + 1) / workers;
        pool.emplace_back([&, begin, end] {
            try {
                body(begin, end);
            } catch (...) {
                std::lock_guard<std::mutex> guard(error_lock);
                if (!first_error) first_error = std::current_exception();
            }
        });
    }
    for (auto& t : pool) t.join();
    if (first_error) std::rethrow_exception(first_error);
}

} // namespace sparsa
