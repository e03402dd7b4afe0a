// sparsa anchors fit: the anchor vectors of `anchors(k, ...)` heads, by spherical k-means on the
// unit rows of calibration queries and keys, saved as an anchors file (io/content_files.hpp).
#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/outputs.hpp"
#include "engine/content/buckets.hpp"
#include "engine/error.hpp"
#include "engine/threads.hpp"
#include "io/content_files.hpp"
#include "io/npy.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace sparsa::cli {

namespace {

const char* const kAnchorsHelp = R"(usage: sparsa anchors fit --q Q.npy --k K.npy --anchors K -o FILE.npz [--rounds R] [--seed S]
                         [--iterations I] [--restarts N] [--threads T] [--quiet]

Fits the anchors of `anchors(K, rounds = R, fit = "FILE.npz")` heads: spherical k-means on the
rows of Q and K, each scaled to unit length (zero rows left out) and pooled over every leading
dimension (batch, heads, tokens), so one set of anchors serves every layer and head. Each round
is fitted apart: a k-means++ start from seed + r, then I iterations of Lloyd's steps on the
sphere (each row to its nearest anchor by cosine, each anchor the normalised mean of its rows).
  --q Q.npy, --k K.npy  calibration queries and keys, float32, [..., d] (e.g. [batch, heads, n, d])
  --anchors K           anchors per round (1 or more; at most the nonzero rows)
  -o FILE.npz           the anchors file: `anchors` float32 [R, K, d] (unit rows) and a JSON
                        header saying what fitted them (docs/formats.md)
  --rounds R            rounds of the heads that will use the file (default 1)
  --seed S              k-means++ seed of round 0 (default 0)
  --iterations I        Lloyd's iterations per round (default 20)
  --restarts N          k-means++ starts tried per round, from seeds seed + r + i * R (i < N); the
                        fit with the highest mean cosine is kept (default 1). k-means can settle
                        with two clusters under one anchor: on 16 planted clusters, 7 of 8 single
                        starts did; the header records the seed kept
  --threads T           threads (default: SPARSA_THREADS, else the core count)
  --quiet               no progress lines on stderr
The file is written whole or not at all.
)";

// Rows of an .npy file of rank >= 2 as [rows, d] float32.
struct Rows {
    std::vector<int64_t> shape;
    std::vector<float> values;
    int64_t rows = 0, d = 0;
};

Rows rows_load(const std::string& path, const char* option) {
    const NpyArray a = npy_load(path);
    const std::string what = std::string("anchors fit: ") + option + " '" + path + "'";
    if (a.shape.size() < 2) {
        throw Error(what + " has shape " + npy_shape_text(a.shape) + " (give rows of d values, e.g. [batch, heads, n, d])");
    }
    if (a.dtype != NpyDtype::float32) {
        throw Error(what + " holds " + npy_dtype_name(a.dtype) + " (give float32, e.g. x.astype(numpy.float32))");
    }
    Rows r;
    r.shape = a.shape;
    r.values = npy_array_values<float>(a, what);
    r.d = a.shape.back();
    r.rows = r.d > 0 ? static_cast<int64_t>(r.values.size()) / r.d : 0;
    if (r.d < 1 || r.rows < 1) throw Error(what + " has shape " + npy_shape_text(a.shape) + ", no rows to fit (give at least one row of d >= 1 values)");
    for (size_t e = 0; e < r.values.size(); ++e) {
        if (!std::isfinite(r.values[e])) {
            throw Error(what + " has " + (std::isnan(r.values[e]) ? "NaN" : "Inf") + " in row " + std::to_string(static_cast<int64_t>(e) / r.d) +
                        " (anchors are fitted from finite queries and keys: check what produced the file)");
        }
    }
    return r;
}

