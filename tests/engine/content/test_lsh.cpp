// lsh on the CPU: the random numbers against an independent implementation of the spec
// (values from Python), the hash against argmax([xR; -xR]) written here, the allowed set
// against the spec's definition written here, attention forward and backward against the
// double-precision reference over that set (1, 2, 4 rounds, causal or not, alone or | a band,
// n not divisible by the chunk, batch and heads), the duplicate correction, the planted needle
// (how often the buckets drop the key a query needs), near-zero score rows and bad input.
#include "engine/content/buckets.hpp"
#include "engine/content/content_attention.hpp"
#include "engine/content/random_numbers.hpp"
#include "engine/error.hpp"
#include "tests/engine/content/content_testing.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using namespace sparsa;
using namespace sparsa::testing;
using Catch::Matchers::Contains;

namespace {

size_t at(int64_t i) { return static_cast<size_t>(i); }

// The bucket of x (d wide) under R [d, half]: argmax of the concatenation [x R, -x R] (first of equal values).
int64_t oracle_hash(const float* x, int64_t d, const std::vector<float>& rotation, int64_t buckets) {
    const int64_t half = buckets / 2;
    std::vector<double> u(at(buckets));
    for (int64_t j = 0; j < half; ++j) {
        long double dot = 0;
        for (int64_t t = 0; t < d; ++t) dot += static_cast<long double>(x[t]) * rotation[at(t * half + j)];
        u[at(j)] = static_cast<double>(dot);
        u[at(half + j)] = -static_cast<double>(dot);
    }
    return std::max_element(u.begin(), u.end()) - u.begin();
}

// A of (b, h) as the spec states it, from the buckets up, for an lsh spec (rotations from the seed).
std::vector<uint8_t> oracle_allowed(const Tensor& q, const Tensor& k, int64_t b, int64_t h, const BlockMask& fixed,
                                    const ContentSpec& spec, int64_t chunk) {
    const int64_t n = q.shape.n, d = q.shape.d;
    std::vector<std::vector<int64_t>> qpos(at(spec.rounds)), kpos(at(spec.rounds));
    for (int64_t r = 0; r < spec.rounds; ++r) {
        const std::vector<float> rot = random_normals(spec.seed, 0, h, r, d * spec.buckets / 2);
        std::vector<int64_t> qb(at(n)), kb(at(n));
        for (int64_t t = 0; t < n; ++t) {
            qb[at(t)] = oracle_hash(q.row(b, h, t), d, rot, spec.buckets);
            kb[at(t)] = spec.shared_qk ? qb[at(t)] : oracle_hash(k.row(b, h, t), d, rot, spec.buckets);
        }
        for (auto* side : {&qpos, &kpos}) {
            const std::vector<int64_t>& bucket = side == &qpos ? qb : kb;
            std::vector<int64_t> order(at(n));
            std::iota(order.begin(), order.end(), 0);
            std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return bucket[at(x)] < bucket[at(y)]; });
            (*side)[at(r)].assign(at(n), 0);
            for (int64_t s = 0; s < n; ++s) (*side)[at(r)][at(order[at(s)])] = s;
        }
    }
    auto round_pair = [&](int64_t qi, int64_t ki) {
        for (int64_t r = 0; r < spec.rounds; ++r) {
            const int64_t gap = qpos[at(r)][at(qi)] / chunk - kpos[at(r)][at(ki)] / chunk;
            if (gap == 0 || gap == 1) return true;
        }
        return false;
    };
    std::vector<uint8_t> a(at(n * n), 0);
    for (int64_t qi = 0; qi < n; ++qi) {
        bool any = false;
        for (int64_t ki = 0; ki < n; ++ki) {
            bool in = fixed.allowed(qi, ki) || (ki != qi && round_pair(qi, ki));
            if (spec.causal && ki > qi) in = false;
            a[at(qi * n + ki)] = in;
            any = any || in;
        }
        if (!any && (fixed.allowed(qi, qi) || round_pair(qi, qi))) a[at(qi * n + qi)] = 1;
    }
    return a;
}

} // namespace

