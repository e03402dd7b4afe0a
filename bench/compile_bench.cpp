// Compile-time benchmark: window(256) | global(first(64)) | random(3) at B = 64 for growing n.
// Each n runs in a fresh child process (fork) so its peak memory (VmHWM) is its own; prints a
// Markdown table and writes it atomically to bench/results/compile-<cpu>.md.
//
//   bench_compile [--threads N] [--runs K] [--out PATH]
#include "dsl/pattern.hpp"
#include "engine/threads.hpp"
#include "bench/bench_util.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using namespace sparsa;
using namespace sparsa::bench;

namespace {

struct Result {
    int64_t n = 0;
    std::vector<double> seconds;  // one per sample: the mean of `reps` compiles
    int reps = 1;
    int64_t q_blocks = 0, kept = 0, partial = 0;
    int64_t peak_kib = 0;         // VmHWM of the child
};

dsl::PatternPtr bench_pattern() {
    auto window = dsl::pattern_window(256, 256);
    auto global = dsl::pattern_global(dsl::token_set_range(0, 64));
    auto random = dsl::pattern_random(3, /*seed=*/0, /*layer=*/0, /*head=*/0, /*causal_rows=*/false);
    return dsl::pattern_union(dsl::pattern_union(window, global), random);
}

// Runs in the child: takes `runs` samples and writes one line of results to fd. A sample is the
// mean of `reps` back-to-back compiles, reps chosen so a sample lasts at least 20 ms: a 1 ms
// compile timed alone mostly measures the scheduler of a shared machine.
std::string measure_child(int64_t n, int threads, int runs) {
    const auto p = bench_pattern();
    Result r;
    auto compile_seconds = [&](int reps) {
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < reps; ++i) {
            BlockMask m = dsl::pattern_compile(*p, n, 64, threads);
            r.q_blocks = m.q_blocks();
            r.kept = m.kept_blocks();
            r.partial = m.partial_blocks();
        }
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / reps;
    };
    // Warm-up that doubles as calibration: as many compiles as fit in 20 ms.
    int reps = 0;
    for (const auto start = std::chrono::steady_clock::now();
         reps == 0 || std::chrono::steady_clock::now() - start < std::chrono::milliseconds(20); ++reps) {
        compile_seconds(1);
    }
    for (int run = 0; run < runs; ++run) r.seconds.push_back(compile_seconds(reps));
    r.reps = reps;
    std::ostringstream line;
    line << r.reps << ' ' << r.q_blocks << ' ' << r.kept << ' ' << r.partial << ' ' << proc_field("/proc/self/status", "VmHWM:");
    for (double s : r.seconds) line << ' ' << s;
    line << '\n';
    return line.str();
}

Result measure(int64_t n, int threads, int runs) {
    const std::string text = child_run([&] { return measure_child(n, threads, runs); },
                                       "bench_compile: n = " + std::to_string(n)).text;
    Result r;
    r.n = n;
    std::istringstream in(text);
    in >> r.reps >> r.q_blocks >> r.kept >> r.partial >> r.peak_kib;
    for (double s; in >> s;) r.seconds.push_back(s);
    return r;
}

} // namespace

int main(int argc, char** argv) {
    const BenchArgs args = bench_args_parse(argc, argv, "bench_compile", {"--threads", "--runs", "--out"},
                                            "bench_compile [--threads N] [--runs K] [--out PATH]");
    const std::string& command = args.command;
    int threads = static_cast<int>(args.integer("--threads", 0)), runs = static_cast<int>(args.integer("--runs", 5));
    std::string out_path = args.text("--out", "");
    if (threads <= 0) threads = thread_count();
    if (runs < 1) runs = 1;
    const std::string cpu = cpu_model();
    if (out_path.empty()) {
        // bench/results/ beside this source file, wherever the binary is run from.
        out_path = (std::filesystem::path(__FILE__).parent_path() / "results" / ("compile-" + slug(cpu) + ".md")).string();
    }

    const std::string load = load_average();
    std::vector<Result> results;
    for (int64_t n : {int64_t{65536}, int64_t{262144}, int64_t{1048576}}) results.push_back(measure(n, threads, runs));

    char date[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    std::ostringstream md;
    md << "# Compile time: `window(256) | global(first(64)) | random(3)`, B = 64\n\n"
       << "- command: `" << command << "`\n"
       << "- date: " << date << "\n"
       << "- CPU: " << cpu << ", " << sysconf(_SC_NPROCESSORS_ONLN) << " cores online\n"
       << "- threads: " << threads << "\n"
       << "- build: " << build_type() << "\n"
       << "- each n runs in a fresh child process; time per compile is the median (and min) of " << runs
       << " samples, each the mean of `reps` back-to-back compiles (reps makes a sample last >= 20 ms); "
       << "peak memory is the child's VmHWM (whole process)\n"
       << "- load average at start: " << load << " (the machine is shared; a high load inflates times)\n\n"
       << "| n | query blocks | kept blocks | partial blocks | reps | median ms | min ms | peak MiB |\n"
       << "|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    char cell[64];
    for (const Result& r : results) {
        md << "| " << with_commas(r.n) << " | " << with_commas(r.q_blocks) << " | " << with_commas(r.kept) << " | "
           << with_commas(r.partial) << " | " << r.reps << " | ";
        std::snprintf(cell, sizeof cell, "%.2f | %.2f | %.1f", 1e3 * median(r.seconds),
                      1e3 * *std::min_element(r.seconds.begin(), r.seconds.end()), r.peak_kib / 1024.0);
        md << cell << " |\n";
    }
    const double ratio = median(results.back().seconds) / median(results.front().seconds);
    const double big = median(results.back().seconds);
    std::snprintf(cell, sizeof cell, "%.1f", ratio);
    md << "\nTime at n = 1,048,576 over time at n = 65,536 (medians): " << cell
       << " (n grows 16x; target: at most 24x). n = 1,048,576 compiles in "
       << (big < 1.0 ? "under" : "MORE than") << " 1 second (target: under 1 s).\n";

    std::cout << md.str();
    try {
        results_write(out_path, md.str());
    } catch (const std::exception& e) {
        std::cerr << "bench_compile: " << e.what() << "\n";
        return 1;
    }
    std::cerr << "wrote " << out_path << "\n";
    return 0;
}
