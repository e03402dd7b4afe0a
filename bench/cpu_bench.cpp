// CPU engine benchmark: forward time, effective GFLOP/s on kept pairs and peak memory for dense,
// window(256), Longformer, BigBird and random 10% masks (B = 64, batch 1, one head), against the
// machine's own Eigen float32 matrix-product rate on the block-sized operands the kernel uses,
// measured in the same run. Each size runs in a fresh process (this program again, `--child`)
// so its peak memory (ru_maxrss) is its own. Prints a Markdown table and writes it atomically to
// bench/results/cpu-<cpu>.md.
//
// With --baseline OTHER (another build of bench_cpu, e.g. the portable one: bench/run_cpu.sh),
// every size and the product rates run in both builds, one after the other, size by size (so a
// change of load on a shared machine hits both alike), and the table gives both side by side.
//
//   bench_cpu [--max-n N] [--min-n N] [--d 64,128] [--patterns dense,window,longformer,bigbird,random10]
//             [--runs K] [--threads T] [--max-gflop G] [--baseline BENCH_CPU] [--command TEXT] [--out PATH]
#include "dsl/pattern.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/threads.hpp"
#include "bench/bench_util.hpp"

#include <Eigen/Core>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

constexpr int32_t kBlock = 64;

// [SECTION] patterns

const std::vector<std::string> kPatterns = {"dense", "window", "longformer", "bigbird", "random10"};

// The pattern in the pattern language (a `|` is escaped as `\|` inside a Markdown table).
std::string pattern_title(const std::string& name) {
    if (name == "dense") return "dense";
    if (name == "window") return "window(256)";
    if (name == "longformer") return "Longformer: window(256) | global(first(64))";
    if (name == "bigbird") return "BigBird: band(1) | global(first(128)) | random(3)";
    return "random 10%: random(q_blocks / 10)";
}

std::string table_cell(std::string text) {
    for (size_t at = 0; (at = text.find('|', at)) != std::string::npos; at += 2) text.insert(at, "\\");
    return text;
}

dsl::PatternPtr pattern_make(const std::string& name, int64_t n) {
    using namespace dsl;
    if (name == "dense") return pattern_dense();
    if (name == "window") return pattern_window(256, 256);
    if (name == "longformer") return pattern_union(pattern_window(256, 256), pattern_global(token_set_range(0, 64)));
    if (name == "bigbird") {
        return pattern_union(pattern_union(pattern_band(1), pattern_global(token_set_range(0, 128))),
                             pattern_random(3, /*seed=*/7, /*layer=*/0, /*head=*/0, /*causal_rows=*/false));
    }
    if (name == "random10") {
        const int64_t blocks = (n + kBlock - 1) / kBlock;
        return pattern_random(std::max<int64_t>(1, blocks / 10), /*seed=*/7, 0, 0, false);
    }
    throw std::runtime_error("unknown pattern '" + name + "' (use dense, window, longformer, bigbird, random10)");
}

// Kept pairs before compiling, for the quadratic patterns (dense and random 10%), to skip the
// sizes over the time budget; the others keep O(n) pairs and always run.
double quadratic_pairs(const std::string& name, int64_t n) {
    const double nn = static_cast<double>(n);
    if (name == "dense") return nn * nn;
    if (name == "random10") return 0.1 * nn * nn;
    return 0;
}

// [SECTION] the matrix-product rate

// GFLOP/s of Eigen float32 products on block-sized row-major operands, the two shapes of the
// kernel: S (64 x 64) = Q (64 x d) K^T (d x 64), and O (64 x d) += P (64 x 64) V (64 x d), over a
// set of key blocks that stays in cache, on `threads` threads at once (each its own operands).
struct GemmRate {
    double qk = 0, pv = 0, both = 0;   // GFLOP/s; both: the two alternating, as the kernel does
};