TEST_CASE("random numbers: keys and normals match an independent implementation of the spec (Python)", "[content]") {
    CHECK(random_key(0, 0, 0, 0) == 0x2130748aaac80268ULL);
    CHECK(random_key(7, 3, 5, 1) == 0xa36eaca24ee1fa3dULL);
    CHECK(random_key(~uint64_t{0}, -1, 2, 3) == 0x74112b5eeca96a8dULL);
    const std::vector<double> a = random_normals_double(0, 0, 0, 0, 5);
    const double want_a[] = {-0.19373758311393557, -1.2109987929716037, -0.56146830620708787, 1.4396507773124199,
                             0.36962087899428719};
    for (int i = 0; i < 5; ++i) CHECK(std::abs(a[at(i)] - want_a[i]) <= 1e-15);
    const std::vector<double> b = random_normals_double(42, 1, 3, 2, 3);
    const double want_b[] = {-0.1645389484452866, -0.95310490503359557, -0.98590581178325776};
    for (int i = 0; i < 3; ++i) CHECK(std::abs(b[at(i)] - want_b[i]) <= 1e-15);
    // A stream split across calls gives the same sequence (an odd call keeps the sin).
    RandomStream s(42, 1, 3, 2);
    for (int i = 0; i < 3; ++i) CHECK(s.normal() == b[at(i)]);
    // Float rounding of the same numbers; moments of many.
    const std::vector<float> f = random_normals(0, 0, 0, 0, 200000);
    CHECK(f[1] == static_cast<float>(want_a[1]));
    double mean = 0, var = 0;
    for (float x : f) mean += x, var += double{x} * x;
    mean /= f.size();
    var = var / f.size() - mean * mean;
    CHECK(std::abs(mean) < 0.01);
    CHECK(std::abs(var - 1) < 0.01);
    CHECK_THROWS_WITH(random_normals(0, 0, 0, 0, -1), Contains("negative"));
}

TEST_CASE("lsh_hash is argmax([xR; -xR]) with ties to the lowest index; a zero row is bucket 0", "[content]") {
    for (int64_t buckets : {2, 8, 64}) {
        for (int64_t d : {1, 16, 64}) {
            const Tensor x = tensor_random({1, 1, 300, d}, static_cast<uint64_t>(buckets * 100 + d));
            const std::vector<float> rot = random_normals(5, 1, 2, 3, d * buckets / 2);
            std::vector<int32_t> got(300);
            lsh_hash(x.data.data(), 300, d, rot.data(), buckets, got.data());
            std::vector<int64_t> seen(at(buckets), 0);
            for (int64_t t = 0; t < 300; ++t) {
                INFO("buckets " << buckets << ", d " << d << ", row " << t);
                CHECK(got[at(t)] == oracle_hash(x.row(0, 0, t), d, rot, buckets));
                ++seen[at(got[at(t)])];
            }
            if (buckets <= 8 && d >= 16) CHECK(std::count(seen.begin(), seen.end(), 0) == 0);   // every bucket used
        }
    }
    std::vector<float> zero(16, 0.0f), rot = random_normals(1, 0, 0, 0, 16 * 4);
    int32_t bucket = -1;
    lsh_hash(zero.data(), 1, 16, rot.data(), 8, &bucket);
    CHECK(bucket == 0);
    // Rotations: the seed's normals for (seed, layer, head, round), or the file's round r.
    ContentSpec spec;
    spec.buckets = 4;
    spec.rounds = 2;
    spec.seed = 9;
    CHECK(lsh_rotation(spec, nullptr, 1, 2, 1, 3) == random_normals(9, 1, 2, 1, 6));
    ContentArray file{"rot.npy", {2, 3, 2}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}};
    CHECK(lsh_rotation(spec, &file, 1, 2, 1, 3) == std::vector<float>{6, 7, 8, 9, 10, 11});
}

TEST_CASE("buckets_sort orders by (bucket, position)", "[content]") {
    const std::vector<int32_t> bucket = {3, 1, 3, 0, 1, 1, 2, 0};
    std::vector<int32_t> order(8);
    buckets_sort(bucket.data(), 8, 4, order.data());
    CHECK(order == std::vector<int32_t>{3, 7, 1, 4, 5, 6, 0, 2});
}

