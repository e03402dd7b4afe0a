// Receptive-field benchmark: one token's field through 12 layers, both directions, at growing n,
// for window(256) | global(first(64)), BigBird (bigbird.pat with 12 layers: 8 heads, a random
// draw per layer and head) and window(256) alone (a field that keeps growing), B = 64. Each (pattern, n) runs in a fresh child process (fork) so its peak
// memory (VmHWM) is its own; prints a Markdown table and writes bench/results/reach-<cpu>.md.
//
//   bench_reach [--runs K] [--threads N] [--out PATH]
#include "dsl/script.hpp"
#include "io/atomic_file.hpp"
#include "analysis/receptive_field.hpp"
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

struct Pattern {
    const char* name;
    const char* text;  // the script, compiled with dsl::script_parse
};

const Pattern kPatterns[] = {
    {"window(256) | global(first(64))", "block 64\nlayers 12\nattend = window(256) | global(first(64))\n"},
    {"band(1) | global(first(128)) | random(3)",
     "block 64\nheads 8\nlayers 12\nattend = band(1) | global(first(2 * B)) | random(3, seed = 7)\n"},
    {"window(256)", "block 64\nlayers 12\nattend = window(256)\n"},
};

struct Result {
    int pattern = 0;
    int64_t n = 0;
    double graph_seconds = 0;                 // reach_graph_make (unions of heads, transposes)
    std::vector<double> in_seconds, out_seconds;  // per sample: the mean of `reps` expansions
    int reps_in = 1, reps_out = 1;
    int64_t in_size = 0, out_size = 0;        // field sizes after the last layer
    int64_t peak_kib = 0;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// In the child: compile (not timed), build the layer graphs (timed once), then time the field of
// the middle token in each direction: `runs` samples, each the mean of `reps` expansions, reps
// chosen so a sample lasts at least 20 ms (a 1 ms run timed alone mostly measures the scheduler).
std::string measure_child(int pattern, int64_t n, int threads, int runs) {
    auto script = dsl::script_parse(kPatterns[pattern].text, "<bench>");
    dsl::CompileOptions options;
    options.n = n;
    options.threads = threads;
    const MaskSet set = dsl::script_compile(*script, options).masks;
    Result r;
    auto start = std::chrono::steady_clock::now();
    const ReachGraph graph = reach_graph_make(set, true);
    r.graph_seconds = seconds_since(start);
    const int64_t token = n / 2;
    auto sample = [&](ReachDirection direction, int reps, int64_t* size) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < reps; ++i) *size = receptive_field_token(graph, token, direction).sizes.back();
        return seconds_since(t0) / reps;
    };
    for (ReachDirection direction : {ReachDirection::in, ReachDirection::out}) {
        int64_t* size = direction == ReachDirection::in ? &r.in_size : &r.out_size;
        int reps = 0;  // warm-up that doubles as calibration
        for (const auto t0 = std::chrono::steady_clock::now(); reps == 0 || seconds_since(t0) < 0.02; ++reps) sample(direction, 1, size);
        auto& samples = direction == ReachDirection::in ? r.in_seconds : r.out_seconds;
        for (int run = 0; run < runs; ++run) samples.push_back(sample(direction, reps, size));
        (direction == ReachDirection::in ? r.reps_in : r.reps_out) = reps;
    }
    std::ostringstream line;
    line.precision(9);
    line << r.graph_seconds << ' ' << r.reps_in << ' ' << r.reps_out << ' ' << r.in_size << ' ' << r.out_size << ' '
         << proc_field("/proc/self/status", "VmHWM:");
    for (size_t i = 0; i < r.in_seconds.size(); ++i) line << ' ' << r.in_seconds[i] << ' ' << r.out_seconds[i];
    line << '\n';
    return line.str();
}

Result measure(int pattern, int64_t n, int threads, int runs) {
    const std::string text = child_run([&] { return measure_child(pattern, n, threads, runs); },
                                       std::string("bench_reach: ") + kPatterns[pattern].name + " at n = " + std::to_string(n)).text;
    Result r;
    r.pattern = pattern;
    r.n = n;
    std::istringstream in(text);
    in >> r.graph_seconds >> r.reps_in >> r.reps_out >> r.in_size >> r.out_size >> r.peak_kib;
    for (double a, b; in >> a >> b;) {
        r.in_seconds.push_back(a);
        r.out_seconds.push_back(b);
    }
    return r;
}

} // namespace

