// parallel_for covers every index once whatever the thread count, rethrows a chunk's exception,
// and SPARSA_THREADS is read strictly.
#include "engine/error.hpp"
#include "engine/threads.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace sparsa;
using Catch::Matchers::Contains;

namespace {

// Sets SPARSA_THREADS for one scope and puts back what was there.
class ThreadsEnv {
public:
    explicit ThreadsEnv(const char* value) {
        if (const char* old = std::getenv("SPARSA_THREADS")) old_ = old;
        if (value) setenv("SPARSA_THREADS", value, 1);
        else unsetenv("SPARSA_THREADS");
    }
    ~ThreadsEnv() {
        if (old_) setenv("SPARSA_THREADS", old_->c_str(), 1);
        else unsetenv("SPARSA_THREADS");
    }

private:
    std::optional<std::string> old_;
};

} // namespace

TEST_CASE("parallel_for covers each index exactly once", "[threads]") {
    for (int threads = 1; threads <= 8; ++threads) {
        for (int64_t count = 0; count <= 100; ++count) {
            std::vector<std::atomic<int>> hits(static_cast<size_t>(count));
            std::atomic<int> calls{0};
            parallel_for(count, threads, [&](int64_t begin, int64_t end) {
                ++calls;
                for (int64_t i = begin; i < end; ++i) ++hits[static_cast<size_t>(i)];
            });
            bool once = true;
            for (auto& h : hits) once = once && h.load() == 1;
            INFO("count " << count << ", threads " << threads);
            REQUIRE(once);
            CHECK(calls.load() <= std::max<int64_t>(1, std::min<int64_t>(threads, count)));
            if (count == 0) CHECK(calls.load() == 0);
        }
    }
}

TEST_CASE("parallel_for with 0 threads uses thread_count()", "[threads]") {
    ThreadsEnv env("3");
    std::atomic<int> calls{0};
    parallel_for(100, 0, [&](int64_t, int64_t) { ++calls; });
    CHECK(calls.load() == 3);
}

TEST_CASE("parallel_for rethrows an exception from a chunk after all finish", "[threads]") {
    for (int threads : {1, 2, 4, 8}) {
        std::atomic<int64_t> done{0};
        auto body = [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
                if (i == 37) throw std::runtime_error("index 37 failed");
                ++done;
            }
        };
        CHECK_THROWS_WITH(parallel_for(100, threads, body), "index 37 failed");
        CHECK(done.load() >= 37);  // chunks before 37 ran to the end
        CHECK_THROWS_AS(parallel_for(10, threads, [](int64_t, int64_t) { throw Error("bad chunk"); }), Error);
    }
}

TEST_CASE("SPARSA_THREADS is a positive integer, or unset", "[threads]") {
    const int hardware = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    {
        ThreadsEnv env(nullptr);
        CHECK(thread_count() == hardware);
    }
    {
        ThreadsEnv env("");
        CHECK(thread_count() == hardware);
    }
    for (const char* good : {"1", "4", "4096"}) {
        ThreadsEnv env(good);
        CHECK(thread_count() == std::stoi(good));
    }
    for (const char* bad : {"0", "-2", "abc", "4x", "4097", "99999999999999999999", "2.5"}) {
        ThreadsEnv env(bad);
        INFO("SPARSA_THREADS=" << bad);
        CHECK_THROWS_AS(thread_count(), Error);
        CHECK_THROWS_WITH(thread_count(), Contains("SPARSA_THREADS='") && Contains("use an integer from 1 to 4096"));
    }
}