TEST_CASE("lsh allowed set: content_allowed_dense is the spec's A (rounds 1, 2, 4; causal; shared_qk; | band; chunk 1, 7, 16, 64)", "[content]") {
    const int64_t n = 100, d = 16;
    int checked = 0;
    for (int64_t rounds : {1, 2, 4}) {
        for (bool causal : {false, true}) {
            for (bool shared : {true, false}) {
                for (int64_t band : {-1, 5}) {
                    for (int64_t chunk : {1, 7, 16, 64}) {
                        const uint64_t seed = static_cast<uint64_t>(rounds * 1000 + causal * 100 + shared * 10 + chunk);
                        const Tensor q = tensor_random({2, 2, n, d}, seed), k = tensor_random({2, 2, n, d}, seed + 1);
                        const BlockMask fixed = mask_band(n, 16, band, causal);
                        auto spec = spec_make(ContentKind::lsh, 8, rounds, chunk, causal, seed, shared);
                        const MaskSet set = set_with_content({fixed, fixed}, {spec, spec});
                        for (int64_t b = 0; b < 2; ++b) {
                            for (int64_t h = 0; h < 2; ++h) {
                                INFO("rounds " << rounds << ", causal " << causal << ", shared " << shared << ", band "
                                               << band << ", chunk " << chunk << ", [" << b << ", " << h << "]");
                                CHECK(content_allowed_dense(q, k, set, 0, b, h) == oracle_allowed(q, k, b, h, fixed, *spec, chunk));
                                ++checked;
                            }
                        }
                    }
                }
            }
        }
    }
    CHECK(checked == 384);
}

TEST_CASE("lsh forward and backward vs the reference over A: rounds 1, 2, 4, causal or not, alone or | band(20), n = 150 (chunk 32), batch 2, 3 heads", "[content]") {
    const int64_t n = 150, d = 32;
    for (int64_t rounds : {1, 2, 4}) {
        for (bool causal : {false, true}) {
            for (bool band : {false, true}) {
                INFO("rounds " << rounds << ", causal " << causal << ", band " << band);
                const uint64_t seed = static_cast<uint64_t>(rounds * 10 + causal * 2 + band);
                const TensorShape shape{2, 3, n, d};
                const Tensor q = tensor_random(shape, seed), k = tensor_random(shape, seed + 1),
                             v = tensor_random(shape, seed + 2), d_o = tensor_random(shape, seed + 3);
                const BlockMask fixed = mask_band(n, 32, band ? 20 : -1, causal);
                // head 0: lsh(8); head 1: lsh(16, shared_qk = false); head 2: the fixed mask alone (plain).
                const MaskSet set = set_with_content(
                    {fixed, fixed, mask_band(n, 32, 40, causal)},
                    {spec_make(ContentKind::lsh, 8, rounds, 32, causal, seed),
                     spec_make(ContentKind::lsh, 16, rounds, 32, causal, seed + 7, false), nullptr});
                check_against_reference(q, k, v, d_o, set);
            }
        }
    }
}

TEST_CASE("lsh: chunks of 1, 5 and 200 (one chunk: every pair), n = 97, and the script's block when chunk = 0", "[content]") {
    const int64_t n = 97, d = 16;
    for (int64_t chunk : {0, 1, 5, 200}) {
        INFO("chunk " << chunk);
        const TensorShape shape{1, 2, n, d};
        const Tensor q = tensor_random(shape, 11), k = tensor_random(shape, 12), v = tensor_random(shape, 13),
                     d_o = tensor_random(shape, 14);
        const BlockMask empty = block_mask_empty(n, 16);
        const MaskSet set = set_with_content({empty, mask_band(n, 16, 3, true)},
                                             {spec_make(ContentKind::lsh, 4, 2, chunk, false, 3),
                                              spec_make(ContentKind::lsh, 6, 3, chunk, true, 4, false)});
        check_against_reference(q, k, v, d_o, set);
        if (chunk == 200) {   // one chunk holds everything: A is every pair but (q, q)
            const std::vector<uint8_t> a = content_allowed_dense(q, k, set, 0, 0, 0);
            for (int64_t i = 0; i < n; ++i) {
                for (int64_t j = 0; j < n; ++j) REQUIRE(a[at(i * n + j)] == (i != j));
            }
        }
        if (chunk == 0) {   // 0 means the mask's block (16)
            const MaskSet set16 = set_with_content({empty, mask_band(n, 16, 3, true)},
                                                   {spec_make(ContentKind::lsh, 4, 2, 16, false, 3),
                                                    spec_make(ContentKind::lsh, 6, 3, 16, true, 4, false)});
            for (int64_t h = 0; h < 2; ++h) CHECK(content_allowed_dense(q, k, set, 0, 0, h) == content_allowed_dense(q, k, set16, 0, 0, h));
            const std::vector<uint8_t> a = content_allowed_dense(q, k, set, 0, 0, 0);
            const MaskSet set32 = set_with_content({empty, empty}, {spec_make(ContentKind::lsh, 4, 2, 32, false, 3), nullptr});
            CHECK(a != content_allowed_dense(q, k, set32, 0, 0, 0));
        }
    }
}