// both_only: measure only `both` (what each size's child needs), a third of the time.
GemmRate gemm_rate(int64_t d, int threads, bool both_only) {
    using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using ConstBlock = Eigen::Map<const Matrix>;
    const int64_t blocks = 16, reps = 3000;
    const double flops_one = 2.0 * kBlock * kBlock * static_cast<double>(d);
    auto measure = [&](int which) {
        const auto start = std::chrono::steady_clock::now();
        parallel_for(threads, threads, [&](int64_t t, int64_t) {
            Matrix q = Matrix::Random(kBlock, d), kv = Matrix::Random(blocks * kBlock, d), s = Matrix::Random(kBlock, kBlock);
            Matrix o = Matrix::Zero(kBlock, d);
            for (int64_t r = 0; r < reps; ++r) {
                const ConstBlock k(kv.data() + (r % blocks) * kBlock * d, kBlock, d);
                if (which != 1) s.noalias() = q * k.transpose();   // S = Q K^T
                if (which != 0) o.noalias() += s * k;              // O += P V
            }
            if (o(0, 0) == 12345.0f + static_cast<float>(t)) std::puts("");   // keep the work
        });
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        return flops_one * (which == 2 ? 2 : 1) * reps * threads / seconds / 1e9;
    };
    // The best of three of each: other work on the machine only ever lowers a rate.
    GemmRate r;
    measure(2);   // warm up
    for (int trial = 0; trial < 3; ++trial) {
        if (!both_only) {
            r.qk = std::max(r.qk, measure(0));
            r.pv = std::max(r.pv, measure(1));
        }
        r.both = std::max(r.both, measure(2));
    }
    return r;
}

// [SECTION] child processes: what a build is, its product rates, one size

// The CPU target CMake gave this build (SPARSA_NATIVE, top-level CMakeLists.txt).
#ifndef SPARSA_ARCH_TEXT
#define SPARSA_ARCH_TEXT "unknown (not built by sparsa's CMake)"
#endif

// What a build of this program is, for the results file.
struct BuildInfo {
    std::string binary;   // the program that runs its children
    std::string arch;     // "native (-march=native)" or "portable (compiler default)"
    std::string build;    // build_type()
    std::string eigen;    // "3.4.0 (SIMD: SSE, SSE2)"
    std::string label;    // a column's name: "native", "portable" (or "old", "new" if both are alike)
};

// --child info: the build, one `key=value` a line.
std::string child_info() {
    std::ostringstream out;
    out << "arch=" << SPARSA_ARCH_TEXT << "\nbuild=" << build_type() << "\neigen=" << EIGEN_WORLD_VERSION << '.'
        << EIGEN_MAJOR_VERSION << '.' << EIGEN_MINOR_VERSION << " (SIMD: " << Eigen::SimdInstructionSetsInUse() << ")\n";
    return out.str();
}

// --child size,NAME,N,D: compile the mask, make random q, k, v, one warm-up run and `runs` timed
// runs, with the product rate measured just before and just after them (the machine may be
// shared: the ratio compares rates taken at the same time; the better of the two is the
// machine's). Prints "kept_blocks partial kept_pairs compile_s products_gflops s1 s2 ...".
std::string child_size(const std::string& name, int64_t n, int64_t d, int runs, int threads) {
    const auto c0 = std::chrono::steady_clock::now();
    auto mask = std::make_shared<BlockMask>(dsl::pattern_compile(*pattern_make(name, n), n, kBlock, threads));
    const double compile_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count();
    const BlockMaskStats stats = block_mask_stats(*mask);
    const MaskSet set = mask_set_make(1, 1, {mask});
    const TensorShape shape{1, 1, n, d};
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
    AttentionOptions options;
    options.threads = threads;
    std::ostringstream line;
    const double gemm_before = gemm_rate(d, threads, true).both;
    std::vector<double> all_seconds;
    for (int r = -1; r < runs; ++r) {
        const auto start = std::chrono::steady_clock::now();
        const AttentionOutput out = attention_forward(q, k, v, set, 0, options);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (r >= 0) all_seconds.push_back(seconds);
    }
    const double gemm_after = gemm_rate(d, threads, true).both;
    line << stats.kept_blocks << ' ' << stats.partial_blocks << ' ' << stats.kept_pairs << ' ' << compile_seconds << ' '
         << std::max(gemm_before, gemm_after);
    for (double s : all_seconds) line << ' ' << s;
    line << '\n';
    return line.str();
}

