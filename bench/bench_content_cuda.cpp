// Benchmark of the CUDA engine's content-based heads (engine/cuda/content/content_cuda.hpp): lsh, anchors
// and FAVOR+ (bidirectional and causal) at each n and d, with the bucketing (hashing or anchor
// cosines and the host's balanced assignment, sorting, chunk ids) timed apart from the attention
// passes and their merge, by CUDA events. Random inputs (never zeros), fresh per case. Prints a
// Markdown table; --csv writes one line per case for bench/gpu_compare.py --content-csv, which
// times cuDNN dense and causal in the same run and writes bench/results/content-cuda-<gpu>.md.
//
//   bench_content_cuda [--n 4096,16384,65536,131072] [--d 64,128] [--heads 16] [--batch 1]
//                      [--dtype bf16] [--families lsh,anchors,favor,favor-causal,dense,window] [--runs 10] [--version 0]
//                      [--warmup-ms 300] [--csv PATH]
// Each case runs untimed until --warmup-ms of device time has passed (at least once), so that the
// GPU's clock has risen from idle (the card idles at 345 MHz; the host's preparation of the next
// case leaves it idle for seconds), then --runs timed runs.
// --version: the kernels (CudaContentOptions::version: 1 the first, 2, 3, 4, 0 the newest), shown in the
// family's name when not 0 (e.g. lsh v1).
//
// Families: lsh = lsh(64 buckets, rounds = 2, chunk = 64); anchors = anchors(64, chunk = 64) on
// random unit anchors; favor = favor(256); favor-causal = favor(256) under `causal`. The features
// and anchors are random normals (the same work as the seed's orthogonal ones).
// And sparsa's own block-sparse engine (CudaAttention, its default kernel) at the same pair count
// (issue 14 asks for both): dense = every pair; window = a window |q - k| <= w, one row for each
// lsh or anchors row of the same (n, d) before it in --families, with w chosen so that its pairs
// are the pairs that family's heads kept on this input (counted on the host from the GPU's
// buckets: content_report), named "window-W=lsh" (W the window). Their time is all attention.
#include "engine/content/content_attention.hpp"
#include "engine/content/random_numbers.hpp"
#include "engine/cuda/attention_cuda.hpp"
#include "engine/cuda/content/content_cuda.hpp"
#include "engine/error.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace sparsa;

namespace {

struct Options {
    std::vector<int64_t> n = {4096, 16384, 65536, 131072};
    std::vector<int64_t> d = {64, 128};
    std::vector<std::string> families = {"lsh", "anchors", "favor", "favor-causal", "dense", "window"};
    int64_t heads = 16, batch = 1;
    CudaDtype dtype = CudaDtype::bfloat16;
    int runs = 10;
    int version = 0;   // CudaContentOptions::version
    double warmup_ms = 300;
    std::string csv;
};

[[noreturn]] void usage(const std::string& problem) {
    std::cerr << "bench_content_cuda: " << problem
              << "\nusage: bench_content_cuda [--n 4096,16384,65536,131072] [--d 64,128] [--heads 16] [--batch 1]"
                 " [--dtype bf16|fp16|float32] [--families lsh,anchors,favor,favor-causal,dense,window] [--runs 10] [--version 0] [--warmup-ms 300]"
                 " [--csv PATH]\n";
    std::exit(2);
}

std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream list(s);
    for (std::string x; std::getline(list, x, ',');) out.push_back(x);
    return out;
}

Options options_parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage(a + " needs a value");
            return argv[++i];
        };
        try {
            if (a == "--n" || a == "--d") {
                auto& list = a == "--n" ? o.n : o.d;
                list.clear();
                for (const auto& x : split(value())) list.push_back(std::stoll(x));
            } else if (a == "--families") {
                o.families = split(value());
                for (const auto& f : o.families) {
                    if (f != "lsh" && f != "anchors" && f != "favor" && f != "favor-causal" && f != "dense" && f != "window") {
                        usage("unknown family '" + f + "'");
                    }
                }
            } else if (a == "--heads") {
                o.heads = std::stoll(value());
            } else if (a == "--batch") {
                o.batch = std::stoll(value());
            } else if (a == "--version") {
                o.version = std::stoi(value());
            } else if (a == "--warmup-ms") {
                o.warmup_ms = std::stod(value());
            } else if (a == "--runs") {
                o.runs = std::stoi(value());
            } else if (a == "--csv") {
                o.csv = value();
            } else if (a == "--dtype") {
                const std::string t = value();
                o.dtype = t == "bf16" ? CudaDtype::bfloat16 : t == "fp16" ? CudaDtype::float16 : t == "float32" ? CudaDtype::float32 : (usage("unknown dtype '" + t + "'"), CudaDtype::bfloat16);
            } else {
                usage("unknown argument '" + a + "'");
            }
        } catch (const std::logic_error&) {
            usage(a + " needs a number (or a list of numbers)");
        }
    }
    if (o.runs < 1 || o.heads < 1 || o.batch < 1) usage("--runs, --heads and --batch must be at least 1");
    return o;
}