TEST_CASE("the duplicate correction: without it a pair met in 2 rounds counts twice and O leaves the reference", "[content]") {
    const int64_t n = 128, d = 16;
    const TensorShape shape{1, 1, n, d};
    const Tensor q = tensor_random(shape, 21), k = tensor_random(shape, 22), v = tensor_random(shape, 23),
                 d_o = tensor_random(shape, 24);
    for (bool band : {false, true}) {
        INFO("band " << band);
        const MaskSet set = set_with_content({mask_band(n, 16, band ? 8 : -1, false)},
                                             {spec_make(ContentKind::lsh, 4, 2, 16, false, 5)});
        // Pairs that both rounds hold exist (else the correction would change nothing): each round
        // alone holds 15 * 16 + 7 * 31 * 16 = 3712 pairs (shared_qk: chunk 0 sees itself, the others
        // two chunks, never (q, q)), the union fewer than twice that.
        if (!band) {
            const MaskSet set1 = set_with_content({block_mask_empty(n, 16)}, {spec_make(ContentKind::lsh, 4, 1, 16, false, 5)});
            CHECK(content_report(q, k, set1, 0).front().pairs == 3712);
            CHECK(content_report(q, k, set, 0).front().pairs < 2 * 3712);
        }
        ContentOptions off;
        off.duplicate_correction = false;
        const double with = forward_relative_error(q, k, v, set, {}), without = forward_relative_error(q, k, v, set, off);
        INFO("relative O error with the correction " << with << ", without " << without);
        CHECK(with <= kForwardTolerance);
        CHECK(without > 100 * kForwardTolerance);
        check_against_reference(q, k, v, d_o, set);
    }
}

TEST_CASE("results are identical for thread counts 1 and 3 (forward, backward, reports)", "[content]") {
    const int64_t n = 200, d = 32;
    const TensorShape shape{2, 2, n, d};
    const Tensor q = tensor_random(shape, 31), k = tensor_random(shape, 32), v = tensor_random(shape, 33),
                 d_o = tensor_random(shape, 34);
    const MaskSet set = set_with_content({mask_band(n, 32, 10, true), block_mask_empty(n, 32)},
                                         {spec_make(ContentKind::lsh, 8, 3, 24, true, 1),
                                          spec_make(ContentKind::lsh, 4, 2, 32, false, 2, false)});
    ContentOptions one, three;
    one.threads = 1;
    three.threads = 3;
    const ContentForward a = content_attention_forward(q, k, v, set, 0, one), b = content_attention_forward(q, k, v, set, 0, three);
    CHECK(a.o.data == b.o.data);
    CHECK(a.lse.data == b.lse.data);
    REQUIRE(a.reports.size() == 4);
    for (size_t i = 0; i < 4; ++i) CHECK(a.reports[i].pairs == b.reports[i].pairs);
    const AttentionGrads ga = content_attention_backward(q, k, v, a.o, a.lse, d_o, set, 0, one);
    const AttentionGrads gb = content_attention_backward(q, k, v, a.o, a.lse, d_o, set, 0, three);
    CHECK(ga.dq.data == gb.dq.data);
    CHECK(ga.dk.data == gb.dk.data);
    CHECK(ga.dv.data == gb.dv.data);
}

