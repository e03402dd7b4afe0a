// sparsa run: one layer of attention with a script's masks on given (.npy) or seeded random
// tensors; prints the time, kept pairs and effective GFLOP/s, and checks against the reference.
// A layer with content-based heads (lsh, anchors, favor) runs through layer_attention.hpp, and
// each head's report on this input is printed (buckets, pairs, density, recall, FAVOR+'s error).
// --engine cuda runs the CUDA engine (engine/cuda/) through libsparsa_cli_cuda.so, loaded only
// then (cli/cuda_module.hpp); compiled in only when CMake built the sparsa_cuda target
// (SPARSA_HAVE_CUDA, set in engine/cuda/CMakeLists.txt).
#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/outputs.hpp"
#include "engine/content/layer_attention.hpp"
#include "engine/cuda/content/content_cuda.hpp"   // plain C++: CudaContentTimes, whatever the build
#include "engine/cpu_attention.hpp"
#include "io/content_files.hpp"
#include "io/npy.hpp"
#include "engine/reference.hpp"
#include "engine/threads.hpp"
#ifdef SPARSA_HAVE_CUDA
#include "cli/cuda_module.hpp"
#endif

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace sparsa::cli {

namespace {

const char* const kRunHelp = R"(usage: sparsa run FILE --n N [--d D] [--batch B] [--layer L] [--block B]
                  [--engine cpu|dense|cuda] [--dtype bf16|fp16|f32] [--kernel K]
                  [--q Q.npy --k K.npy --v V.npy] [--out O.npy]
                  [--check] [--recall] [--json] [--seed S] [--threads T] [--runs R]

Runs one layer of attention with the script's masks (one per head) and prints the time (median
of R runs), the kept pairs, and the effective GFLOP/s: 4 * d FLOPs per kept (query, key) pair,
for every batch and head, over the time.
  --n N           sequence length (the tensors' n)
  --d D           head dimension of random tensors (default 64)
  --batch B       batch of random tensors (default 1)
  --layer L       which layer of the script (default 0)
  --block B       block size (16, 32, 64, 128 or 256); default: the script's `block`, else 64
  --engine E      cpu (default: float32, Eigen, multithreaded), dense (the double reference),
                  or cuda (the GPU: needs a sparsa built with the CUDA toolkit and a CUDA GPU;
                  times with CUDA events, without the copies, and prints TFLOP/s)
  --dtype T       cuda only: the GPU's element type for Q, K, V and O: bf16 (default), fp16
                  or f32 (inputs are rounded to it; softmax and accumulation are float32)
  --kernel K      cuda only: attn_fwd_kernel<K>, 1 to 19 (engine/cuda/attn_fwd_kernels.cuh;
                  10 to 19, wgmma, in attn_fwd_wgmma.cuh and attn_fwd_ws.cuh, need an sm_90
                  GPU); default 0: the engine's choice: in bf16 or fp16 with d = 64 or 128 and
                  blocks of 64 or more, on an sm_90 GPU 15, 18 or 19 by the mask's tile lengths
                  (cuda_auto_kernel: 19 on long rows, 18 where they spread, as causal, 15 on
                  short ones and away from d = 128 with blocks of 64), else 7 or 9, whichever
                  its count of key-tile steps predicts faster for these masks; else kernel 1
  --q/--k/--v     tensors as .npy, float32 or float16, [heads, n, d] or [batch, heads, n, d];
                  heads must be the script's. Without them: standard normal values from --seed
  --out O.npy     write O as float32 .npy, with the inputs' rank (written whole or not at all)
  --check         also run the dense reference (exact, in double, in chunks of rows so it fits
                  at long n; it prints progress when slow) and print the largest errors;
                  exit 1 when the relative error is above 1e-5 or empty rows differ.
                  With --engine cuda the reference runs on the inputs rounded to --dtype,
                  and the bound is 2e-2 for bf16 and fp16 (O is rounded to them), 1e-5 for f32.
                  Content-based heads: lsh and anchors heads against the reference over the
                  same allowed pairs (the same bound), favor heads against exact dense
                  attention, printing the relative error (FAVOR+ approximates: no bound);
                  n up to 8192 there (each head's allowed pairs become an [n, n] mask).
                  With --engine cuda, over the pairs of the GPU's own buckets.

Content-based heads (lsh, anchors, favor) are realised per input, so for them run also prints,
per head: bucket sizes (smallest, largest, imbalance = largest / mean), pairs kept and density,
recall (with --recall or --check), FAVOR+'s predicted error and degraded rows, and the time of
each phase (hashing, sorting, gathering apart from attention). Files the script names (anchors,
rotations, features) are read once, before the runs. With --engine cuda the content heads run on
the GPU (engine/cuda/content/content_cuda.hpp; --kernel 1: its simple kernels), the report is counted on
the host from the GPU's buckets (FAVOR+'s from the inputs as rounded to --dtype), and the phases
are the GPU's: bucketing (hashing or the anchors' assignment, sorting, chunk ids), attention,
merge and the fixed part.
  --recall        content-based heads (lsh, anchors): also measure recall, the share of the exact
                  softmax's mass (dense, or causal dense) that each head's allowed pairs hold
                  (O(n^2 d) a head; --check measures it too)
  --json          print one JSON object instead of text
  --seed S        seed of the random tensors (default 0)
  --threads T     threads (default: SPARSA_THREADS or the core count)
  --runs R        timed runs (default 3 for cpu, 1 for dense, 20 for cuda after one warm-up)
)";

