// sparsa run: one layer of attention with a script's masks on given (.npy) or seeded random
// tensors; prints the time, kept pairs and effective GFLOP/s, and checks against the reference.
#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/npy.hpp"
#include "engine/reference.hpp"
#include "engine/threads.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace sparsa::cli {

namespace {

const char* const kRunHelp = R"(usage: sparsa run FILE --n N [--d D] [--batch B] [--layer L] [--block B]
                  [--engine cpu|dense] [--q Q.npy --k K.npy --v V.npy] [--out O.npy]
                  [--check] [--json] [--seed S] [--threads T] [--runs R]

Runs one layer of attention with the script's masks (one per head) and prints the time (median
of R runs), the kept pairs, and the effective GFLOP/s: 4 * d FLOPs per kept (query, key) pair,
for every batch and head, over the time.
  --n N           sequence length (the tensors' n)
  --d D           head dimension of random tensors (default 64)
  --batch B       batch of random tensors (default 1)
  --layer L       which layer of the script (default 0)
  --block B       block size (16, 32, 64, 128 or 256); default: the script's `block`, else 64
  --engine E      cpu (default: float32, Eigen, multithreaded) or dense (the double reference)
  --q/--k/--v     tensors as .npy, float32 or float16, [heads, n, d] or [batch, heads, n, d];
                  heads must be the script's. Without them: standard normal values from --seed
  --out O.npy     write O as float32 .npy, with the inputs' rank (written whole or not at all)
  --check         also run the dense reference (exact, in double, in chunks of rows so it fits
                  at long n; it prints progress when slow) and print the largest errors;
                  exit 1 when the relative error is above 1e-5 or empty rows differ
  --json          print one JSON object instead of text
  --seed S        seed of the random tensors (default 0)
  --threads T     threads (default: SPARSA_THREADS or the core count)
  --runs R        timed runs (default 3 for cpu, 1 for dense)
)";

constexpr int64_t kMaxN = int64_t{1} << 32;
// --check fails (exit 1) above this relative error: the engine's float32 bound (tests/engine).
constexpr double kCheckTolerance = 1e-5;

// IEEE half -> float (exact: every half is a float).
float half_to_float(uint16_t h) {
    const int exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    float v;
    if (exponent == 0) v = std::ldexp(static_cast<float>(mantissa), -24);               // zero, subnormal
    else if (exponent == 31) v = mantissa != 0 ? NAN : INFINITY;
    else v = std::ldexp(static_cast<float>(mantissa + 1024), exponent - 25);
    return (h & 0x8000) != 0 ? -v : v;
}

// A tensor from an .npy file of float32 or float16, [heads, n, d] (then *rank3 = true, when
// given) or [batch, heads, n, d].
Tensor tensor_load(const std::string& path, const char* name, bool* rank3 = nullptr) {
    NpyArray a = npy_load(path);
    if (a.shape.size() != 3 && a.shape.size() != 4) {
        throw Error(std::string(name) + " '" + path + "' has shape " + npy_shape_text(a.shape) +
                    " (give [heads, n, d] or [batch, heads, n, d])");
    }
    if (rank3 != nullptr) *rank3 = a.shape.size() == 3;
    TensorShape s;
    s.batch = a.shape.size() == 4 ? a.shape[0] : 1;
    s.heads = a.shape[a.shape.size() - 3];
    s.n = a.shape[a.shape.size() - 2];
    s.d = a.shape[a.shape.size() - 1];
    Tensor t = tensor_zeros<float>(s);
    if (a.dtype == NpyDtype::float32) {
        t.data = npy_array_values<float>(a, name + std::string(" '") + path + "'");
    } else if (a.dtype == NpyDtype::float16) {
        for (size_t e = 0; e < t.data.size(); ++e) {
            uint16_t h;
            std::memcpy(&h, a.data.data() + 2 * e, 2);
            t.data[e] = half_to_float(h);
        }
    } else {
        throw Error(std::string(name) + " '" + path + "' holds " + npy_dtype_name(a.dtype) +
                    " (give float32 or float16, e.g. x.astype(numpy.float32))");
    }
    return t;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t m = v.size() / 2;
    return v.size() % 2 != 0 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The largest differences between O (and lse) and the reference.
struct CheckResult {
    double max_abs = 0, max_ref = 0, lse_max_abs = 0;
    bool lse_inf_match = true;   // -inf exactly where the reference has it (empty rows)
    double seconds = 0;

    double relative() const { return max_ref > 0 ? max_abs / max_ref : max_abs; }
    bool ok() const { return lse_inf_match && relative() <= kCheckTolerance; }
};

// The dense reference over all rows, a chunk of rows at a time (so its outputs stay small), each
// chunk compared with the rows of `out` as it comes. Progress goes to stderr when it is slow.
CheckResult check_against_reference(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& set,
                                    int64_t layer, const AttentionOutput& out, int threads) {
    const TensorShape s = q.shape;
    const auto start = std::chrono::steady_clock::now();
    auto last_report = start;
    // About 64 MiB of double outputs per chunk.
    const int64_t chunk = std::clamp<int64_t>((int64_t{64} << 20) / (8 * s.batch * s.heads * (s.d + 1)), 1, s.n);
    CheckResult r;
    for (int64_t r0 = 0; r0 < s.n; r0 += chunk) {
        ReferenceOptions options;
        options.row_begin = r0;
        options.row_end = std::min(s.n, r0 + chunk);
        options.threads = threads;
        const ReferenceOutput ref = reference_forward(q, k, v, set, layer, options);
        for (int64_t b = 0; b < s.batch; ++b) {
            for (int64_t h = 0; h < s.heads; ++h) {
                for (int64_t i = r0; i < options.row_end; ++i) {
                    const double want_lse = ref.lse.at(b, h, i - r0, 0), got_lse = out.lse.at(b, h, i, 0);
                    if (std::isinf(want_lse) || std::isinf(got_lse)) r.lse_inf_match = r.lse_inf_match && want_lse == got_lse;
                    else r.lse_max_abs = std::max(r.lse_max_abs, std::abs(got_lse - want_lse));
                    for (int64_t j = 0; j < s.d; ++j) {
                        const double want = ref.o.at(b, h, i - r0, j);
                        r.max_abs = std::max(r.max_abs, std::abs(out.o.at(b, h, i, j) - want));
                        r.max_ref = std::max(r.max_ref, std::abs(want));
                    }
                }
            }
        }
        if (seconds_since(last_report) > 2.0 && options.row_end < s.n) {
            last_report = std::chrono::steady_clock::now();
            std::fprintf(stderr, "check: %lld of %lld rows (%.0f%%), %.0f s\n", static_cast<long long>(options.row_end),
                         static_cast<long long>(s.n), 100.0 * static_cast<double>(options.row_end) / static_cast<double>(s.n),
                         seconds_since(start));
        }
    }
    r.seconds = seconds_since(start);
    return r;
}

} // namespace

