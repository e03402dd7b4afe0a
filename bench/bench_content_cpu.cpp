// The content-based families (issue 14) on the CPU engine: Reformer's lsh, anchor buckets and
// Performer's FAVOR+ (bidirectional and causal), against sparsa's dense attention and a window of
// the same keys per query, on the same inputs in the same run. Each family's time is split into
// its phases (hashing or assigning, sorting, gathering and merging, attention), so what bucketing
// costs is seen apart from attention; fitting the anchors and drawing FAVOR+'s features are done
// once per model and are timed apart, outside the per-call total. Prints a Markdown table and
// writes it atomically to bench/results/content-cpu-<cpu>.md.
//
//   bench_content_cpu [--min-n 4096] [--max-n 65536] [--d 64,128] [--heads 8] [--runs 3]
//                     [--families lsh,anchors,favor,favor_causal] [--threads T] [--max-gflop G]
//                     [--command TEXT] [--out PATH]
//
// Inputs: batch 1, `heads` heads, Q, K, V standard normal (tensor_random), B = 64, scale 1/sqrt(d).
//   lsh(64, rounds = 2, chunk = 64)   rotations from seed 0 (drawn inside hashing, every call)
//   anchors(64, chunk = 64)           anchors fitted (anchors_fit, 20 iterations) on calibration
//                                     Q and K of the same shape and kind (another seed)
//   favor(256), favor(256) causal     features drawn once per head (favor_features_draw)
//   dense, dense causal               every pair (k <= q): the block-sparse engine on full blocks
//   window(w)                         the same keys per query as the family on these inputs:
//                                     2w + 1 = lsh's or anchors' mean |A(q)|, 2w + 1 = m for favor;
//                                     causal favor: window(left = m) & causal, m + 1 keys
#include "bench/bench_util.hpp"
#include "dsl/pattern.hpp"
#include "engine/content/buckets.hpp"
#include "engine/content/content_attention.hpp"
#include "engine/content/favor.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/threads.hpp"

#include <Eigen/Core>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using namespace sparsa;
using namespace sparsa::bench;