constexpr int64_t kMaxN = int64_t{1} << 32;
// --check fails (exit 1) above this relative error: the engine's float32 bound (tests/engine);
// with --engine cuda in bf16 or fp16, the CUDA tests' bound (tests/engine/cuda).
constexpr double kCheckTolerance = 1e-5;
constexpr double kCheckToleranceHalf = 2e-2;

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
    bool finite = true;          // no NaN or infinity in O, no NaN in lse
    double seconds = 0;
    double tolerance = kCheckTolerance;

    double relative() const { return max_ref > 0 ? max_abs / max_ref : max_abs; }
    bool ok() const { return finite && lse_inf_match && relative() <= tolerance; }
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
                    if (std::isnan(got_lse)) r.finite = false;
                    else if (std::isinf(want_lse) || std::isinf(got_lse)) r.lse_inf_match = r.lse_inf_match && want_lse == got_lse;
                    else r.lse_max_abs = std::max(r.lse_max_abs, std::abs(got_lse - want_lse));
                    for (int64_t j = 0; j < s.d; ++j) {
                        const double want = ref.o.at(b, h, i - r0, j);
                        if (!std::isfinite(out.o.at(b, h, i, j))) r.finite = false;
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

// --engine cuda: the dtype and kernel asked for, and the engine, made before anything slow
// so that a sparsa without CUDA, or a machine without a GPU, fails at once.
struct GpuChoice {
    std::string dtype_name = "bf16";   // bf16, fp16 or f32
    int kernel = 0;                    // asked for (0: the newest that runs the call)
    int kernel_used = 0;               // run
    std::string device;                // the GPU's name
    bool content = false;              // the layer has content-based heads: run through `layer`
    CudaContentTimes phases;           // content layers: the last run's phases
    ContentBuckets buckets;            // content layers: the buckets the GPU drew (reports, --check)
#ifdef SPARSA_HAVE_CUDA
    std::shared_ptr<cuda::Attention> engine;   // in libsparsa_cli_cuda.so
    std::shared_ptr<cuda::Layer> layer;        // content layers, likewise
    CudaDtype dtype = CudaDtype::bfloat16;
#endif
};

GpuChoice gpu_choice(const Args& args, const std::string& engine) {
    GpuChoice g;
    if (engine != "cuda") return g;
    g.dtype_name = args.value("--dtype").value_or("bf16");
    if (g.dtype_name != "bf16" && g.dtype_name != "fp16" && g.dtype_name != "f32") {
        throw Error("run: --dtype '" + g.dtype_name + "' is not a GPU dtype (use bf16, fp16 or f32)");
    }
    g.kernel = static_cast<int>(args.integer("--kernel", 0, 0, 1000));
#ifdef SPARSA_HAVE_CUDA
    g.dtype = g.dtype_name == "bf16" ? CudaDtype::bfloat16 : g.dtype_name == "fp16" ? CudaDtype::float16 : CudaDtype::float32;
    if (g.kernel > cuda::kernel_count()) {   // the first call loads the module, or says why it cannot
        throw Error("run: --kernel " + std::to_string(g.kernel) + " does not exist (use 1 to " + std::to_string(cuda::kernel_count()) +
                    ", or 0 for the newest that runs the call)");
    }
    std::string why;
    if (!cuda::device_available(&why)) {
        throw Error("run: --engine cuda: no CUDA GPU here (" + why + "); use --engine cpu");
    }
    g.engine = std::make_shared<cuda::Attention>();
    g.device = cuda::device_name();
    return g;
#else
    throw Error("run: --engine cuda: this sparsa was built without the CUDA engine (CMake found no CUDA compiler); "
                "rebuild where nvcc is installed, or use --engine cpu");
#endif
}

// Times `runs` launches after one warm-up (CUDA events, seconds of each into `seconds`) and
// returns the last run's O and lse. Outputs are poisoned (NaN) before the first launch, so
// --check catches an element no launch wrote.
// A layer with content-based heads runs through the module's layer (cuda::Layer): each run times
// the whole layer, and its phases and buckets are kept in `g` for the report and --check.
AttentionOutput gpu_run([[maybe_unused]] GpuChoice& g, [[maybe_unused]] const Tensor& q, [[maybe_unused]] const Tensor& k,
                        [[maybe_unused]] const Tensor& v, [[maybe_unused]] const MaskSet& set,
                        [[maybe_unused]] int64_t layer, [[maybe_unused]] const ContentArrays* arrays, [[maybe_unused]] int runs,
                        [[maybe_unused]] std::vector<double>& seconds) {
#ifdef SPARSA_HAVE_CUDA
    CudaAttentionOptions options;
    options.dtype = g.dtype;
    options.kernel = g.kernel;
    options.poison_outputs = true;
    if (g.content) {
        g.layer = std::make_shared<cuda::Layer>();
        g.layer->prepare(q, k, v, set, layer, arrays, options);
        for (float ms : g.layer->time_runs(1, runs)) seconds.push_back(1e-3 * ms);
        AttentionOutput out = g.layer->download();
        g.phases = g.layer->times();
        g.buckets = g.layer->buckets();
        return out;
    }
    g.engine->prepare(q, k, v, set, layer, options);
    g.kernel_used = g.engine->kernel();
    for (float ms : g.engine->time_runs(1, runs)) seconds.push_back(1e-3 * ms);
    return g.engine->download();
#else
    throw Error("run: --engine cuda: this sparsa was built without the CUDA engine");
#endif
}

// x as the GPU sees it in the chosen dtype.
Tensor gpu_round([[maybe_unused]] const GpuChoice& g, const Tensor& x) {
#ifdef SPARSA_HAVE_CUDA
    return cuda::round_to(x, g.dtype);
#else
    return x;
#endif
}

// [content] A layer with content-based heads: per-head summaries over the batch, the check
// against the dense reference over each head's allowed pairs (exact attention for favor heads).

// One head's reports over every batch.
struct HeadSummary {
    int64_t head = 0;
    LayerHeadKind kind = LayerHeadKind::fixed;
    std::string family;              // "lsh(buckets 8, rounds 2, chunk 64)", "fixed", ...
    bool fixed_part = false;         // lsh, anchors: the head's fixed mask adds pairs (`|`)
    int64_t bucket_min = 0, bucket_max = 0;
    double imbalance = 0;            // the largest over the batch
    int64_t pairs = 0;               // summed over the batch
    double density = 0;              // pairs / (batch n^2)
    int64_t empty_rows = 0;
    double recall_mean = NAN, recall_min = NAN;   // mean of the batch's means, smallest row
    int64_t features = 0, degraded_rows = 0;
    double predicted_error = 0;      // the largest over the batch
    double favor_error = NAN;        // --check: ||O - O_exact|| / ||O_exact|| over the batch
};

std::string head_family(const MaskSet& set, int64_t layer, int64_t h) {
    const ContentSpec* spec = set.content.empty() ? nullptr : set.content[static_cast<size_t>(layer * set.heads + h)].get();
    if (spec == nullptr) return "fixed";
    const std::string name = layer_head_kind_name(layer_head_kind(set, layer, h));
    if (spec->kind == ContentKind::favor) {
        return name + "(" + std::to_string(spec->features) + " features" + (spec->causal ? ", causal" : "") + ")";
    }
    return name + "(" + (spec->kind == ContentKind::lsh ? "buckets " : "k ") + std::to_string(spec->buckets) + ", rounds " +
           std::to_string(spec->rounds) + ", chunk " + std::to_string(spec->chunk) + (spec->causal ? ", causal" : "") + ")";
}

std::vector<HeadSummary> heads_summarise(const std::vector<LayerHeadReport>& reports, const MaskSet& set, int64_t layer,
                                         int64_t batch, int64_t n) {
    std::vector<HeadSummary> out(static_cast<size_t>(set.heads));
    for (int64_t h = 0; h < set.heads; ++h) {
        HeadSummary& s = out[static_cast<size_t>(h)];
        s.head = h;
        s.kind = layer_head_kind(set, layer, h);
        s.family = head_family(set, layer, h);
        s.fixed_part = s.kind != LayerHeadKind::fixed && s.kind != LayerHeadKind::favor && set.at(layer, h).kept_blocks() > 0;
        s.bucket_min = std::numeric_limits<int64_t>::max();
    }
    for (const LayerHeadReport& r : reports) {
        HeadSummary& s = out[static_cast<size_t>(r.head)];
        const bool first = r.batch == 0;
        s.bucket_min = std::min(s.bucket_min, r.pairs.bucket_min);
        s.bucket_max = std::max(s.bucket_max, r.pairs.bucket_max);
        s.imbalance = std::max(s.imbalance, r.pairs.imbalance);
        s.pairs += r.pairs.pairs;
        s.empty_rows += r.pairs.empty_rows;
        s.recall_mean = first ? r.pairs.recall_mean / static_cast<double>(batch) : s.recall_mean + r.pairs.recall_mean / static_cast<double>(batch);
        s.recall_min = first ? r.pairs.recall_min : std::min(s.recall_min, r.pairs.recall_min);
        s.features = r.features;
        s.degraded_rows += r.favor.degraded_rows;
        s.predicted_error = std::max(s.predicted_error, r.favor.predicted_error);
    }
    for (HeadSummary& s : out) s.density = static_cast<double>(s.pairs) / (static_cast<double>(batch) * static_cast<double>(n) * static_cast<double>(n));
    return out;
}

// What --check found on a content layer: the heads with pairs in `pairs` (with the same bound
// as a fixed layer), each favor head's relative error in summaries[h].favor_error.
CheckResult check_content(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& set, int64_t layer,
                          const LayerForward& out, const LayerOptions& options, std::vector<HeadSummary>& summaries) {
    const TensorShape s = q.shape;
    const auto start = std::chrono::steady_clock::now();
    auto last_report = start;
    CheckResult r;
    std::vector<double> err2(static_cast<size_t>(s.heads), 0.0), ref2(static_cast<size_t>(s.heads), 0.0);
    auto batch_of = [&](const Tensor& x, int64_t b) {
        Tensor t = tensor_zeros<float>({1, s.heads, s.n, s.d});
        std::copy(x.row(b, 0, 0), x.row(b, 0, 0) + t.data.size(), t.data.begin());
        return t;
    };
    for (int64_t b = 0; b < s.batch; ++b) {
        const MaskSet a = layer_reference_masks(q, k, set, layer, b, options);
        ReferenceOptions ro;
        ro.scale = options.scale;
        ro.threads = options.threads;
        const ReferenceOutput ref = reference_forward(batch_of(q, b), batch_of(k, b), batch_of(v, b), a, 0, ro);
        for (int64_t h = 0; h < s.heads; ++h) {
            const bool favor = summaries[static_cast<size_t>(h)].kind == LayerHeadKind::favor;
            for (int64_t i = 0; i < s.n; ++i) {
                if (!favor) {
                    const double want_lse = ref.lse.at(0, h, i, 0), got_lse = out.lse.at(b, h, i, 0);
                    if (std::isnan(got_lse)) r.finite = false;
                    else if (std::isinf(want_lse) || std::isinf(got_lse)) r.lse_inf_match = r.lse_inf_match && want_lse == got_lse;
                    else r.lse_max_abs = std::max(r.lse_max_abs, std::abs(got_lse - want_lse));
                }
                for (int64_t j = 0; j < s.d; ++j) {
                    const double want = ref.o.at(0, h, i, j), got = out.o.at(b, h, i, j);
                    if (!std::isfinite(got)) r.finite = false;
                    if (favor) {
                        err2[static_cast<size_t>(h)] += (got - want) * (got - want);
                        ref2[static_cast<size_t>(h)] += want * want;
                    } else {
                        r.max_abs = std::max(r.max_abs, std::abs(got - want));
                        r.max_ref = std::max(r.max_ref, std::abs(want));
                    }
                }
            }
        }
        if (seconds_since(last_report) > 2.0 && b + 1 < s.batch) {
            last_report = std::chrono::steady_clock::now();
            std::fprintf(stderr, "check: %lld of %lld batches, %.0f s\n", static_cast<long long>(b + 1),
                         static_cast<long long>(s.batch), seconds_since(start));
        }
    }
    for (HeadSummary& h : summaries) {
        const size_t i = static_cast<size_t>(h.head);
        if (h.kind == LayerHeadKind::favor) h.favor_error = ref2[i] > 0 ? std::sqrt(err2[i] / ref2[i]) : std::sqrt(err2[i]);
    }
    r.seconds = seconds_since(start);
    return r;
}

// The shape a spec's file must have for inputs of head dimension d, and what its dimensions mean.
std::pair<std::vector<int64_t>, std::string> content_file_shape(const ContentSpec& spec, int64_t d) {
    const std::string dd = "d = " + std::to_string(d) + " as Q and K have it";
    switch (spec.kind) {
    case ContentKind::lsh:
        return {{spec.rounds, d, spec.buckets / 2}, "rotations [rounds, d, buckets / 2], " + dd};
    case ContentKind::anchors: return {{spec.rounds, spec.buckets, d}, "anchors [rounds, k, d], " + dd};
    case ContentKind::favor: return {{spec.features, d}, "features [features, d], " + dd};
    }
    return {{}, ""};
}

// The span of the string literal in `source` that names `file` (an absolute path, as the
// compile made it from the literal against the script's folder); {-1, -1} when none does.
std::pair<int32_t, int32_t> file_literal_span(const dsl::Source& source, const std::string& file) {
    namespace fs = std::filesystem;
    const fs::path folder = fs::path(source.path).parent_path();
    for (size_t open = source.text.find('"'); open != std::string::npos;) {
        const size_t close = source.text.find('"', open + 1);
        if (close == std::string::npos) break;
        const fs::path literal = source.text.substr(open + 1, close - open - 1);
        std::error_code error;
        if (!literal.empty() && fs::equivalent(literal.is_absolute() ? literal : folder / literal, file, error) && !error) {
            return {static_cast<int32_t>(open), static_cast<int32_t>(close + 1)};
        }
        open = source.text.find('"', close + 1);
    }
    return {-1, -1};
}

// The files of layer `layer`'s specs against the inputs' head dimension d, which the compile
// could not know: a mismatch is a diagnostic with a caret under the file's name in the script
// (or, for a file named in an imported script, an error naming it), before anything runs.
void content_files_check(const dsl::Script& script, const MaskSet& set, int64_t layer, const ContentArrays& arrays,
                         int64_t d) {
    std::vector<dsl::Diagnostic> errors;
    std::vector<std::string> seen;
    for (int64_t h = 0; h < set.heads; ++h) {
        const ContentSpec* spec = set.content.empty() ? nullptr : set.content[static_cast<size_t>(layer * set.heads + h)].get();
        if (spec == nullptr || spec->file.empty() || std::find(seen.begin(), seen.end(), spec->file) != seen.end()) continue;
        seen.push_back(spec->file);
        const auto it = arrays.find(spec->file);
        if (it == arrays.end()) continue;   // the engine says it was not loaded
        const auto [shape, meaning] = content_file_shape(*spec, d);
        if (it->second.shape == shape) continue;
        const std::string name = std::filesystem::path(spec->file).filename().string();
        const std::string message = std::string(layer_head_kind_name(layer_head_kind(set, layer, h))) + ": " + name +
                                    " has shape " + content_shape_text(it->second.shape) + " but these inputs need " +
                                    content_shape_text(shape) + " (" + meaning + ")";
        const dsl::Source& source = dsl::script_source(script);
        const auto [begin, end] = file_literal_span(source, spec->file);
        if (begin < 0) throw Error("run: " + spec->file + ": " + message);
        errors.push_back(dsl::diagnostic_at(dsl::Severity::error, std::make_shared<dsl::Source>(source), begin, end, message,
                                            "give a file made for head dimension " + std::to_string(d) +
                                                ", or run with Q and K of the head dimension the file has"));
    }
    if (errors.empty()) return;
    print_diagnostics(errors);
    throw ReportedError{};
}

double median_of(const std::vector<LayerTimes>& times, double LayerTimes::*field) {
    std::vector<double> v;
    for (const LayerTimes& t : times) v.push_back(t.*field);
    return median(v);
}
double median_of(const std::vector<LayerTimes>& times, double ContentTimes::*field) {
    std::vector<double> v;
    for (const LayerTimes& t : times) v.push_back(t.content.*field);
    return median(v);
}

std::string percent_text(double share) {
    char text[32];
    std::snprintf(text, sizeof text, "%.4g%%", 100 * share);
    return text;
}

} // namespace