std::vector<std::string> split(const std::string& s, char sep = ',') {
    std::vector<std::string> out;
    std::stringstream in(s);
    for (std::string item; std::getline(in, item, sep);) out.push_back(item);
    return out;
}

// Runs one `--child WHAT` request in this process and prints its answer on stdout.
int child_main(const std::string& what, int runs, int threads) {
    const std::vector<std::string> part = split(what);
    if (what == "info") {
        std::cout << child_info();
    } else if (part.size() == 2 && part[0] == "gemm") {
        const GemmRate g = gemm_rate(std::atoll(part[1].c_str()), threads, false);
        std::cout << g.qk << ' ' << g.pv << ' ' << g.both << '\n';
    } else if (part.size() == 4 && part[0] == "size") {
        std::cout << child_size(part[1], std::atoll(part[2].c_str()), std::atoll(part[3].c_str()), runs, threads);
    } else {
        std::cerr << "bench_cpu: --child " << what << ": unknown request (info, gemm,D or size,PATTERN,N,D)\n";
        return 2;
    }
    std::cout.flush();
    return std::cout ? 0 : 1;
}

// Runs `binary args...` as a child process and returns what it printed on stdout, with its peak
// resident memory (ru_maxrss). Throws std::runtime_error naming `what` if it cannot start or
// fails; the child prints its own error to stderr first.
ChildOutput exec_run(const std::string& binary, const std::vector<std::string>& args, const std::string& what) {
    std::vector<char*> argv{const_cast<char*>(binary.c_str())};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int fds[2];
    if (pipe(fds) != 0) throw std::runtime_error(what + ": pipe failed");
    std::fflush(stdout);
    std::cout.flush();
    const pid_t pid = fork();
    if (pid < 0) throw std::runtime_error(what + ": fork failed");
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execv(binary.c_str(), argv.data());
        std::fprintf(stderr, "%s: cannot run %s: %s\n", what.c_str(), binary.c_str(), std::strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    return child_collect(fds[0], pid, what);
}

std::vector<std::string> child_args(const std::string& what, int runs, int threads) {
    return {"--child", what, "--runs", std::to_string(runs), "--threads", std::to_string(threads)};
}

BuildInfo build_info(const std::string& binary, int threads) {
    BuildInfo b;
    b.binary = binary;
    std::istringstream in(exec_run(binary, child_args("info", 1, threads), "bench_cpu: " + binary).text);
    for (std::string line; std::getline(in, line);) {
        const size_t eq = line.find('=');
        if (eq == std::string::npos) continue;
        const std::string key = line.substr(0, eq), value = line.substr(eq + 1);
        if (key == "arch") b.arch = value;
        if (key == "build") b.build = value;
        if (key == "eigen") b.eigen = value;
    }
    if (b.arch.empty() || b.eigen.empty()) {
        throw std::runtime_error(binary + " did not say what build it is (is it a bench_cpu of this version? rebuild it)");
    }
    b.label = b.arch.substr(0, b.arch.find(' '));
    return b;
}

GemmRate gemm_of(const BuildInfo& b, int64_t d, int threads) {
    const std::string what = "gemm," + std::to_string(d);
    std::istringstream in(exec_run(b.binary, child_args(what, 1, threads), "bench_cpu (" + b.label + "): " + what).text);
    GemmRate g;
    in >> g.qk >> g.pv >> g.both;
    return g;
}

struct Result {
    std::string pattern;
    int64_t n = 0, d = 0;
    int64_t kept_blocks = 0, partial_blocks = 0, kept_pairs = 0;
    std::vector<double> seconds;   // one per timed run
    int64_t peak_kib = 0;          // ru_maxrss of the child
    double compile_seconds = 0;
    double gemm_both = 0;          // the product rate measured in the child, around its runs
    bool skipped = false;
};

Result measure(const BuildInfo& b, const std::string& name, int64_t n, int64_t d, int runs, int threads) {
    const std::string what = "size," + name + "," + std::to_string(n) + "," + std::to_string(d);
    const std::string where = "bench_cpu (" + b.label + "): " + name + ", n = " + std::to_string(n) + ", d = " + std::to_string(d);
    const ChildOutput child = exec_run(b.binary, child_args(what, runs, threads), where);
    Result r;
    r.pattern = name;
    r.n = n;
    r.d = d;
    r.peak_kib = child.peak_kib;
    std::istringstream in(child.text);
    in >> r.kept_blocks >> r.partial_blocks >> r.kept_pairs >> r.compile_seconds >> r.gemm_both;
    for (double s; in >> s;) r.seconds.push_back(s);
    if (r.seconds.empty()) throw std::runtime_error(where + ": the child printed no timings");
    return r;
}

// [SECTION] report

double gflops(const Result& r) { return 4.0 * static_cast<double>(r.kept_pairs) * static_cast<double>(r.d) / median(r.seconds) / 1e9; }

} // namespace