TEST_CASE("planted needle: how often lsh drops the key a query needs (measured; falls with rounds)", "[content]") {
    // Query i needs key j (k_j = 4 q_i: its score dwarfs the rest); with shared_qk, j is bucketed
    // by q_j, planted at cosine c to q_i. j is far from i, so only the buckets can bring it.
    const int64_t n = 1024, d = 64, trials = 60;
    const std::vector<double> cosines = {1.0, 0.9, 0.7};
    std::vector<std::vector<double>> dropped(cosines.size(), std::vector<double>(3, 0));
    std::mt19937_64 rng(7);
    for (int64_t trial = 0; trial < trials; ++trial) {
        for (size_t ci = 0; ci < cosines.size(); ++ci) {
            Tensor q = tensor_random({1, 1, n, d}, static_cast<uint64_t>(1000 + trial)), k = tensor_random({1, 1, n, d}, static_cast<uint64_t>(5000 + trial));
            const int64_t i = static_cast<int64_t>(rng() % 400), j = i + 300 + static_cast<int64_t>(rng() % 300);
            const Tensor noise = tensor_random({1, 1, 1, d}, static_cast<uint64_t>(9000 + trial));
            // q_j = c q_i + sqrt(1 - c^2) |q_i| e, e a unit vector orthogonal to q_i
            std::vector<double> e(at(d));
            double qq = 0, eq = 0, ee = 0;
            for (int64_t t = 0; t < d; ++t) qq += double{q.at(0, 0, i, t)} * q.at(0, 0, i, t), eq += double{noise.data[at(t)]} * q.at(0, 0, i, t);
            for (int64_t t = 0; t < d; ++t) e[at(t)] = noise.data[at(t)] - eq / qq * q.at(0, 0, i, t), ee += e[at(t)] * e[at(t)];
            const double c = cosines[ci], s = std::sqrt(std::max(0.0, 1 - c * c)) * std::sqrt(qq / ee);
            for (int64_t t = 0; t < d; ++t) {
                q.at(0, 0, j, t) = static_cast<float>(c * q.at(0, 0, i, t) + s * e[at(t)]);
                k.at(0, 0, j, t) = 4 * q.at(0, 0, i, t);
            }
            for (size_t ri = 0; ri < 3; ++ri) {
                const int64_t rounds = int64_t{1} << ri;
                const MaskSet set = set_with_content({block_mask_empty(n, 64)},
                                                     {spec_make(ContentKind::lsh, 16, rounds, 64, false, static_cast<uint64_t>(trial))});
                ContentOptions one;
                one.threads = 1;
                const std::vector<uint8_t> a = content_allowed_dense(q, k, set, 0, 0, 0, one);
                dropped[ci][ri] += a[at(i * n + j)] == 0;
            }
        }
    }
    for (size_t ci = 0; ci < cosines.size(); ++ci) {
        for (double& x : dropped[ci]) x /= trials;
        std::printf("planted needle, n = %lld, lsh(16, chunk = 64), cosine %.1f: dropped in %.0f%% (1 round), %.0f%% (2), %.0f%% (4) of %lld trials\n",
                    static_cast<long long>(n), cosines[ci], 100 * dropped[ci][0], 100 * dropped[ci][1], 100 * dropped[ci][2],
                    static_cast<long long>(trials));
        // More rounds never lose a pair a round had (rounds are nested: round r's rotation is the same
        // for 1, 2 and 4 rounds), so the rate cannot rise; and it must fall where there is room.
        CHECK(dropped[ci][1] <= dropped[ci][0]);
        CHECK(dropped[ci][2] <= dropped[ci][1]);
    }
    // Identical vectors share every bucket, but i comes before j in it: query i sees only keys of
    // its own chunk and the one before, so j is dropped when a chunk edge falls between them
    // (measured: 38% with 1 round); independent edges in 4 rounds leave a few percent.
    CHECK(dropped[0][2] < 0.15);
    CHECK(dropped[2][0] > dropped[0][0]);         // a weaker match is dropped more often
    CHECK(dropped[2][2] < dropped[2][0]);         // and more rounds recover it
}