int command_run(const std::vector<std::string>& argv) {
    Args args(argv, "run",
              {"--n", "--d", "--batch", "--layer", "--block", "--engine", "--q", "--k", "--v", "--out", "--seed",
               "--threads", "--runs", "--dtype", "--kernel"},
              {"--help", "--check", "--json", "--recall"});
    if (args.has("--help")) {
        std::fputs(kRunHelp, stdout);
        return 0;
    }
    if (args.positionals().size() != 1) throw Error("run: give exactly one script (sparsa run FILE --n N)");
    const std::string path = args.positionals()[0];
    const std::string engine = args.value("--engine").value_or("cpu");
    if (engine != "cpu" && engine != "dense" && engine != "cuda") {
        throw Error("run: --engine '" + engine + "' is not an engine (use cpu, dense or cuda)");
    }
    const bool check = args.has("--check"), json = args.has("--json"), recall = args.has("--recall") || check;
    if (check && engine == "dense") {
        throw Error("run: --check compares the engine with the dense reference; with --engine dense there is nothing to compare");
    }
    for (const char* option : {"--dtype", "--kernel"}) {
        if (args.has(option) && engine != "cuda") throw Error(std::string("run: ") + option + " is for --engine cuda only");
    }
    GpuChoice gpu = gpu_choice(args, engine);
    const int given = args.has("--q") + args.has("--k") + args.has("--v");
    if (given != 0 && given != 3) throw Error("run: give all of --q, --k and --v, or none (for random tensors)");
    const int64_t n = args.required_integer("--n", 1, kMaxN);
    const int threads = static_cast<int>(args.integer("--threads", 0, 0, 4096));
    const int runs = static_cast<int>(args.integer("--runs", engine == "cpu" ? 3 : engine == "cuda" ? 20 : 1, 1, 1000));
    const uint64_t seed = static_cast<uint64_t>(args.integer("--seed", 0, 0, int64_t{1} << 62));
    const int32_t block = args.block_size();
    const std::optional<std::string> out_path = args.value("--out");
    OutputSet outputs("run");
    outputs.input(path, "the script being run");
    for (const char* option : {"--q", "--k", "--v"}) {
        if (args.has(option)) outputs.input(*args.value(option), std::string("the ") + option + " tensor");
    }
    if (out_path) outputs.output("--out", *out_path);

    // Masks for this n.
    dsl::ScriptPtr script = load_script_or_report(path);
    dsl::CompileOptions compile;
    compile.n = n;
    compile.block = block;
    compile.threads = threads;
    compile.content = true;   // lsh, anchors and favor heads run here (layer_attention.hpp)
    const dsl::Compiled compiled = dsl::script_compile(*script, compile);
    print_diagnostics(compiled.warnings);
    const MaskSet& set = compiled.masks;
    const int64_t layer = args.integer("--layer", 0, 0, set.layers - 1);
    bool content_layer = false, favor_heads = false;
    for (int64_t h = 0; h < set.heads; ++h) {
        content_layer = content_layer || layer_head_kind(set, layer, h) != LayerHeadKind::fixed;
        favor_heads = favor_heads || layer_head_kind(set, layer, h) == LayerHeadKind::favor;
    }
    ContentArrays arrays;
    if (content_layer) {
        if (engine == "dense") {
            throw Error("run: layer " + std::to_string(layer) + " has content-based heads (lsh, anchors or favor), which the "
                        "dense reference does not realise; use --engine cpu --check (the reference over each head's "
                        "allowed pairs, exact attention for favor)");
        }
        gpu.content = engine == "cuda";   // the module's layer: content heads on the GPU (content_cuda.hpp)
        if (check && n > kLayerReferenceMaxN) {
            throw Error("run: --check on content-based heads takes n up to " + std::to_string(kLayerReferenceMaxN) +
                        " (each head's allowed pairs become an [n, n] mask for the reference); give --n " +
                        std::to_string(kLayerReferenceMaxN) + " or less, or leave out --check");
        }
        arrays = content_files_load(set);   // each file the specs name, read once
        for (const auto& [file, array] : arrays) outputs.input(array.path, "a file the script names");
    } else if (args.has("--recall")) {
        throw Error("run: --recall is for content-based heads (lsh, anchors), and layer " + std::to_string(layer) +
                    " has none (its pairs are fixed: sparsa stats counts them)");
    }

    // Tensors: from files, or random.
    Tensor q, k, v;
    bool rank3 = false;
    if (given == 3) {
        q = tensor_load(*args.value("--q"), "--q", &rank3);   // O is written with Q's rank
        k = tensor_load(*args.value("--k"), "--k");
        v = tensor_load(*args.value("--v"), "--v");
        for (const auto& [option, t] : {std::pair{"--k", &k}, std::pair{"--v", &v}}) {
            if (t->shape == q.shape) continue;
            throw Error(std::string("run: ") + option + " '" + *args.value(option) + "' is " + tensor_shape_text(t->shape) +
                        " but --q is " + tensor_shape_text(q.shape) + " (q, k and v are [batch, heads, n, d] of one shape)");
        }
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
    if (content_layer) content_files_check(*script, set, layer, arrays, s.d);

    // Timed runs.
    AttentionOutput out;
    std::vector<double> seconds;
    LayerOptions content_options;
    content_options.threads = threads;
    content_options.arrays = &arrays;
    LayerForward content_out;
    std::vector<LayerTimes> content_times;
    if (engine == "cuda") {
        out = gpu_run(gpu, q, k, v, set, layer, &arrays, runs, seconds);
    }
    // The GPU's content layer: the inputs as it saw them (rounded to the dtype), for its reports and --check.
    Tensor q_seen, k_seen;
    if (engine == "cuda" && content_layer) {
        q_seen = gpu_round(gpu, q);
        k_seen = gpu_round(gpu, k);
        content_options.buckets = &gpu.buckets;   // the reports and --check follow the GPU's buckets
        content_out.reports = layer_report(q_seen, k_seen, set, layer, content_options);
        content_out.o = out.o;
        content_out.lse = out.lse;
    }
    for (int r = 0; r < runs && engine != "cuda"; ++r) {
        const auto start = std::chrono::steady_clock::now();
        if (content_layer) {
            content_out = layer_attention_forward(q, k, v, set, layer, content_options);
            content_times.push_back(content_out.times);
        } else if (engine == "cpu") {
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
    int64_t kept_pairs = 0, pair_heads = s.heads;
    std::vector<HeadSummary> summaries;
    if (content_layer) {
        // Recall is measured apart from the timed runs (O(n^2 d) a head).
        if (recall) {
            content_options.recall = true;
            const std::vector<LayerHeadReport> measured =
                engine == "cuda" ? layer_report(q_seen, k_seen, set, layer, content_options) : layer_report(q, k, set, layer, content_options);
            for (size_t i = 0; i < measured.size(); ++i) {
                content_out.reports[i].pairs.recall_mean = measured[i].pairs.recall_mean;
                content_out.reports[i].pairs.recall_min = measured[i].pairs.recall_min;
            }
        }
        summaries = heads_summarise(content_out.reports, set, layer, s.batch, n);
        pair_heads = 0;
        for (const HeadSummary& h : summaries) {
            if (h.kind == LayerHeadKind::favor) continue;
            kept_pairs += h.pairs;
            ++pair_heads;
        }
        out.o = content_out.o;
        out.lse = content_out.lse;
    } else {
        for (int64_t h = 0; h < s.heads; ++h) kept_pairs += block_mask_stats(set.at(layer, h)).kept_pairs;
        kept_pairs *= s.batch;
    }
    const double flops = 4.0 * static_cast<double>(kept_pairs) * static_cast<double>(s.d);
    const double time = median(seconds);
    const double density = pair_heads == 0 ? 0.0
                                           : static_cast<double>(kept_pairs) / (static_cast<double>(s.batch * pair_heads) *
                                                                                static_cast<double>(n) * static_cast<double>(n));
    // FAVOR+ keeps no pairs, so a layer with favor heads has no pair-based throughput.
    const bool throughput = !favor_heads;
    const int used_threads = threads > 0 ? threads : thread_count();

    std::optional<CheckResult> checked;
    if (check && engine == "cuda" && content_layer) {   // over the GPU's buckets, on the inputs as it saw them
        checked = check_content(q_seen, k_seen, gpu_round(gpu, v), set, layer, content_out, content_options, summaries);
        checked->tolerance = gpu.dtype_name == "f32" ? kCheckTolerance : kCheckToleranceHalf;
    } else if (check && engine == "cuda") {   // the reference sees what the GPU saw: inputs rounded to the dtype
        checked = check_against_reference(gpu_round(gpu, q), gpu_round(gpu, k), gpu_round(gpu, v), set, layer, out, threads);
        checked->tolerance = gpu.dtype_name == "f32" ? kCheckTolerance : kCheckToleranceHalf;
    } else if (check && content_layer) {
        checked = check_content(q, k, v, set, layer, content_out, content_options, summaries);
    } else if (check) {
        checked = check_against_reference(q, k, v, set, layer, out, threads);
    }
    // FAVOR+'s warnings: one line per head (its first batch that warns), on stderr.
    std::vector<std::string> warnings;
    for (int64_t h = 0; h < s.heads && content_layer; ++h) {
        int64_t more = -1;
        std::string line;
        for (const LayerHeadReport& r : content_out.reports) {
            if (r.head != h || r.warning.empty()) continue;
            if (++more == 0) line = r.warning;
        }
        if (more > 0) line += " (and " + std::to_string(more) + " more batch" + (more == 1 ? "" : "es") + " of this head)";
        if (more >= 0) warnings.push_back(path + ": " + line);
    }
    // On the terminal, the first head's warning in full and the others by number (JSON has every line).
    std::string others;
    for (int64_t h = 0, shown = 0; h < s.heads && warnings.size() > 1; ++h) {
        for (const LayerHeadReport& r : content_out.reports) {
            if (r.head != h || r.warning.empty()) continue;
            if (shown++ > 0) others += (others.empty() ? "" : ", ") + std::to_string(h);
            break;
        }
    }
    if (!warnings.empty()) {
        std::fprintf(stderr, "%s%s\n", warnings.front().c_str(),
                     others.empty() ? "" : (" (heads " + others + " warn likewise: see their lines)").c_str());
    }
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
        if (engine == "cuda") {
            j["threads"] = nullptr;   // the CPU's threads play no part in the timed runs
            j["gpu"] = gpu.device;
            j["dtype"] = gpu.dtype_name;
            j["kernel"] = gpu.kernel_used;
            j["tflops"] = flops / time / 1e12;
            if (content_layer) {
                j["kernel"] = nullptr;   // the content kernels (content_cuda.hpp), and CudaAttention's choice for fixed heads
                j["content_kernels"] = gpu.kernel == 1 ? "simple" : "tensor cores where they run";
            }
        }
        if (!throughput) j["gflops"] = nullptr;
        if (content_layer) {
            nlohmann::json per_head = nlohmann::json::array();
            for (const HeadSummary& h : summaries) {
                nlohmann::json e = {{"head", h.head}, {"kind", layer_head_kind_name(h.kind)}, {"family", h.family}};
                if (h.kind == LayerHeadKind::favor) {
                    e["features"] = h.features;
                    e["degraded_rows"] = h.degraded_rows;
                    e["predicted_error"] = h.predicted_error;
                    if (checked) e["error"] = h.favor_error;
                } else {
                    e["pairs"] = h.pairs;
                    e["density"] = h.density;
                    e["empty_rows"] = h.empty_rows;
                }
                if (h.kind == LayerHeadKind::lsh || h.kind == LayerHeadKind::anchors) {
                    e["fixed_part"] = h.fixed_part;
                    e["bucket_min"] = h.bucket_min;
                    e["bucket_max"] = h.bucket_max;
                    e["imbalance"] = h.imbalance;
                    e["recall_mean"] = h.recall_mean;   // NaN (null) unless --recall or --check
                    e["recall_min"] = h.recall_min;
                }
                per_head.push_back(e);
            }
            j["per_head"] = per_head;
            if (engine == "cuda") {   // seconds of the last run, by CUDA events (content_cuda.hpp's CudaContentTimes)
                j["phases"] = {{"bucketing", 1e-3 * gpu.phases.bucketing_ms},
                               {"attention", 1e-3 * gpu.phases.attention_ms},
                               {"merge", 1e-3 * gpu.phases.merge_ms},
                               {"fixed", 1e-3 * gpu.phases.fixed_ms}};
            } else j["phases"] = {{"hashing", median_of(content_times, &ContentTimes::hashing)},
                           {"sorting", median_of(content_times, &ContentTimes::sorting)},
                           {"gathering", median_of(content_times, &ContentTimes::gathering)},
                           {"attention", median_of(content_times, &ContentTimes::attention)},
                           {"favor", median_of(content_times, &LayerTimes::favor)}};
            j["warnings"] = warnings;
        }
        if (checked) {
            j["check"] = {{"max_abs_error", checked->max_abs},
                          {"max_rel_error", checked->relative()},
                          {"lse_max_abs_error", checked->lse_max_abs},
                          {"empty_rows_match", checked->lse_inf_match},
                          {"seconds", checked->seconds},
                          {"tolerance", checked->tolerance},
                          {"finite", checked->finite},
                          {"ok", checked->ok()}};
            if (favor_heads) {
                j["check"]["favor"] = "FAVOR+ approximates exact attention: its heads' relative errors are in per_head[].error, with no tolerance";
            }
        }
        if (out_path) j["out"] = *out_path;
        outputs.say("%s\n", j.dump(2).c_str());
        outputs.commit();
        return checked && !checked->ok() ? 1 : 0;
    }
    const std::string where = engine != "cuda" ? std::to_string(used_threads) + " threads"
                              : content_layer ? gpu.device + ", " + gpu.dtype_name + ", content kernels" + (gpu.kernel == 1 ? " (simple)" : "")
                                              : gpu.device + ", " + gpu.dtype_name + ", kernel " + std::to_string(gpu.kernel_used);
    outputs.say("%s: layer %lld, batch %lld x %lld heads, n = %lld, d = %lld, block %d, engine %s, %s, %s\n", path.c_str(),
                static_cast<long long>(layer), static_cast<long long>(s.batch), static_cast<long long>(s.heads),
                static_cast<long long>(s.n), static_cast<long long>(s.d), set.block, engine.c_str(), where.c_str(),
                given == 3 ? "tensors from files" : ("random tensors (seed " + std::to_string(seed) + ")").c_str());
    if (content_layer && pair_heads < s.heads) {
        outputs.say("  kept pairs  %lld (density %.4g%%) over the %lld heads with pairs; favor heads keep none (FAVOR+ "
                    "estimates dense attention)\n", static_cast<long long>(kept_pairs), 100 * density,
                    static_cast<long long>(pair_heads));
    } else {
        outputs.say("  kept pairs  %lld (density %.4g%%)%s\n", static_cast<long long>(kept_pairs), 100 * density,
                    content_layer ? ", counted on this input" : "");
    }
    outputs.say("  time        %.3f ms (median of %d run%s; fastest %.3f ms)\n", 1e3 * time, runs, runs == 1 ? "" : "s",
                1e3 * *std::min_element(seconds.begin(), seconds.end()));
    if (engine == "cuda") {
        outputs.say("  throughput  %.1f TFLOP/s effective (4 * d FLOPs per kept pair, over the median time; "
                    "CUDA events around the kernel, copies not counted)\n",
                    flops / time / 1e12);
    } else if (throughput) {
        outputs.say("  throughput  %.2f GFLOP/s effective (4 * d FLOPs per kept pair, over the median time)\n", flops / time / 1e9);
    } else {
        outputs.say("  throughput  not given: favor heads keep no pairs (FAVOR+ costs O(n m d) a head, m features)\n");
    }
    for (const HeadSummary& h : summaries) {
        std::string line = h.family + (h.fixed_part ? " | fixed mask" : "") + ": ";
        char text[512];
        if (h.kind == LayerHeadKind::favor) {
            std::snprintf(text, sizeof text, "predicted error %.3g (sqrt((exp(|q'|^2 + |k'|^2) - 1) / m)), %lld degraded rows",
                          h.predicted_error, static_cast<long long>(h.degraded_rows));
            line += text;
            if (checked) {
                std::snprintf(text, sizeof text, "; error against exact attention %.3g (||O - O_exact|| / ||O_exact||)", h.favor_error);
                line += text;
            }
        } else {
            if (h.kind != LayerHeadKind::fixed) {
                std::snprintf(text, sizeof text, "buckets of %lld to %lld tokens (imbalance %.3g), ", static_cast<long long>(h.bucket_min),
                              static_cast<long long>(h.bucket_max), h.imbalance);
                line += text;
            }
            std::snprintf(text, sizeof text, "%lld pairs (density %s)", static_cast<long long>(h.pairs), percent_text(h.density).c_str());
            line += text;
            if (h.empty_rows > 0) line += ", " + std::to_string(h.empty_rows) + " queries with no key";
            if (h.kind != LayerHeadKind::fixed && !std::isnan(h.recall_mean)) {
                std::snprintf(text, sizeof text, ", recall %.4g (mean over rows; worst row %.4g)", h.recall_mean, h.recall_min);
                line += text;
            }
        }
        outputs.say("  head %-6lld %s\n", static_cast<long long>(h.head), line.c_str());
    }
    if (content_layer && engine == "cuda") {
        char text[320];
        std::snprintf(text, sizeof text, "bucketing %.3f ms (hashing or the anchors' assignment, sorting, chunk ids), "
                      "attention %.3f ms, merge %.3f ms, fixed part %.3f ms",
                      gpu.phases.bucketing_ms, gpu.phases.attention_ms, gpu.phases.merge_ms, gpu.phases.fixed_ms);
        outputs.say("  phases      %s (the last run, CUDA events, over the content heads)\n", text);
    } else if (content_layer) {
        std::string phases;
        char text[256];
        if (layer_has(set, layer, LayerHeadKind::lsh) || layer_has(set, layer, LayerHeadKind::anchors)) {
            std::snprintf(text, sizeof text, "hashing %.3f ms, sorting %.3f ms, gathering %.3f ms, ",
                          1e3 * median_of(content_times, &ContentTimes::hashing), 1e3 * median_of(content_times, &ContentTimes::sorting),
                          1e3 * median_of(content_times, &ContentTimes::gathering));
            phases = text;
        }
        if (pair_heads > 0) {
            std::snprintf(text, sizeof text, "attention %.3f ms", 1e3 * median_of(content_times, &ContentTimes::attention));
            phases += text;
        }
        if (favor_heads) {
            std::snprintf(text, sizeof text, "%sFAVOR+ %.3f ms", phases.empty() ? "" : ", ", 1e3 * median_of(content_times, &LayerTimes::favor));
            phases += text;
        }
        outputs.say("  phases      %s (medians over the runs)\n", phases.c_str());
    }
    if (checked && pair_heads > 0) {
        outputs.say("  check       %smax abs error %.3g, relative error %.3g (max |O - O_ref| / max |O_ref|), "
                    "lse max abs error %.3g%s%s: %s (tolerance %.0e); the reference took %.1f s\n",
                    content_layer ? "heads with pairs against the dense reference over the same allowed pairs: " : "",
                    checked->max_abs, checked->relative(), checked->lse_max_abs,
                    checked->lse_inf_match ? "" : ", empty rows differ", checked->finite ? "" : ", NaN or infinity in the output",
                    checked->ok() ? "ok" : "FAILED", checked->tolerance, checked->seconds);
    }
    if (checked && favor_heads) {
        outputs.say("  check       favor heads against exact dense attention: the errors above (FAVOR+ approximates it, so "
                    "there is no tolerance)\n");
    }
    if (out_path) outputs.say("  wrote       %s\n", out_path->c_str());
    outputs.commit();
    return checked && !checked->ok() ? 1 : 0;
}

} // namespace sparsa::cli