int command_run(const std::vector<std::string>& argv) {
    Args args(argv, "run",
              {"--n", "--d", "--batch", "--layer", "--block", "--engine", "--q", "--k", "--v", "--out", "--seed",
               "--threads", "--runs"},
              {"--help", "--check", "--json"});
    if (args.has("--help")) {
        std::fputs(kRunHelp, stdout);
        return 0;
    }
    if (args.positionals().size() != 1) throw Error("run: give exactly one script (sparsa run FILE --n N)");
    const std::string path = args.positionals()[0];
    const std::string engine = args.value("--engine").value_or("cpu");
    if (engine != "cpu" && engine != "dense") throw Error("run: --engine '" + engine + "' is not an engine (use cpu or dense)");
    const bool check = args.has("--check"), json = args.has("--json");
    if (check && engine == "dense") {
        throw Error("run: --check compares the cpu engine with the dense reference; with --engine dense there is nothing to compare");
    }
    const int given = args.has("--q") + args.has("--k") + args.has("--v");
    if (given != 0 && given != 3) throw Error("run: give all of --q, --k and --v, or none (for random tensors)");
    const int64_t n = args.required_integer("--n", 1, kMaxN);
    const int threads = static_cast<int>(args.integer("--threads", 0, 0, 4096));
    const int runs = static_cast<int>(args.integer("--runs", engine == "cpu" ? 3 : 1, 1, 1000));
    const uint64_t seed = static_cast<uint64_t>(args.integer("--seed", 0, 0, int64_t{1} << 62));

    // Masks for this n.
    dsl::ScriptPtr script = load_script_or_report(path);
    dsl::CompileOptions compile;
    compile.n = n;
    compile.block = static_cast<int32_t>(args.integer("--block", 0, 0, 1 << 20));
    compile.threads = threads;
    if (compile.block != 0 && !block_size_valid(compile.block)) {
        throw Error("--block " + std::to_string(compile.block) + " is not a power of two from 16 to 256 (use 16, 32, 64, 128 or 256)");
    }
    const dsl::Compiled compiled = dsl::script_compile(*script, compile);
    print_diagnostics(compiled.warnings);
    const MaskSet& set = compiled.masks;
    const int64_t layer = args.integer("--layer", 0, 0, set.layers - 1);

    // Tensors: from files, or random.
    Tensor q, k, v;
    bool rank3 = false;
    if (given == 3) {
        q = tensor_load(*args.value("--q"), "--q", &rank3);   // O is written with Q's rank
        k = tensor_load(*args.value("--k"), "--k");
        v = tensor_load(*args.value("--v"), "--v");
        if (q.shape.n != n) {
            throw Error("run: --q has n = " + std::to_string(q.shape.n) + " but --n is " + std::to_string(n) + " (give --n " +
                        std::to_string(q.shape.n) + ")");
        }
        if (args.has("--d") && args.integer("--d", 0, 1, kMaxHeadDim) != q.shape.d) {
            throw Error("run: --q has d = " + std::to_string(q.shape.d) + " but --d is " + *args.value("--d") + " (leave out --d)");
        }
        if (args.has("--batch") && args.integer("--batch", 0, 1, 1 << 20) != q.shape.batch) {
            throw Error("run: --q has batch " + std::to_string(q.shape.batch) + " but --batch is " + *args.value("--batch") +
                        " (leave out --batch)");
        }
    } else {
        const TensorShape shape{args.integer("--batch", 1, 1, 1 << 20), set.heads, n, args.integer("--d", 64, 1, kMaxHeadDim)};
        q = tensor_random(shape, 3 * seed);
        k = tensor_random(shape, 3 * seed + 1);
        v = tensor_random(shape, 3 * seed + 2);
    }
    const TensorShape s = q.shape;

    // Timed runs.
    AttentionOutput out;
    std::vector<double> seconds;
    for (int r = 0; r < runs; ++r) {
        const auto start = std::chrono::steady_clock::now();
        if (engine == "cpu") {
            AttentionOptions options;
            options.threads = threads;
            out = attention_forward(q, k, v, set, layer, options);
        } else {
            ReferenceOptions options;
            options.threads = threads;
            const ReferenceOutput ref = reference_forward(q, k, v, set, layer, options);
            out.o = tensor_cast<float>(ref.o);
            out.lse = tensor_cast<float>(ref.lse);
        }
        seconds.push_back(seconds_since(start));
    }
    int64_t kept_pairs = 0;
    for (int64_t h = 0; h < s.heads; ++h) kept_pairs += block_mask_stats(set.at(layer, h)).kept_pairs;
    kept_pairs *= s.batch;
    const double flops = 4.0 * static_cast<double>(kept_pairs) * static_cast<double>(s.d);
    const double time = median(seconds);
    const double density = static_cast<double>(kept_pairs) /
                           (static_cast<double>(s.batch * s.heads) * static_cast<double>(n) * static_cast<double>(n));
    const int used_threads = threads > 0 ? threads : thread_count();

    std::optional<CheckResult> checked;
    if (check) checked = check_against_reference(q, k, v, set, layer, out, threads);
    const std::optional<std::string> out_path = args.value("--out");
    if (out_path) {
        std::vector<int64_t> shape = {s.batch, s.heads, s.n, s.d};
        if (rank3) shape.erase(shape.begin());
        npy_save(npy_array_make<float>(shape, out.o.data), *out_path);
    }

    if (json) {
        nlohmann::json j = {{"script", path},         {"layer", layer},     {"batch", s.batch},
                            {"heads", s.heads},       {"n", s.n},           {"d", s.d},
                            {"block", set.block},     {"engine", engine},   {"threads", used_threads},
                            {"inputs", given == 3 ? "files" : "random"},    {"seed", seed},
                            {"runs", runs},           {"seconds", seconds}, {"seconds_median", time},
                            {"kept_pairs", kept_pairs}, {"density", density},
                            {"gflops", flops / time / 1e9}};
        if (checked) {
            j["check"] = {{"max_abs_error", checked->max_abs},
                          {"max_rel_error", checked->relative()},
                          {"lse_max_abs_error", checked->lse_max_abs},
                          {"empty_rows_match", checked->lse_inf_match},
                          {"seconds", checked->seconds},
                          {"tolerance", kCheckTolerance},
                          {"ok", checked->ok()}};
        }
        if (out_path) j["out"] = *out_path;
        std::printf("%s\n", j.dump(2).c_str());
        return checked && !checked->ok() ? 1 : 0;
    }
    std::printf("%s: layer %lld, batch %lld x %lld heads, n = %lld, d = %lld, block %d, engine %s, %d threads, %s\n",
                path.c_str(), static_cast<long long>(layer), static_cast<long long>(s.batch), static_cast<long long>(s.heads),
                static_cast<long long>(s.n), static_cast<long long>(s.d), set.block, engine.c_str(), used_threads,
                given == 3 ? "tensors from files" : ("random tensors (seed " + std::to_string(seed) + ")").c_str());
    std::printf("  kept pairs  %lld (density %.4g%%)\n", static_cast<long long>(kept_pairs), 100 * density);
    std::printf("  time        %.3f ms (median of %d run%s; fastest %.3f ms)\n", 1e3 * time, runs, runs == 1 ? "" : "s",
                1e3 * *std::min_element(seconds.begin(), seconds.end()));
    std::printf("  throughput  %.2f GFLOP/s effective (4 * d FLOPs per kept pair, over the median time)\n", flops / time / 1e9);
    if (checked) {
        std::printf("  check       max abs error %.3g, relative error %.3g (max |O - O_ref| / max |O_ref|), "
                    "lse max abs error %.3g%s: %s (tolerance %.0e); the reference took %.1f s\n",
                    checked->max_abs, checked->relative(), checked->lse_max_abs,
                    checked->lse_inf_match ? "" : ", empty rows differ", checked->ok() ? "ok" : "FAILED", kCheckTolerance,
                    checked->seconds);
    }
    if (out_path) std::printf("  wrote       %s\n", out_path->c_str());
    return checked && !checked->ok() ? 1 : 0;
}

} // namespace sparsa::cli