int main(int argc, char** argv) {
    const BenchArgs args = bench_args_parse(
        argc, argv, "build/bench/bench_cpu",
        {"--max-n", "--min-n", "--d", "--patterns", "--runs", "--threads", "--max-gflop", "--baseline", "--command", "--out", "--child"},
        "bench_cpu [--max-n N] [--min-n N] [--d 64,128] [--patterns dense,window,longformer,bigbird,random10] [--runs K] "
        "[--threads T] [--max-gflop G] [--baseline BENCH_CPU] [--command TEXT] [--out PATH]");
    int threads = static_cast<int>(args.integer("--threads", 0));
    if (threads <= 0) threads = thread_count();
    const int runs = std::max(1, static_cast<int>(args.integer("--runs", 5)));
    if (args.values.count("--child")) {
        try {
            return child_main(args.text("--child", ""), runs, threads);
        } catch (const std::exception& e) {
            std::cerr << "bench_cpu --child " << args.text("--child", "") << ": " << e.what() << "\n";
            return 1;
        }
    }
    const std::string command = args.text("--command", args.command);
    const int64_t min_n = args.integer("--min-n", 4096), max_n = args.integer("--max-n", 1048576);
    const double max_gflop = args.real("--max-gflop", 250);
    std::vector<int64_t> dims;
    for (const auto& d : split(args.text("--d", "64,128"))) dims.push_back(std::atoll(d.c_str()));
    std::vector<std::string> patterns = args.values.count("--patterns") ? split(args.text("--patterns", "")) : kPatterns;
    std::string out_path = args.text("--out", "");
    const std::string cpu = cpu_model();
    if (out_path.empty()) {
        out_path = (std::filesystem::path(__FILE__).parent_path() / "results" / ("cpu-" + slug(cpu) + ".md")).string();
    }

    // The builds, the baseline first: each size runs in each, in a fresh process. This build is
    // run again as /proc/self/exe, so both are measured the same way.
    std::vector<BuildInfo> builds;
    try {
        if (args.values.count("--baseline")) {
            const std::string baseline = args.text("--baseline", "");
            if (access(baseline.c_str(), X_OK) != 0) {
                std::cerr << "bench_cpu: --baseline " << baseline << ": no such program (build the other bench_cpu first, "
                          << "e.g. with -DSPARSA_NATIVE=OFF; bench/run_cpu.sh builds both)\n";
                return 2;
            }
            builds.push_back(build_info(baseline, threads));
        }
        builds.push_back(build_info(std::filesystem::read_symlink("/proc/self/exe").string(), threads));
    } catch (const std::exception& e) {
        std::cerr << "bench_cpu: " << e.what() << "\n";
        return 1;
    }
    const size_t nb = builds.size(), now_b = nb - 1;   // now_b: this build, the one the targets are for
    if (nb == 2 && builds[0].label == builds[1].label) {
        builds[0].label = "old";
        builds[1].label = "new";
    }
    const bool pair = nb == 2, full_width = builds[now_b].label == "native";
    // Which build goes first alternates from one measurement to the next.
    int turn = 0;
    auto in_turn = [&] {
        std::vector<size_t> order(nb);
        for (size_t i = 0; i < nb; ++i) order[i] = (i + static_cast<size_t>(turn)) % nb;
        ++turn;
        return order;
    };
    auto named = [&](const std::string& metric, size_t b) { return pair ? metric + ", " + builds[b].label : metric; };

    // The machine may be shared: the load average before and after says how quiet it was.
    auto load_text = [] {
        double load[3] = {0, 0, 0};
        if (getloadavg(load, 3) != 3) return std::string("unknown");
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.2f, %.2f, %.2f (1, 5, 15 min)", load[0], load[1], load[2]);
        return std::string(buf);
    };
    const std::string load_before = load_text();
    std::ostringstream md;
    char date[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    md << "# CPU engine: forward, B = 64, batch 1, heads 1\n\n";
    if (args.values.count("--command")) {
        md << "- command: " << command << "\n";   // as the caller wrote it, with its own Markdown
    } else {
        md << "- command: `" << command << "` after `cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && "
           << "cmake --build build --target bench_cpu`\n";
    }
    md << "- date: " << date << "\n"
       << "- CPU: " << cpu << ", " << sysconf(_SC_NPROCESSORS_ONLN) << " cores online\n"
       << "- threads: " << threads << "\n";
    for (size_t b = 0; b < nb; ++b) {
        const bool named_by_arch = builds[b].arch.rfind(builds[b].label, 0) == 0;   // else "old" or "new"
        md << "- build" << (named_by_arch ? "" : " (" + builds[b].label + ")") << ": " << builds[b].arch << ", "
           << builds[b].build << ", Eigen " << builds[b].eigen << "\n";
    }
    md << "- each size runs in a fresh child process: compile the mask, random standard normal Q, K, V, one warm-up "
       << "run, then the median of " << runs << " timed runs of `attention_forward`; peak memory is the child's ru_maxrss "
       << "(whole process: Q, K, V, O, the mask)\n";
    if (pair) {
        md << "- the two builds measure each size and each product rate one after the other (which goes first alternates), "
           << "so a change of load on the machine falls on both alike\n";
    }
    md << "- GFLOP/s count 4 * d FLOPs per kept (query, key) pair (S = Q K^T and O += P V), never the masked pairs "
       << "of a kept block; the quadratic patterns (dense and random 10%) are skipped at sizes whose kept pairs need more than "
       << max_gflop << " GFLOP per run\n\n";

    // The machine's own rate on the kernel's operand shapes, on the same threads.
    md << "## Eigen float32 matrix products on block-sized operands (" << threads << " threads, at the start)\n\n"
       << "Each thread multiplies its own operands (16 key blocks, in cache), as the kernel's threads do; each rate is the "
       << "best of 3 measurements of 3,000 products per thread.\n\n"
       << "| d |" << (pair ? " build |" : "")
       << " S = Q K^T: 64 x d times d x 64 | O += P V: 64 x 64 times 64 x d | both, alternating |\n"
       << "|---:|" << (pair ? "---|" : "") << "---:|---:|---:|\n";
    for (int64_t d : dims) {
        std::vector<GemmRate> g(nb);
        try {
            for (size_t b : in_turn()) g[b] = gemm_of(builds[b], d, threads);
        } catch (const std::exception& e) {
            std::cerr << e.what() << "\n";
            return 1;
        }
        for (size_t b = 0; b < nb; ++b) {
            std::vector<std::string> cells{std::to_string(d)};
            if (pair) cells.push_back(builds[b].label);
            for (double rate : {g[b].qk, g[b].pv, g[b].both}) cells.push_back(format("%.1f", rate) + " GFLOP/s");
            md << table_row(cells);
            std::cerr << "gemm rate d = " << d << (pair ? ", " + builds[b].label : "") << ": " << g[b].both << " GFLOP/s\n";
        }
        if (pair) {
            md << table_row({std::to_string(d), builds[1].label + " / " + builds[0].label, format("%.2fx", g[1].qk / g[0].qk),
                             format("%.2fx", g[1].pv / g[0].pv), format("%.2fx", g[1].both / g[0].both)});
        }
    }
    md << "\n## Attention forward\n\n"
       << "`products` is the \"both\" rate of the table above measured again inside each child"
       << (pair ? " (so in its own build)" : "") << ", just before and just after its runs (the best of those 2 x 3 "
       << "measurements), on the same threads; `ratio` is the attention's effective GFLOP/s over it"
       << (pair && full_width ? ": for the native build, the rate on kept pairs against the matrix-product rate at full "
                                "vector width"
                              : "")
       << ".\n\n";
    std::vector<std::string> head{"pattern", "n", "d", "kept blocks", "partial", "kept pairs"};
    std::vector<std::string> rule{"---", "---:", "---:", "---:", "---:", "---:"};
    auto add_column = [&](const std::string& title) {
        head.push_back(title);
        rule.push_back("---:");
    };
    for (size_t b = 0; b < nb; ++b) add_column(named("median ms", b));
    for (size_t b = 0; b < nb; ++b) add_column(named("GFLOP/s", b));
    if (pair) add_column(builds[1].label + " / " + builds[0].label);
    for (size_t b = 0; b < nb; ++b) add_column(named("products GFLOP/s", b));
    for (size_t b = 0; b < nb; ++b) add_column(named("ratio", b));
    for (size_t b = 0; b < nb; ++b) add_column(named("peak MiB", b));
    md << table_row(head) << table_row(rule);

    std::vector<std::vector<Result>> results;   // [row][build]
    for (const auto& name : patterns) {
        for (int64_t d : dims) {
            for (int64_t n = min_n; n <= max_n; n *= 4) {
                std::vector<Result> r(nb);
                std::vector<std::string> cells{table_cell(pattern_title(name)), with_commas(n), std::to_string(d)};
                if (4.0 * quadratic_pairs(name, n) * static_cast<double>(d) > max_gflop * 1e9) {
                    for (Result& one : r) {
                        one.pattern = name;
                        one.n = n;
                        one.d = d;
                        one.skipped = true;
                    }
                    cells.push_back(format("skipped: over %g GFLOP per run", max_gflop));
                    while (cells.size() < head.size()) cells.push_back("");
                } else {
                    try {
                        for (size_t b : in_turn()) r[b] = measure(builds[b], name, n, d, runs, threads);
                    } catch (const std::exception& e) {
                        std::cerr << e.what() << "\n";
                        return 1;
                    }
                    if (r.back().kept_pairs != r[0].kept_pairs || r.back().kept_blocks != r[0].kept_blocks) {
                        std::cerr << "bench_cpu: " << name << ", n = " << n << ": the two builds compiled different masks "
                                  << "(build both from the same source tree)\n";
                        return 1;
                    }
                    for (int64_t count : {r[0].kept_blocks, r[0].partial_blocks, r[0].kept_pairs}) cells.push_back(with_commas(count));
                    for (const Result& one : r) cells.push_back(format("%.2f", 1e3 * median(one.seconds)));
                    for (const Result& one : r) cells.push_back(format("%.1f", gflops(one)));
                    if (pair) cells.push_back(format("%.2fx", gflops(r[1]) / gflops(r[0])));
                    for (const Result& one : r) cells.push_back(format("%.1f", one.gemm_both));
                    for (const Result& one : r) cells.push_back(format("%.0f%%", 100 * gflops(one) / one.gemm_both));
                    for (const Result& one : r) cells.push_back(format("%.0f", one.peak_kib / 1024.0));
                }
                results.push_back(r);
                md << table_row(cells);
                std::cerr << table_row(cells);
            }
        }
    }
    md << "\nLoad average of the machine (shared with other work) before the first size: " << load_before
       << "; after the last: " << load_text() << ".\n";

    // The targets of issue 3, for this build (the native one in a pair run: the rate on kept pairs
    // against the matrix-product rate at full width); the baseline's figures follow each line.
    auto find = [&](const std::string& name, int64_t n, int64_t d) -> const std::vector<Result>* {
        for (const auto& r : results) {
            if (r[0].pattern == name && r[0].n == n && r[0].d == d && !r[0].skipped) return &r;
        }
        return nullptr;
    };
    const std::string now_label = builds[now_b].label, old_label = builds[0].label;
    md << "\n## Targets\n\n";
    if (pair) {
        md << "For the " << now_label << " build; the rate on kept pairs is against the matrix-product rate "
           << (full_width ? "at full vector width (the native build's products, measured in the same child as its attention)"
                          : "of the " + now_label + " build")
           << ". The " << old_label << " build's figures follow each line.\n\n";
    }
    if (std::find(dims.begin(), dims.end(), 64) != dims.end()) {
        for (const char* name : {"window", "bigbird"}) {
            double worst = 1e9, old_full = 1e9, old_own = 1e9;
            int64_t count = 0;
            for (const auto& r : results) {
                if (r[0].pattern != name || r[0].d != 64 || r[0].skipped) continue;
                worst = std::min(worst, gflops(r[now_b]) / r[now_b].gemm_both);
                old_full = std::min(old_full, gflops(r[0]) / r[now_b].gemm_both);
                old_own = std::min(old_own, gflops(r[0]) / r[0].gemm_both);
                ++count;
            }
            if (count == 0) continue;
            // rounded down, so that a "50%" is never "NOT met"
            md << "- " << pattern_title(name) << ", d = 64: at least " << format("%.0f%%", std::floor(100 * worst)) << " of the "
               << (pair && full_width ? "full-width" : "measured") << " product rate at every n (target: >= 50%): "
               << (worst >= 0.5 ? "met" : "NOT met");
            if (pair) {
                md << "; " << old_label << ": at least " << format("%.0f%%", std::floor(100 * old_full)) << " of that rate ("
                   << format("%.0f%%", std::floor(100 * old_own)) << " of its own)";
            }
            md << "\n";
        }
    }
    for (int64_t d : dims) {
        const auto *small = find("window", 65536, d), *big = find("window", 1048576, d);
        if (small && big) {
            auto ratio = [&](size_t b) { return median((*big)[b].seconds) / median((*small)[b].seconds); };
            md << "- window(256), d = " << d << ": time at n = 1,048,576 over n = 65,536: " << format("%.1f", ratio(now_b))
               << "x for 16x the rows (target: within 20x): " << (ratio(now_b) <= 20 ? "met" : "NOT met");
            if (pair) md << "; " << old_label << ": " << format("%.1f", ratio(0)) << "x";
            md << "\n";
        }
    }
    if (const auto* big = find("window", 1048576, 64)) {
        const int64_t kib = (*big)[now_b].peak_kib;
        md << "- window(256), n = 1,048,576, d = 64: peak memory " << format("%.0f", kib / 1024.0)
           << " MiB (target: under 2 GB = 1907 MiB): " << (kib < 2000000000LL / 1024 ? "met" : "NOT met");
        if (pair) md << "; " << old_label << ": " << format("%.0f", (*big)[0].peak_kib / 1024.0) << " MiB";
        md << "\n";
    }
    if (pair) {
        std::vector<double> speedups;
        for (const auto& r : results) {
            if (!r[0].skipped) speedups.push_back(gflops(r[1]) / gflops(r[0]));
        }
        if (!speedups.empty()) {
            md << "- " << now_label << " over " << old_label << ", GFLOP/s on kept pairs at every size measured: "
               << format("%.2fx", *std::min_element(speedups.begin(), speedups.end())) << " to "
               << format("%.2fx", *std::max_element(speedups.begin(), speedups.end())) << " (median "
               << format("%.2fx", median(speedups)) << ")";
            if (const auto* dense = find("dense", 16384, 64)) {
                md << "; dense, n = 16,384, d = 64: " << format("%.1f", gflops((*dense)[1])) << " against "
                   << format("%.1f", gflops((*dense)[0])) << " GFLOP/s";
            }
            md << "\n";
        }
    }

    std::cout << md.str();
    try {
        results_write(out_path, md.str());
    } catch (const std::exception& e) {
        std::cerr << "bench_cpu: " << e.what() << "\n";
        return 1;
    }
    std::cerr << "wrote " << out_path << "\n";
    return 0;
}