TEST_CASE("near-zero score rows: a zero query (bucket 0, uniform softmax over A) and tiny norms match the reference", "[content]") {
    const int64_t n = 90, d = 16;
    const TensorShape shape{1, 1, n, d};
    Tensor q = tensor_random(shape, 41), k = tensor_random(shape, 42);
    const Tensor v = tensor_random(shape, 43), d_o = tensor_random(shape, 44);
    for (int64_t t = 0; t < d; ++t) {
        q.at(0, 0, 10, t) = 0;
        q.at(0, 0, 50, t) *= 1e-30f;
        k.at(0, 0, 60, t) = 0;
    }
    const MaskSet set = set_with_content({block_mask_empty(n, 16)}, {spec_make(ContentKind::lsh, 8, 2, 16, false, 1)});
    check_against_reference(q, k, v, d_o, set);
    const ContentForward out = content_attention_forward(q, k, v, set, 0);
    const std::vector<uint8_t> a = content_allowed_dense(q, k, set, 0, 0, 0);
    std::vector<double> mean(at(d), 0);
    int64_t count = 0;
    for (int64_t key = 0; key < n; ++key) {
        if (!a[at(10 * n + key)]) continue;
        ++count;
        for (int64_t t = 0; t < d; ++t) mean[at(t)] += v.at(0, 0, key, t);
    }
    REQUIRE(count > 0);
    for (int64_t t = 0; t < d; ++t) CHECK(std::abs(out.o.at(0, 0, 10, t) - mean[at(t)] / count) <= 1e-5);
    CHECK(std::abs(out.lse.at(0, 0, 10, 0) - std::log(static_cast<double>(count))) <= 1e-5);
}

TEST_CASE("lsh bad input: odd or too few buckets, more buckets than tokens (naming n), rotations of the wrong shape, a missing file, favor heads", "[content]") {
    const int64_t n = 40, d = 8;
    const TensorShape shape{1, 1, n, d};
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
    const BlockMask empty = block_mask_empty(n, 16);
    auto run = [&](std::shared_ptr<ContentSpec> spec, const ContentArrays* arrays = nullptr) {
        ContentOptions options;
        options.arrays = arrays;
        content_attention_forward(q, k, v, set_with_content({empty}, {std::move(spec)}), 0, options);
    };
    CHECK_THROWS_WITH(run(spec_make(ContentKind::lsh, 7, 1, 16, false)), Contains("even number of buckets"));
    CHECK_THROWS_WITH(run(spec_make(ContentKind::lsh, 0, 1, 16, false)), Contains("2 or more"));
    CHECK_THROWS_WITH(run(spec_make(ContentKind::lsh, 64, 1, 16, false)), Contains("more buckets than the 40 tokens") && Contains("n = 40"));
    CHECK_THROWS_WITH(run(spec_make(ContentKind::lsh, 4, 0, 16, false)), Contains("0 rounds"));
    CHECK_THROWS_WITH(run(spec_make(ContentKind::lsh, 4, 2, 16, false, 0, true, "rot.npy")), Contains("'rot.npy'") && Contains("not loaded"));
    ContentArrays arrays;
    arrays["rot.npy"] = ContentArray{"/data/rot.npy", {2, 8, 3}, std::vector<float>(48, 1.0f)};
    CHECK_THROWS_WITH(run(spec_make(ContentKind::lsh, 4, 2, 16, false, 0, true, "rot.npy"), &arrays),
                      Contains("/data/rot.npy has shape [2, 8, 3] but this head needs [2, 8, 2]"));
    auto favor = spec_make(ContentKind::favor, 0, 1, 16, false);
    CHECK_THROWS_WITH(run(favor), Contains("favor"));
    // The rotations of the file replace the seed's: the seed's own numbers give the same buckets.
    auto seeded = spec_make(ContentKind::lsh, 4, 2, 16, false, 77), filed = spec_make(ContentKind::lsh, 4, 2, 16, false, 0, true, "r.npy");
    std::vector<float> values;
    for (int64_t r = 0; r < 2; ++r) {
        const std::vector<float> rot = random_normals(77, 0, 0, r, d * 2);
        values.insert(values.end(), rot.begin(), rot.end());
    }
    ContentArrays given;
    given["r.npy"] = ContentArray{"r.npy", {2, d, 2}, values};
    ContentOptions with;
    with.arrays = &given;
    const ContentForward x = content_attention_forward(q, k, v, set_with_content({empty}, {seeded}), 0);
    const ContentForward y = content_attention_forward(q, k, v, set_with_content({empty}, {filed}), 0, with);
    CHECK(x.o.data == y.o.data);
}