// Standard normals from (seed, element), on every core: the inputs at n = 131,072 are 268 M
// values a tensor.
Tensor random_tensor(const TensorShape& shape, uint64_t seed) {
    Tensor t = tensor_zeros<float>(shape);
    const size_t size = t.data.size();
    const unsigned workers = std::max(1u, std::thread::hardware_concurrency());
    std::vector<std::thread> pool;
    for (unsigned w = 0; w < workers; ++w) {
        pool.emplace_back([&, w] {
            const size_t begin = size * w / workers / 2 * 2, end = w + 1 == workers ? size : size * (w + 1) / workers / 2 * 2;
            for (size_t e = begin; e < end; e += 2) {
                const uint64_t bits = random_mix(random_mix(seed) ^ e);
                const double u1 = (static_cast<double>(bits >> 40) + 1.0) / 16777216.0;
                const double u2 = (static_cast<double>(bits & 0xffffff) + 1.0) / 16777216.0;
                const double r = std::sqrt(-2.0 * std::log(u1)), a = 6.283185307179586 * u2;
                t.data[e] = static_cast<float>(r * std::cos(a));
                if (e + 1 < size) t.data[e + 1] = static_cast<float>(r * std::sin(a));
            }
        });
    }
    for (auto& th : pool) th.join();
    return t;
}

struct Row {
    std::string family;
    int64_t n, d;
    CudaContentTimes median;
    int runs;
};

float median_of(std::vector<float> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
}

// The band |q - k| <= w of n tokens in blocks of `block`, built block by block (a dense [n, n]
// would be 17 GB at n = 131,072), in the canonical form block_mask_validate checks.
BlockMask band_mask(int64_t n, int32_t block, int64_t w) {
    BlockMask m;
    m.n = n;
    m.block = block;
    m.row_ptr.push_back(0);
    const int64_t blocks = m.q_blocks(), words = m.words_per_block();
    std::vector<uint64_t> bits(static_cast<size_t>(words));
    for (int64_t qb = 0; qb < blocks; ++qb) {
        const int64_t q0 = qb * block, q1 = std::min(n, q0 + block);
        for (int64_t kb = std::max<int64_t>(0, (q0 - w) / block); kb < blocks && kb * block <= q1 - 1 + w; ++kb) {
            const int64_t k0 = kb * block, k1 = std::min(n, k0 + block);
            if (std::max(q1 - 1 - k0, k1 - 1 - q0) <= w) {   // every pair within the band: full, no bits to draw
                m.col_idx.push_back(static_cast<int32_t>(kb));
                m.partial_idx.push_back(-1);
                continue;
            }
            std::fill(bits.begin(), bits.end(), 0);
            int64_t kept = 0;
            for (int64_t q = q0; q < q1; ++q) {
                for (int64_t k = std::max(k0, q - w); k < std::min(k1, q + w + 1); ++k) {
                    const int64_t t = (q - q0) * block + (k - k0);
                    bits[static_cast<size_t>(t / 64)] |= uint64_t{1} << (t % 64);
                    ++kept;
                }
            }
            if (kept == 0) continue;
            m.col_idx.push_back(static_cast<int32_t>(kb));
            if (kept == (q1 - q0) * (k1 - k0)) {
                m.partial_idx.push_back(-1);
            } else {
                m.partial_idx.push_back(static_cast<int32_t>(m.bits.size() / static_cast<size_t>(words)));
                m.bits.insert(m.bits.end(), bits.begin(), bits.end());
            }
        }
        m.row_ptr.push_back(static_cast<int64_t>(m.col_idx.size()));
    }
    block_mask_validate(m, "bench_content_cuda: band mask");
    return m;
}

// Pairs of |q - k| <= w over n tokens.
int64_t band_pairs(int64_t n, int64_t w) {
    int64_t pairs = 0;
    for (int64_t q = 0; q < n; ++q) pairs += std::min(n - 1, q + w) - std::max<int64_t>(0, q - w) + 1;
    return pairs;
}

} // namespace

