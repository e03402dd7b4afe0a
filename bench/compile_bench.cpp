// Compile-time benchmark: window(256) | global(first(64)) | random(3) at B = 64 for growing n.
// Each n runs in a fresh child process (fork) so its peak memory (VmHWM) is its own; it also
// saves the mask (mask_set_save: the .npz's size and write time). With --cli, the whole
// `sparsa compile SCRIPT --n 1048576 -o FILE` process is timed too (issue 17: under 1 s, file
// under 50 MB). Prints a Markdown table and writes it atomically to bench/results/compile-<cpu>.md.
//
//   bench_compile [--threads N] [--runs K] [--out PATH] [--cli PATH/TO/sparsa]
#include "dsl/pattern.hpp"
#include "engine/threads.hpp"
#include "io/mask_io.hpp"
#include "bench/bench_util.hpp"

#include <fcntl.h>

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
#include <optional>
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
    std::vector<double> save_seconds;  // one mask_set_save of the compiled mask per sample
    int64_t file_bytes = 0;
};

// A fresh folder for the files the bench writes, removed with them at the end.
struct ScratchDir {
    std::filesystem::path path;
    ScratchDir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "sparsa-bench-XXXXXX").string();
        if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("cannot make a temporary folder");
        path = pattern;
    }
    ~ScratchDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
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
    std::shared_ptr<const BlockMask> last;
    auto compile_seconds = [&](int reps) {
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < reps; ++i) {
            last = std::make_shared<const BlockMask>(dsl::pattern_compile(*p, n, 64, threads));
            r.q_blocks = last->q_blocks();
            r.kept = last->kept_blocks();
            r.partial = last->partial_blocks();
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
    // The save: the whole mask_set_save (validation, CSR arrays, CRC-32s, fsync, rename).
    const MaskSet set = mask_set_make(1, 1, {last});
    const ScratchDir dir;
    const std::string file = (dir.path / "masks.npz").string();
    for (int run = 0; run < runs; ++run) {
        const auto start = std::chrono::steady_clock::now();
        mask_set_save(set, file);
        r.save_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    r.file_bytes = static_cast<int64_t>(std::filesystem::file_size(file));
    std::ostringstream line;
    line << r.reps << ' ' << r.q_blocks << ' ' << r.kept << ' ' << r.partial << ' ' << proc_field("/proc/self/status", "VmHWM:")
         << ' ' << r.file_bytes;
    for (size_t i = 0; i < r.seconds.size(); ++i) line << ' ' << r.seconds[i] << ' ' << r.save_seconds[i];
    line << '\n';
    return line.str();
}

Result measure(int64_t n, int threads, int runs) {
    const std::string text = child_run([&] { return measure_child(n, threads, runs); },
                                       "bench_compile: n = " + std::to_string(n)).text;
    Result r;
    r.n = n;
    std::istringstream in(text);
    in >> r.reps >> r.q_blocks >> r.kept >> r.partial >> r.peak_kib >> r.file_bytes;
    for (double s, w; in >> s >> w;) {
        r.seconds.push_back(s);
        r.save_seconds.push_back(w);
    }
    return r;
}

// The whole `sparsa compile` process, as a user times it: wall seconds of each of `runs` runs
// of CLI on the bench's pattern at n, writing -o into a scratch folder; and the file's size.
struct CliResult {
    std::string command;
    std::vector<double> seconds;
    int64_t file_bytes = 0;
};

CliResult cli_measure(const std::string& cli, int64_t n, int runs) {
    const ScratchDir dir;
    const std::string script = (dir.path / "X.pat").string(), out = (dir.path / "x.npz").string();
    std::ofstream(script) << "attend = window(256) | global(first(64)) | random(3)\n";
    const std::string n_text = std::to_string(n);
    CliResult r;
    r.command = "sparsa compile X.pat --n " + n_text + " -o x.npz";
    for (int run = 0; run < runs; ++run) {
        const auto start = std::chrono::steady_clock::now();
        const pid_t pid = fork();
        if (pid < 0) throw std::runtime_error("fork failed");
        if (pid == 0) {
            const int null = open("/dev/null", O_WRONLY);
            dup2(null, 1);
            dup2(null, 2);
            execl(cli.c_str(), cli.c_str(), "compile", script.c_str(), "--n", n_text.c_str(), "-o", out.c_str(), nullptr);
            _exit(127);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        r.seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            throw std::runtime_error("'" + cli + " compile' failed (exit status " + std::to_string(status) + "); run it by hand to see why");
        }
    }
    r.file_bytes = static_cast<int64_t>(std::filesystem::file_size(out));
    return r;
}

} // namespace

int main(int argc, char** argv) {
    const BenchArgs args = bench_args_parse(argc, argv, "bench_compile", {"--threads", "--runs", "--out", "--cli"},
                                            "bench_compile [--threads N] [--runs K] [--out PATH] [--cli PATH/TO/sparsa]");
    const std::string& command = args.command;
    int threads = static_cast<int>(args.integer("--threads", 0)), runs = static_cast<int>(args.integer("--runs", 5));
    std::string out_path = args.text("--out", "");
    const std::string cli = args.text("--cli", "");
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
    std::optional<CliResult> whole;
    if (!cli.empty()) whole = cli_measure(cli, 1048576, runs);

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
       << "peak memory is the child's VmHWM (whole process); save is one `mask_set_save` of the mask (1 layer x 1 head) "
       << "into " << std::filesystem::temp_directory_path().string() << ", median of " << runs << ", and file MB its size (10^6 bytes)\n"
       << "- load average at start: " << load << " (the machine is shared; a high load inflates times)\n\n"
       << "| n | query blocks | kept blocks | partial blocks | reps | median ms | min ms | peak MiB | save ms | file MB |\n"
       << "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    char cell[64];
    for (const Result& r : results) {
        md << "| " << with_commas(r.n) << " | " << with_commas(r.q_blocks) << " | " << with_commas(r.kept) << " | "
           << with_commas(r.partial) << " | " << r.reps << " | ";
        std::snprintf(cell, sizeof cell, "%.2f | %.2f | %.1f | %.1f | %.2f", 1e3 * median(r.seconds),
                      1e3 * *std::min_element(r.seconds.begin(), r.seconds.end()), r.peak_kib / 1024.0,
                      1e3 * median(r.save_seconds), static_cast<double>(r.file_bytes) / 1e6);
        md << cell << " |\n";
    }
    const double ratio = median(results.back().seconds) / median(results.front().seconds);
    const double big = median(results.back().seconds);
    std::snprintf(cell, sizeof cell, "%.1f", ratio);
    md << "\nTime at n = 1,048,576 over time at n = 65,536 (medians): " << cell
       << " (n grows 16x; target: at most 24x). n = 1,048,576 compiles in "
       << (big < 1.0 ? "under" : "MORE than") << " 1 second (target: under 1 s).\n";
    if (whole) {
        const double s = median(whole->seconds), mb = static_cast<double>(whole->file_bytes) / 1e6;
        std::snprintf(cell, sizeof cell, "%.3f s (min %.3f s)", s, *std::min_element(whole->seconds.begin(), whole->seconds.end()));
        md << "\nWhole process, `" << whole->command << "` (" << cli << ", wall time from fork to exit, median of " << runs
           << "): " << cell << ", " << (s < 1.0 ? "under" : "MORE than") << " 1 second (target: under 1 s); ";
        std::snprintf(cell, sizeof cell, "%.1f MB", mb);
        md << "the file is " << cell << ", " << (mb < 50.0 ? "under" : "MORE than") << " 50 MB (target: under 50 MB).\n";
    }

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