int main(int argc, char** argv) {
    const BenchArgs args = bench_args_parse(argc, argv, "bench_reach", {"--threads", "--runs", "--out"},
                                            "bench_reach [--runs K] [--threads N] [--out PATH]");
    const std::string& command = args.command;
    int threads = static_cast<int>(args.integer("--threads", 0)), runs = static_cast<int>(args.integer("--runs", 7));
    std::string out_path = args.text("--out", "");
    if (threads <= 0) threads = thread_count();
    if (runs < 1) runs = 1;
    const std::string cpu = cpu_model();
    if (out_path.empty()) {
        out_path = (std::filesystem::path(__FILE__).parent_path() / "results" / ("reach-" + slug(cpu) + ".md")).string();
    }

    const std::string load = load_average();
    std::vector<Result> results;
    for (int p = 0; p < static_cast<int>(std::size(kPatterns)); ++p) {
        for (int64_t n : {int64_t{65536}, int64_t{262144}, int64_t{1048576}}) {
            results.push_back(measure(p, n, threads, runs));
            std::cerr << "bench_reach: " << kPatterns[p].name << ", n = " << n << " done\n";
        }
    }

    char date[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    std::ostringstream md;
    md << "# Receptive field of one token through 12 layers, B = 64\n\n"
       << "Patterns: `window(256) | global(first(64))`; BigBird as in examples/patterns/bigbird.pat but 12 layers "
       << "(8 heads, `band(1) | global(first(2 * B)) | random(3, seed = 7)`); `window(256)` alone, whose field keeps "
       << "growing through all 12 layers.\n\n"
       << "- command: `" << command << "`\n"
       << "- date: " << date << "\n"
       << "- CPU: " << cpu << ", " << sysconf(_SC_NPROCESSORS_ONLN) << " cores online\n"
       << "- threads: " << threads << " for compiling; the graphs and the expansion run on one thread\n"
       << "- build: " << build_type() << "\n"
       << "- token n / 2. *graph*: `reach_graph_make` once (union of each layer's heads, and its transpose for "
       << "direction out); *in* / *out*: `receptive_field_token` from those graphs, median (and min) of " << runs
       << " samples, each the mean of back-to-back runs lasting >= 20 ms; per layer = median / 12. Direction in "
       << "runs one chain per layer (layers 1..12 cost 78 hops) unless all layers are one graph; a field that "
       << "covers n stops early. Peak memory is the child's VmHWM (whole process, including the compiled masks)\n"
       << "- load average at start: " << load << " (the machine is shared; a high load inflates times)\n\n"
       << "| pattern | n | graph ms | in: median ms | in: min ms | in: per layer ms | out: median ms | out: min ms | out: per layer ms "
       << "| field after 12 (in / out) | peak MiB |\n"
       << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    char cell[256];
    for (const Result& r : results) {
        const double in = median(r.in_seconds), out = median(r.out_seconds);
        std::snprintf(cell, sizeof cell, "%.1f | %.3f | %.3f | %.4f | %.3f | %.3f | %.4f", 1e3 * r.graph_seconds, 1e3 * in,
                      1e3 * *std::min_element(r.in_seconds.begin(), r.in_seconds.end()), 1e3 * in / 12, 1e3 * out,
                      1e3 * *std::min_element(r.out_seconds.begin(), r.out_seconds.end()), 1e3 * out / 12);
        std::string name;  // a | inside a table cell must be escaped
        for (const char* c = kPatterns[r.pattern].name; *c; ++c) name += *c == '|' ? std::string("\\|") : std::string(1, *c);
        md << "| `" << name << "` | " << with_commas(r.n) << " | " << cell << " | " << with_commas(r.in_size)
           << " / " << with_commas(r.out_size) << " | ";
        std::snprintf(cell, sizeof cell, "%.1f", r.peak_kib / 1024.0);
        md << cell << " |\n";
    }
    // The target, and the slowest pattern: graph build plus both directions at n = 1,048,576.
    const Result* target = nullptr;
    const Result* slowest = nullptr;
    auto total = [](const Result& r) { return r.graph_seconds + median(r.in_seconds) + median(r.out_seconds); };
    for (const Result& r : results) {
        if (r.n != 1048576) continue;
        if (r.pattern == 0) target = &r;
        if (!slowest || total(r) > total(*slowest)) slowest = &r;
    }
    if (target && slowest) {
        std::snprintf(cell, sizeof cell, "%.1f ms graph + %.3f ms in + %.3f ms out = %.3f s", 1e3 * target->graph_seconds,
                      1e3 * median(target->in_seconds), 1e3 * median(target->out_seconds), total(*target));
        md << "\nTarget: one token's field at n = 1,048,576 through 12 layers of `window(256) | global(first(64))` in a few "
           << "seconds, both directions: " << cell << " (medians). ";
        std::snprintf(cell, sizeof cell, "%.3f s", total(*slowest));
        md << "Slowest pattern at n = 1,048,576, the same sum: " << cell << ".\n";
    }
    std::cout << md.str();
    try {
        results_write(out_path, md.str());
    } catch (const std::exception& e) {
        std::cerr << "bench_reach: " << e.what() << "\n";
        return 1;
    }
    std::cerr << "wrote " << out_path << "\n";
    return 0;
}