int anchors_fit_command(const Args& args) {
    const auto q_path = args.value("--q"), k_path = args.value("--k"), out = args.value("-o");
    if (!q_path || !k_path) throw Error("anchors fit: --q and --k are required (the calibration queries and keys, .npy)");
    if (!args.has("--anchors")) throw Error("anchors fit: --anchors K is required (the anchors per round, as in anchors(K))");
    if (!out) throw Error("anchors fit: -o FILE.npz is required (where the anchors go)");
    const int64_t k = args.required_integer("--anchors", 1, int64_t{1} << 24);
    const int64_t rounds = args.integer("--rounds", 1, 1, 1024);
    const int64_t seed = args.integer("--seed", 0, 0, std::numeric_limits<int64_t>::max());
    const int64_t iterations = args.integer("--iterations", 20, 0, 100000);
    const int64_t restarts = args.integer("--restarts", 1, 1, 1000);
    const int threads = static_cast<int>(args.integer("--threads", 0, 0, 4096));
    const bool quiet = args.has("--quiet");

    OutputSet outputs("anchors fit");
    outputs.input(*q_path, "the calibration queries (--q)");
    outputs.input(*k_path, "the calibration keys (--k)");
    outputs.output("-o", *out);

    const Rows q = rows_load(*q_path, "--q"), kr = rows_load(*k_path, "--k");
    if (q.d != kr.d) {
        throw Error("anchors fit: Q rows have d = " + std::to_string(q.d) + " but K rows d = " + std::to_string(kr.d) +
                    " (give queries and keys of the same heads)");
    }
    const int64_t d = q.d;
    std::vector<float> pooled(q.values);
    pooled.insert(pooled.end(), kr.values.begin(), kr.values.end());
    const int64_t rows = q.rows + kr.rows;
    int64_t nonzero = 0;
    for (int64_t i = 0; i < rows; ++i) {
        for (int64_t t = 0; t < d; ++t) {
            if (pooled[static_cast<size_t>(i * d + t)] != 0) {
                ++nonzero;
                break;
            }
        }
    }
    if (!quiet) {
        std::fprintf(stderr, "anchors fit: %lld anchors x %lld rounds, d %lld, from %lld rows of Q and K (%lld nonzero)\n",
                     static_cast<long long>(k), static_cast<long long>(rounds), static_cast<long long>(d),
                     static_cast<long long>(rows), static_cast<long long>(nonzero));
    }

    ContentArray anchors;
    anchors.path = *out;
    anchors.shape = {rounds, k, d};
    AnchorsInfo info;
    info.q_shape = q.shape;
    info.k_shape = kr.shape;
    info.rows = nonzero;
    info.seed = static_cast<uint64_t>(seed);
    info.iterations = iterations;
    info.restarts = restarts;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < rounds; ++r) {
        std::vector<float> best;
        double best_cos = -std::numeric_limits<double>::infinity();
        uint64_t best_seed = 0;
        for (int64_t i = 0; i < restarts; ++i) {
            const uint64_t start = static_cast<uint64_t>(seed) + static_cast<uint64_t>(r) + static_cast<uint64_t>(i * rounds);
            double last = std::numeric_limits<double>::quiet_NaN();
            std::vector<float> fit = anchors_fit(
                pooled.data(), rows, d, k, start, iterations, threads, [&](int64_t it, double mean_cos) {
                    last = mean_cos;
                    if (!quiet && (it == iterations || it % 5 == 0)) {
                        std::fprintf(stderr, "  round %lld/%lld%s, iteration %lld/%lld: mean cosine to its anchor %.4f\n",
                                     static_cast<long long>(r + 1), static_cast<long long>(rounds),
                                     restarts > 1 ? (", start " + std::to_string(i + 1) + "/" + std::to_string(restarts)).c_str() : "",
                                     static_cast<long long>(it), static_cast<long long>(iterations), mean_cos);
                    }
                });
            // The first start's value when iterations = 0 is NaN: any fit beats none.
            if (best.empty() || last > best_cos) {
                best = std::move(fit);
                best_cos = last;
                best_seed = start;
            }
        }
        anchors.values.insert(anchors.values.end(), best.begin(), best.end());
        info.mean_cosine.push_back(best_cos);
        info.start_seed.push_back(best_seed);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    anchors_save(*out, anchors, info);
    outputs.say("wrote %s: anchors [%lld, %lld, %lld] from %lld rows, %lld iterations a round, in %.2f s\n", out->c_str(),
                static_cast<long long>(rounds), static_cast<long long>(k), static_cast<long long>(d),
                static_cast<long long>(nonzero), static_cast<long long>(iterations), seconds);
    outputs.commit();
    return 0;
}

} // namespace

int command_anchors(const std::vector<std::string>& argv) {
    if (argv.empty() || argv[0] == "--help" || argv[0] == "-h") {
        std::fputs(kAnchorsHelp, argv.empty() ? stderr : stdout);
        return argv.empty() ? 2 : 0;
    }
    const std::string sub = argv[0];
    if (sub != "fit") throw Error("anchors: unknown step '" + sub + "' (use: sparsa anchors fit ...; see sparsa anchors --help)");
    const std::vector<std::string> rest(argv.begin() + 1, argv.end());
    const Args args(rest, "anchors fit", {"--q", "--k", "--anchors", "-o", "--rounds", "--seed", "--iterations", "--restarts", "--threads"},
                    {"--help", "--quiet"});
    if (args.has("--help")) {
        std::fputs(kAnchorsHelp, stdout);
        return 0;
    }
    if (!args.positionals().empty()) {
        throw Error("anchors fit: unexpected argument '" + args.positionals()[0] + "' (see sparsa anchors --help)");
    }
    return anchors_fit_command(args);
}

} // namespace sparsa::cli