namespace {

constexpr int32_t kBlock = 64;
constexpr int64_t kBuckets = 64, kRounds = 2, kChunk = 64, kAnchors = 64, kFeatures = 256, kFitIterations = 20;
const std::vector<std::string> kFamilies = {"lsh", "anchors", "favor", "favor_causal"};
const std::string kAnchorsKey = "bench:anchors";   // the anchors' key in ContentArrays (no file)

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<std::string> split(const std::string& s, char sep = ',') {
    std::vector<std::string> out;
    std::stringstream in(s);
    for (std::string item; std::getline(in, item, sep);) out.push_back(item);
    return out;
}

// [SECTION] how busy the machine was: CPU time of every process against this one's

// Busy jiffies of the whole machine (user + nice + system + irq + softirq + steal) from /proc/stat.
double machine_busy_seconds() {
    std::ifstream in("/proc/stat");
    std::string cpu;
    double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
    in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
    return (user + nice + system + irq + softirq + steal) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double own_cpu_seconds() {
    struct rusage u {};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// [SECTION] one measurement

// Medians over the timed runs of one method at one (n, d).
struct Row {
    std::string method;          // as written in the language
    int64_t n = 0, d = 0;
    double keys_per_query = 0;   // mean |A(q)| (favor: its features m)
    double total = 0;            // median seconds of the call
    double hashing = 0, sorting = 0, gathering = 0, attention = 0;   // medians of each phase
    double once = -1;            // fitting (anchors) or drawing features (favor): seconds, once
    double imbalance = 0;        // lsh, anchors: the largest bucket over the mean, worst head
    bool phased = false;         // lsh, anchors: phases measured
    bool skipped = false;
    std::string note;
};

template <typename Call>
std::vector<double> time_runs(int runs, bool warm_up, const Call& call) {
    if (warm_up) call();
    std::vector<double> out;
    for (int r = 0; r < runs; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        call();
        out.push_back(seconds_since(t0));
    }
    return out;
}

MaskSet set_of(const std::shared_ptr<const BlockMask>& mask, int64_t heads) {
    return mask_set_make(1, heads, std::vector<std::shared_ptr<const BlockMask>>(static_cast<size_t>(heads), mask));
}

// A fixed pattern at (n, d) on the block-sparse engine: dense, dense causal, window(w).
Row measure_fixed(const std::string& method, const dsl::PatternPtr& pattern, const Tensor& q, const Tensor& k,
                  const Tensor& v, int runs, int threads, double max_gflop, double pairs_estimate) {
    Row r;
    r.method = method;
    r.n = q.shape.n;
    r.d = q.shape.d;
    const double gflop = 4.0 * pairs_estimate * static_cast<double>(r.d * q.shape.heads) / 1e9;
    if (gflop > max_gflop) {
        r.skipped = true;
        r.note = "skipped: " + format("%.0f", gflop) + " GFLOP a run, over --max-gflop " + format("%g", max_gflop);
        return r;
    }
    const auto mask = std::make_shared<const BlockMask>(dsl::pattern_compile(*pattern, r.n, kBlock, threads));
    const MaskSet set = set_of(mask, q.shape.heads);
    r.keys_per_query = static_cast<double>(block_mask_stats(*mask).kept_pairs) / static_cast<double>(r.n);
    AttentionOptions options;
    options.threads = threads;
    // A warm-up run pays first-touch costs; where one run is long (over 200 GFLOP) they are under
    // 1% of it, and the warm-up is left out.
    r.total = median(time_runs(runs, gflop < 200, [&] { attention_forward(q, k, v, set, 0, options); }));
    r.attention = r.total;
    return r;
}

// lsh or anchors: every head the same spec (seeds differ by head through the generator).
Row measure_buckets(const ContentSpec& spec, const std::string& method, const Tensor& q, const Tensor& k,
                    const Tensor& v, int runs, int threads, const ContentArrays* arrays, double once) {
    Row r;
    r.method = method;
    r.n = q.shape.n;
    r.d = q.shape.d;
    r.once = once;
    r.phased = true;
    const int64_t heads = q.shape.heads;
    MaskSet set = set_of(std::make_shared<const BlockMask>(block_mask_empty(r.n, kBlock)), heads);
    set.content.assign(static_cast<size_t>(heads), std::make_shared<const ContentSpec>(spec));
    ContentOptions options;
    options.threads = threads;
    options.arrays = arrays;
    std::vector<double> hashing, sorting, gathering, attention;
    ContentForward last;
    const std::vector<double> totals = time_runs(runs, true, [&] {
        last = content_attention_forward(q, k, v, set, 0, options);
        hashing.push_back(last.times.hashing);
        sorting.push_back(last.times.sorting);
        gathering.push_back(last.times.gathering);
        attention.push_back(last.times.attention);
    });
    // the warm-up's phases are the first of each list
    auto timed = [&](std::vector<double> all) { return median(std::vector<double>(all.end() - runs, all.end())); };
    r.total = median(totals);
    r.hashing = timed(hashing);
    r.sorting = timed(sorting);
    r.gathering = timed(gathering);
    r.attention = timed(attention);
    int64_t pairs = 0;
    for (const ContentReport& rep : last.reports) {
        pairs += rep.pairs;
        r.imbalance = std::max(r.imbalance, rep.imbalance);
    }
    r.keys_per_query = static_cast<double>(pairs) / static_cast<double>(heads * r.n);
    return r;
}

Row measure_favor(bool causal, const Tensor& q, const Tensor& k, const Tensor& v, int runs, int threads) {
    Row r;
    r.method = causal ? "favor(256), causal" : "favor(256)";
    r.n = q.shape.n;
    r.d = q.shape.d;
    r.keys_per_query = kFeatures;
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<FavorFeatures> features;
    for (int64_t h = 0; h < q.shape.heads; ++h) features.push_back(favor_features_draw(0, 0, h, 0, kFeatures, r.d));
    r.once = seconds_since(t0);
    FavorOptions options;
    options.causal = causal;
    options.threads = threads;
    r.total = median(time_runs(runs, true, [&] { favor_forward(q, k, v, features, options); }));
    r.attention = r.total;
    return r;
}

// Anchors [1, k, d] fitted on calibration Q and K of the inputs' shape and kind (standard
// normal, another seed), pooled over heads, as `sparsa anchors fit` does.
ContentArray anchors_fitted(const TensorShape& shape, int threads, double& seconds) {
    const Tensor cq = tensor_random(shape, 101), ck = tensor_random(shape, 102);
    std::vector<float> rows(cq.data.begin(), cq.data.end());
    rows.insert(rows.end(), ck.data.begin(), ck.data.end());
    const auto t0 = std::chrono::steady_clock::now();
    ContentArray a;
    a.path = kAnchorsKey;
    a.shape = {1, kAnchors, shape.d};
    a.values = anchors_fit(rows.data(), static_cast<int64_t>(rows.size()) / shape.d, shape.d, kAnchors, 0, kFitIterations, threads);
    seconds = seconds_since(t0);
    return a;
}

// w with 2w + 1 keys closest to `keys` (the window's keys per query, edges aside).
int64_t window_for(double keys) { return std::max<int64_t>(0, std::llround((keys - 1) / 2)); }

} // namespace

int main(int argc, char** argv) {
    const BenchArgs args = bench_args_parse(
        argc, argv, "build/bench/bench_content_cpu",
        {"--min-n", "--max-n", "--d", "--heads", "--runs", "--families", "--threads", "--max-gflop", "--command", "--out"},
        "bench_content_cpu [--min-n 4096] [--max-n 65536] [--d 64,128] [--heads 8] [--runs 3] "
        "[--families lsh,anchors,favor,favor_causal] [--threads T] [--max-gflop G] [--command TEXT] [--out PATH]");
    int threads = static_cast<int>(args.integer("--threads", 0));
    if (threads <= 0) threads = thread_count();
    const int runs = std::max(1, static_cast<int>(args.integer("--runs", 3)));
    const int64_t heads = std::max<int64_t>(1, args.integer("--heads", 8));
    const int64_t min_n = args.integer("--min-n", 4096), max_n = args.integer("--max-n", 65536);
    const double max_gflop = args.real("--max-gflop", 1e5);
    std::vector<int64_t> dims;
    for (const auto& d : split(args.text("--d", "64,128"))) dims.push_back(std::atoll(d.c_str()));
    const std::vector<std::string> families = args.values.count("--families") ? split(args.text("--families", "")) : kFamilies;
    for (const std::string& f : families) {
        if (std::find(kFamilies.begin(), kFamilies.end(), f) == kFamilies.end()) {
            std::cerr << "bench_content_cpu: --families: unknown family '" << f << "' (use lsh, anchors, favor, favor_causal)\n";
            return 2;
        }
    }
    auto wants = [&](const char* f) { return std::find(families.begin(), families.end(), f) != families.end(); };
    const std::string cpu = cpu_model();
    std::string out_path = args.text("--out", "");
    if (out_path.empty()) {
        out_path = (std::filesystem::path(__FILE__).parent_path() / "results" / ("content-cpu-" + slug(cpu) + ".md")).string();
    }

    const std::string load_before = load_average();
    const double busy_before = machine_busy_seconds(), own_before = own_cpu_seconds();
    const auto wall_start = std::chrono::steady_clock::now();

    std::vector<Row> rows;
    auto keep = [&](const Row& r) {
        rows.push_back(r);
        std::cerr << r.method << ", n = " << r.n << ", d = " << r.d << ": "
                  << (r.skipped ? r.note : format("%.1f ms", 1e3 * r.total)) << "\n";
    };
    try {
        for (int64_t d : dims) {
            for (int64_t n = min_n; n <= max_n; n *= 2) {
                const TensorShape shape{1, heads, n, d};
                const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
                const double nn = static_cast<double>(n);
                keep(measure_fixed("dense", dsl::pattern_dense(), q, k, v, runs, threads, max_gflop, nn * nn));
                if (wants("favor_causal")) {
                    keep(measure_fixed("dense, causal", dsl::pattern_causal(), q, k, v, runs, threads, max_gflop, nn * (nn + 1) / 2));
                }
                std::map<int64_t, bool> windows;   // each window once per (n, d)
                auto window_row = [&](int64_t w) {
                    if (windows[w]) return;
                    windows[w] = true;
                    keep(measure_fixed("window(" + std::to_string(w) + ")", dsl::pattern_window(w, w), q, k, v, runs, threads,
                                       max_gflop, nn * static_cast<double>(2 * w + 1)));
                };
                if (wants("lsh")) {
                    ContentSpec spec;
                    spec.kind = ContentKind::lsh;
                    spec.buckets = kBuckets;
                    spec.rounds = kRounds;
                    spec.chunk = kChunk;
                    keep(measure_buckets(spec, "lsh(64, rounds = 2, chunk = 64)", q, k, v, runs, threads, nullptr, -1));
                    window_row(window_for(rows.back().keys_per_query));
                }
                if (wants("anchors")) {
                    double fit_seconds = 0;
                    ContentArrays arrays;
                    arrays[kAnchorsKey] = anchors_fitted(shape, threads, fit_seconds);
                    ContentSpec spec;
                    spec.kind = ContentKind::anchors;
                    spec.buckets = kAnchors;
                    spec.rounds = 1;
                    spec.chunk = kChunk;
                    spec.file = kAnchorsKey;
                    keep(measure_buckets(spec, "anchors(64, chunk = 64)", q, k, v, runs, threads, &arrays, fit_seconds));
                    window_row(window_for(rows.back().keys_per_query));
                }
                if (wants("favor")) {
                    keep(measure_favor(false, q, k, v, runs, threads));
                    window_row(window_for(kFeatures));
                }
                if (wants("favor_causal")) {
                    keep(measure_favor(true, q, k, v, runs, threads));
                    keep(measure_fixed("window(left = 256) & causal", dsl::pattern_window(kFeatures, 0), q, k, v, runs,
                                       threads, max_gflop, nn * (kFeatures + 1)));
                }
            }
        }
    } catch (const std::exception& e) {
        std::cerr << "bench_content_cpu: " << e.what() << "\n";
        return 1;
    }

    // [SECTION] report
    const double wall = seconds_since(wall_start);
    const double others = std::max(0.0, (machine_busy_seconds() - busy_before) - (own_cpu_seconds() - own_before));
    const double cores = static_cast<double>(sysconf(_SC_NPROCESSORS_ONLN));
    const double others_share = others / (wall * cores);
    auto find = [&](const std::string& method, int64_t n, int64_t d) -> const Row* {
        for (const Row& r : rows) {
            if (r.method == method && r.n == n && r.d == d && !r.skipped) return &r;
        }
        return nullptr;
    };
    auto ms = [](double s) { return format(s < 0.1 ? "%.2f" : "%.1f", 1e3 * s); };

    std::ostringstream md;
    char date[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    md << "# Content-based families on the CPU engine: forward, batch 1, " << heads << " heads, B = 64\n\n";
    if (args.values.count("--command")) {
        md << "- command: " << args.text("--command", "") << "\n";
    } else {
        md << "- command: `" << args.command << "` after `cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && "
           << "cmake --build build --target bench_content_cpu`\n";
    }
    md << "- date: " << date << "\n"
       << "- CPU: " << cpu << ", " << sysconf(_SC_NPROCESSORS_ONLN) << " cores online; threads: " << threads << "\n"
       << "- build: " << build_type() << ", Eigen " << EIGEN_WORLD_VERSION << '.' << EIGEN_MAJOR_VERSION << '.'
       << EIGEN_MINOR_VERSION << " (SIMD: " << Eigen::SimdInstructionSetsInUse() << ")\n"
       << "- the machine: load average " << load_before << " (1, 5, 15 min) before, " << load_average() << " after; "
       << "other processes used " << format("%.0f%%", 100 * others_share) << " of its " << format("%.0f", cores)
       << " cores during the " << format("%.0f", wall) << " s of the run"
       << (others_share > 0.1 ? " (the cores were shared with other work: times are longer than on a quiet machine, "
                                "and ratios measured minutes apart carry that noise)"
                              : "")
       << "\n"
       << "- inputs: Q, K, V standard normal, [1, " << heads << ", n, d], float32, scale 1/sqrt(d); each time is the "
       << "median of " << runs << " timed runs after one warm-up run (a fixed pattern over 200 GFLOP a run has none)\n"
       << "- lsh(64, rounds = 2, chunk = 64): rotations from seed 0, drawn during hashing on every call; anchors(64, chunk = 64): "
       << "anchors fitted once by spherical k-means (" << kFitIterations << " iterations) on calibration Q and K of the "
       << "same shape (other seeds): the `once` column, not in the total; favor(256): positive orthogonal features drawn "
       << "once per head (`once`, not in the total)\n"
       << "- phases (lsh, anchors): hashing (x R and argmax; anchors: cosines and the balanced assignment), sorting "
       << "(counting sort, chunks, the self rule), gathering (Q, K, V into sorted order, and merging the rounds back), "
       << "attention (the banded block-sparse passes); `prep` = (hashing + sorting + gathering) / total\n"
       << "- dense and window(w) run the block-sparse engine (engine/cpu_attention.hpp) on the same inputs; window(w) has "
       << "the family's keys per query (2w + 1 = lsh's or anchors' mean |A(q)| measured here, = m for favor; causal "
       << "favor: window(left = 256) & causal, 257 keys); `x dense` and `x window` = their time / the row's time\n\n";
    md << table_row({"method", "n", "d", "keys / query", "median ms", "once ms", "hashing ms", "sorting ms", "gathering ms",
                     "attention ms", "prep", "largest bucket / mean", "x dense", "x window"})
       << table_row({"---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"});
    for (const Row& r : rows) {
        std::vector<std::string> cells{r.method, with_commas(r.n), std::to_string(r.d)};
        std::string& name = cells[0];   // a `|` would end the cell: escape it
        for (size_t at = 0; (at = name.find('|', at)) != std::string::npos; at += 2) name.insert(at, "\\");
        if (r.skipped) {
            cells.push_back(r.note);
            while (cells.size() < 14) cells.push_back("");
            md << table_row(cells);
            continue;
        }
        cells.push_back(format("%.0f", r.keys_per_query));
        cells.push_back(ms(r.total));
        cells.push_back(r.once >= 0 ? ms(r.once) : "");
        for (double phase : {r.hashing, r.sorting, r.gathering, r.attention}) cells.push_back(r.phased || phase == r.attention ? ms(phase) : "");
        cells.push_back(r.phased ? format("%.0f%%", 100 * (r.hashing + r.sorting + r.gathering) / r.total) : "");
        cells.push_back(r.phased ? format("%.2f", r.imbalance) : "");
        const bool causal = r.method.find("causal") != std::string::npos;
        const Row* dense = find(causal ? "dense, causal" : "dense", r.n, r.d);
        cells.push_back(dense != nullptr && r.method.rfind("dense", 0) != 0 ? format("%.1fx", dense->total / r.total) : "");
        std::string window;
        if (r.method.rfind("lsh", 0) == 0 || r.method.rfind("anchors", 0) == 0 || r.method.rfind("favor", 0) == 0) {
            const std::string w = causal ? "window(left = 256) & causal"
                                         : "window(" + std::to_string(window_for(r.keys_per_query)) + ")";
            if (const Row* wr = find(w, r.n, r.d)) window = format("%.2fx", wr->total / r.total);
        }
        cells.push_back(window);
        md << table_row(cells);
    }
    md << "\n`x dense` above 1: the family is faster than exact dense attention (causal rows against dense causal); "
       << "`x window` below 1: a fixed window of as many keys is faster than the family's buckets.\n";

    std::cout << md.str();
    try {
        results_write(out_path, md.str());
    } catch (const std::exception& e) {
        std::cerr << "bench_content_cpu: " << e.what() << "\n";
        return 1;
    }
    std::cerr << "wrote " << out_path << "\n";
    return 0;
}