int main(int argc, char** argv) {
    const Options opt = options_parse(argc, argv);
    try {
        std::string why;
        if (!cuda_device_available(&why)) {
            std::cerr << "bench_content_cuda: no CUDA GPU here (" << why << ")\n";
            return 1;
        }
        CudaContentAttention engine;
        std::vector<Row> rows;
        std::printf("GPU: %s; %s, batch %lld, %lld heads\n", cuda_device_name().c_str(), cuda_dtype_name(opt.dtype),
                    static_cast<long long>(opt.batch), static_cast<long long>(opt.heads));
        for (const int64_t d : opt.d) {
            for (const int64_t n : opt.n) {
                const TensorShape shape{opt.batch, opt.heads, n, d};
                const uint64_t seed = static_cast<uint64_t>(n * 1000 + d);
                const Tensor q = random_tensor(shape, seed), k = random_tensor(shape, seed + 1), v = random_tensor(shape, seed + 2);
                std::vector<std::pair<std::string, int64_t>> kept;   // (family, pairs a head) of lsh and anchors so far
                for (const std::string& family : opt.families) {
                    if (family == "dense" || family == "window") {
                        // sparsa's block-sparse engine on every pair, or on a window of each content family's pairs
                        std::vector<std::pair<std::string, int64_t>> widths;   // (name, w)
                        if (family == "dense") widths.emplace_back("dense", n);
                        for (const auto& [name, pairs] : family == "window" ? kept : std::vector<std::pair<std::string, int64_t>>{}) {
                            int64_t w = 0;   // the smallest window with at least as many pairs
                            while (w < n && band_pairs(n, w) < pairs) ++w;
                            widths.emplace_back("window-" + std::to_string(w) + "=" + name, w);
                        }
                        for (const auto& [name, w] : widths) {
                            const auto mask = std::make_shared<BlockMask>(band_mask(n, 64, w));
                            const MaskSet set = mask_set_make(1, opt.heads, std::vector<std::shared_ptr<const BlockMask>>(static_cast<size_t>(opt.heads), mask));
                            CudaAttention block_sparse;
                            CudaAttentionOptions options;
                            options.dtype = opt.dtype;
                            block_sparse.prepare(q, k, v, set, 0, options);
                            std::vector<float> ms = block_sparse.time_runs(1, 1);
                            for (float warm = ms[0]; warm < opt.warmup_ms;) warm += block_sparse.time_runs(0, 1)[0];
                            ms = block_sparse.time_runs(0, opt.runs);
                            Row row{name, n, d, {}, opt.runs};
                            row.median.attention_ms = row.median.total_ms = median_of(ms);
                            rows.push_back(row);
                            std::printf("%s n=%lld d=%lld: %lld pairs a head, kernel %d, %.3f ms\n", name.c_str(), static_cast<long long>(n),
                                        static_cast<long long>(d), static_cast<long long>(band_pairs(n, w)), block_sparse.kernel(), row.median.total_ms);
                            std::fflush(stdout);
                        }
                        continue;
                    }
                    ContentSpec spec;
                    CudaContentNumbers numbers(static_cast<size_t>(opt.heads));
                    if (family == "lsh") {
                        spec.kind = ContentKind::lsh;
                        spec.buckets = 64;
                        spec.rounds = 2;
                        spec.chunk = 64;
                        for (int64_t h = 0; h < opt.heads; ++h)
                            for (int64_t r = 0; r < spec.rounds; ++r) {
                                const auto R = random_normals(spec.seed, 0, h, r, d * spec.buckets / 2);
                                numbers[static_cast<size_t>(h)].insert(numbers[static_cast<size_t>(h)].end(), R.begin(), R.end());
                            }
                    } else if (family == "anchors") {
                        spec.kind = ContentKind::anchors;
                        spec.buckets = 64;
                        spec.chunk = 64;
                        std::vector<float> a = random_normals(7, 0, 0, 0, spec.buckets * d);
                        for (int64_t i = 0; i < spec.buckets; ++i) {   // unit rows
                            double norm = 0;
                            for (int64_t j = 0; j < d; ++j) norm += double{a[static_cast<size_t>(i * d + j)]} * a[static_cast<size_t>(i * d + j)];
                            for (int64_t j = 0; j < d; ++j) a[static_cast<size_t>(i * d + j)] = static_cast<float>(a[static_cast<size_t>(i * d + j)] / std::sqrt(norm));
                        }
                        for (auto& x : numbers) x = a;
                    } else {
                        spec.kind = ContentKind::favor;
                        spec.features = 256;
                        spec.causal = family == "favor-causal";
                        for (int64_t h = 0; h < opt.heads; ++h) numbers[static_cast<size_t>(h)] = random_normals(spec.seed, 0, h, 0, spec.features * d);
                    }
                    MaskSet set = mask_set_make(1, opt.heads, std::vector<std::shared_ptr<const BlockMask>>(
                                                                  static_cast<size_t>(opt.heads), std::make_shared<BlockMask>(block_mask_empty(n, 64))));
                    for (int64_t h = 0; h < opt.heads; ++h) set.content.push_back(std::make_shared<ContentSpec>(spec));
                    CudaContentOptions options;
                    options.dtype = opt.dtype;
                    options.version = opt.version;
                    engine.prepare(q, k, v, set, 0, numbers, options);
                    engine.run();   // warm-up: at least one run, and until the clock has risen
                    engine.download();
                    for (double warm = 0; warm < opt.warmup_ms;) {
                        engine.run();
                        warm += engine.times().total_ms;
                    }
                    const CudaContentTimes median = engine.run_median(opt.runs);
                    if (family == "lsh" || family == "anchors") {   // the pairs its heads kept, from the GPU's buckets
                        const CudaContentWalk walk = engine.walk();
                        ContentBuckets given;
                        for (int64_t b = 0; b < opt.batch; ++b) {
                            for (int64_t h = 0; h < opt.heads; ++h) {
                                given.q.emplace_back();
                                given.k.emplace_back();
                                for (int64_t r = 0; r < spec.rounds; ++r) {
                                    const auto from = walk.q_bucket.begin() + ((r * opt.batch + b) * opt.heads + h) * n;
                                    given.q.back().insert(given.q.back().end(), from, from + n);
                                }
                            }
                        }
                        ContentOptions report_options;
                        report_options.buckets = &given;
                        int64_t pairs = 0;
                        for (const ContentReport& r : content_report(tensor_round_to(q, opt.dtype), tensor_round_to(k, opt.dtype), set, 0, report_options)) {
                            pairs += r.pairs;
                        }
                        kept.emplace_back(family, pairs / (opt.batch * opt.heads));
                    }
                    Row row{opt.version == 0 ? family : family + " v" + std::to_string(opt.version), n, d, {}, opt.runs};
                    row.median = median;
                    rows.push_back(row);
                    std::printf("%s n=%lld d=%lld: bucketing %.3f ms, attention %.3f ms, merge %.3f ms, total %.3f ms\n", family.c_str(),
                                static_cast<long long>(n), static_cast<long long>(d), row.median.bucketing_ms, row.median.attention_ms,
                                row.median.merge_ms, row.median.total_ms);
                    std::fflush(stdout);
                }
            }
        }
        std::printf("\n(dense and window-W=F: sparsa's block-sparse engine on every pair, and on a window with as many pairs a head\n"
                    " as family F kept on the same input)\n");
        std::printf("\n| family | n | d | bucketing ms | attention ms | merge ms | total ms | bucketing share |\n|---|---|---|---|---|---|---|---|\n");
        for (const Row& r : rows) {
            std::printf("| %s | %lld | %lld | %.3f | %.3f | %.3f | %.3f | %.1f%% |\n", r.family.c_str(), static_cast<long long>(r.n),
                        static_cast<long long>(r.d), r.median.bucketing_ms, r.median.attention_ms, r.median.merge_ms, r.median.total_ms,
                        100.0 * r.median.bucketing_ms / r.median.total_ms);
        }
        if (!opt.csv.empty()) {
            std::ofstream f(opt.csv);
            f << "family,n,d,heads,batch,dtype,bucketing_ms,attention_ms,merge_ms,total_ms,runs\n";
            for (const Row& r : rows) {
                f << r.family << ',' << r.n << ',' << r.d << ',' << opt.heads << ',' << opt.batch << ',' << cuda_dtype_name(opt.dtype) << ','
                  << r.median.bucketing_ms << ',' << r.median.attention_ms << ',' << r.median.merge_ms << ',' << r.median.total_ms << ','
                  << r.runs << '\n';
            }
            if (!f) throw Error("bench_content_cuda: could not write " + opt.csv + " (check the folder exists and is writable)");
        }
    } catch (const std::exception& e) {
        std::cerr << "bench_content_cuda: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