// [SECTION] speed (hidden: run with `test_content_engine "[.perf]"`; SPARSA_THREADS sets the threads)

TEST_CASE("perf: lsh(64, rounds = 2, chunk = 64) against dense and window(128) (about the same pairs), n = 16384, d = 64, 8 heads: median of 5", "[.perf]") {
    const int64_t n = 16384, d = 64, heads = 8;
    const TensorShape shape{1, heads, n, d};
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3), d_o = tensor_random(shape, 4);
    auto spec = spec_make(ContentKind::lsh, 64, 2, 64, false, 0);
    const BlockMask empty = block_mask_empty(n, 64);
    const MaskSet lsh = set_with_content(std::vector<BlockMask>(heads, empty), std::vector<std::shared_ptr<ContentSpec>>(heads, spec));
    const MaskSet window = set_with_content(std::vector<BlockMask>(heads, mask_band(n, 64, 128, false)), {});
    auto seconds = [](auto t0) { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    auto median = [](std::vector<double> x) {
        std::sort(x.begin(), x.end());
        return x[x.size() / 2];
    };
    std::vector<double> total, hashing, sorting, gathering, attention, backward, window_fwd, window_bwd;
    int64_t pairs = 0;
    for (int run = 0; run < 5; ++run) {
        auto t0 = std::chrono::steady_clock::now();
        const ContentForward out = content_attention_forward(q, k, v, lsh, 0);
        total.push_back(seconds(t0));
        hashing.push_back(out.times.hashing);
        sorting.push_back(out.times.sorting);
        gathering.push_back(out.times.gathering);
        attention.push_back(out.times.attention);
        pairs = out.reports[0].pairs;
        t0 = std::chrono::steady_clock::now();
        const AttentionGrads g = content_attention_backward(q, k, v, out.o, out.lse, d_o, lsh, 0);
        backward.push_back(seconds(t0));
        CHECK(std::isfinite(g.dq.data[0]));
        t0 = std::chrono::steady_clock::now();
        const AttentionOutput w = attention_forward(q, k, v, window, 0);
        window_fwd.push_back(seconds(t0));
        t0 = std::chrono::steady_clock::now();
        attention_backward(q, k, v, w.o, w.lse, d_o, window, 0);
        window_bwd.push_back(seconds(t0));
    }
    const MaskSet dense = set_with_content(std::vector<BlockMask>(heads, mask_band(n, 64, n, false)), {});
    auto t0 = std::chrono::steady_clock::now();
    attention_forward(q, k, v, dense, 0);
    const double dense_fwd = seconds(t0);
    std::printf("lsh(64, rounds = 2, chunk = 64), n = %lld, d = %lld, %lld heads (%lld pairs a head, %.2f%%), median of 5:\n"
                "  forward %.3f s = hashing %.3f + sorting %.3f + gathering and merging %.3f + attention %.3f (%.0f%% outside attention); backward %.3f s\n"
                "  window(128) (%lld pairs a head): forward %.3f s, backward %.3f s; dense forward (one run) %.3f s: lsh %.0fx faster\n",
                static_cast<long long>(n), static_cast<long long>(d), static_cast<long long>(heads), static_cast<long long>(pairs),
                100.0 * static_cast<double>(pairs) / (static_cast<double>(n) * n), median(total), median(hashing), median(sorting),
                median(gathering), median(attention), 100 * (1 - median(attention) / median(total)), median(backward),
                static_cast<long long>(block_mask_stats(window.at(0, 0)).kept_pairs), median(window_fwd), median(window_bwd), dense_fwd,
                dense_fwd / median(total));
}
