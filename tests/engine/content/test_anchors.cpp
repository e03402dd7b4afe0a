// anchors on the CPU: the balanced assignment against the spec's rule written here, spherical
// k-means on planted clusters, the allowed set against the spec's definition, forward and
// backward against the double-precision reference over A (1, 2, 4 rounds, causal or not, alone
// or | a band), the per-input report (bucket sizes, pairs, density, recall) against direct
// counts, and bad input.
#include "engine/content/buckets.hpp"
#include "engine/content/content_attention.hpp"
#include "engine/content/random_numbers.hpp"
#include "engine/error.hpp"
#include "tests/engine/content/content_testing.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

using namespace sparsa;
using namespace sparsa::testing;
using Catch::Matchers::Contains;

namespace {

size_t at(int64_t i) { return static_cast<size_t>(i); }

// k random unit rows of d, per round: [rounds, k, d].
ContentArray random_anchors(int64_t rounds, int64_t k, int64_t d, uint64_t seed) {
    ContentArray a;
    a.path = "anchors.npz";
    a.shape = {rounds, k, d};
    a.values = random_normals(seed, 0, 0, 0, rounds * k * d);
    for (int64_t r = 0; r < rounds * k; ++r) {
        double norm = 0;
        for (int64_t t = 0; t < d; ++t) norm += double{a.values[at(r * d + t)]} * a.values[at(r * d + t)];
        for (int64_t t = 0; t < d; ++t) a.values[at(r * d + t)] = static_cast<float>(a.values[at(r * d + t)] / std::sqrt(norm));
    }
    return a;
}

// The spec's balanced assignment, written plainly: capacity ceil(n / k), rows by decreasing best
// cosine (ties by position), each to its best anchor with room (ties lowest).
std::vector<int32_t> oracle_assign(const float* x, int64_t n, int64_t d, const float* anchors, int64_t k) {
    std::vector<std::vector<long double>> cos(at(n), std::vector<long double>(at(k)));
    std::vector<long double> best(at(n));
    for (int64_t i = 0; i < n; ++i) {
        long double norm = 0;
        for (int64_t t = 0; t < d; ++t) norm += static_cast<long double>(x[i * d + t]) * x[i * d + t];
        norm = std::sqrt(norm);
        for (int64_t j = 0; j < k; ++j) {
            long double dot = 0;
            for (int64_t t = 0; t < d; ++t) dot += static_cast<long double>(x[i * d + t]) * anchors[j * d + t];
            cos[at(i)][at(j)] = norm > 0 ? dot / norm : 0;
        }
        best[at(i)] = *std::max_element(cos[at(i)].begin(), cos[at(i)].end());
    }
    std::vector<int64_t> order(at(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return best[at(a)] > best[at(b)]; });
    std::vector<int64_t> room(at(k), (n + k - 1) / k);
    std::vector<int32_t> out(at(n));
    for (int64_t i : order) {
        int64_t pick = -1;
        for (int64_t j = 0; j < k; ++j) {
            if (room[at(j)] > 0 && (pick < 0 || cos[at(i)][at(j)] > cos[at(i)][at(pick)])) pick = j;
        }
        --room[at(pick)];
        out[at(i)] = static_cast<int32_t>(pick);
    }
    return out;
}

} // namespace

TEST_CASE("anchors_assign: the spec's balanced rule (no anchor above ceil(n / k)), n = 1, 7, 100, 257; k = 1, 3, 16", "[content]") {
    for (int64_t n : {1, 7, 100, 257}) {
        for (int64_t k : {1, 3, 16}) {
            const int64_t d = 12;
            const Tensor x = tensor_random({1, 1, n, d}, static_cast<uint64_t>(n * 31 + k));
            const ContentArray a = random_anchors(1, k, d, static_cast<uint64_t>(n + k));
            std::vector<int32_t> got(at(n));
            anchors_assign(x.data.data(), n, d, a.values.data(), k, got.data());
            INFO("n " << n << ", k " << k);
            CHECK(got == oracle_assign(x.data.data(), n, d, a.values.data(), k));
            std::vector<int64_t> size(at(k), 0);
            for (int32_t b : got) ++size[at(b)];
            CHECK(*std::max_element(size.begin(), size.end()) <= (n + k - 1) / k);
        }
    }
    // Unbalanced data: every row nearest anchor 0; capacity spreads them, the best-aligned first.
    const int64_t n = 6, d = 2;
    const std::vector<float> rows = {1, 0, 1, 0.1f, 1, 0.2f, 1, 0.3f, 1, 0.4f, 1, 0.5f};
    const std::vector<float> anchors = {1, 0, 0, 1, -1, 0};
    std::vector<int32_t> got(at(n));
    anchors_assign(rows.data(), n, d, anchors.data(), 3, got.data());
    CHECK(got == std::vector<int32_t>{0, 0, 1, 1, 2, 2});   // rows 4, 5 are closest to anchor 1 (0, 1) among those with room
}

TEST_CASE("anchors_fit: spherical k-means finds planted clusters; the same seed gives the same anchors on 1 or 3 threads", "[content]") {
    const int64_t d = 16, k = 4, per = 300;
    // Orthonormal centres (Gram-Schmidt on random rows): clusters at 90 degrees, points within
    // about 25 degrees of their centre.
    ContentArray centres = random_anchors(1, k, d, 99);
    for (int64_t c = 0; c < k; ++c) {
        for (int64_t p = 0; p < c; ++p) {
            double dot = 0;
            for (int64_t t = 0; t < d; ++t) dot += double{centres.values[at(c * d + t)]} * centres.values[at(p * d + t)];
            for (int64_t t = 0; t < d; ++t) centres.values[at(c * d + t)] -= static_cast<float>(dot) * centres.values[at(p * d + t)];
        }
        double norm = 0;
        for (int64_t t = 0; t < d; ++t) norm += double{centres.values[at(c * d + t)]} * centres.values[at(c * d + t)];
        for (int64_t t = 0; t < d; ++t) centres.values[at(c * d + t)] /= static_cast<float>(std::sqrt(norm));
    }
    const Tensor noise = tensor_random({1, 1, k * per, d}, 5);
    std::vector<float> x(at(k * per * d));
    for (int64_t c = 0; c < k; ++c) {
        for (int64_t i = 0; i < per; ++i) {
            for (int64_t t = 0; t < d; ++t) {
                const int64_t row = c * per + i;
                x[at(row * d + t)] = (3.0f + static_cast<float>(i % 5)) * (centres.values[at(c * d + t)] + 0.15f * noise.data[at(row * d + t)]);
            }
        }
    }
    std::vector<double> progress;
    const std::vector<float> fit = anchors_fit(x.data(), k * per, d, k, 1, 10, 1, [&](int64_t, double c) { progress.push_back(c); });
    REQUIRE(fit.size() == at(k * d));
    CHECK(progress.size() == 10);
    CHECK(progress.back() > 0.85);   // noise of norm ~0.6 around unit centres: cosines ~0.86
    std::vector<int> matched(at(k), 0);
    for (int64_t a = 0; a < k; ++a) {
        double best = -1;
        int64_t which = -1, norm_ok = 0;
        double norm = 0;
        for (int64_t t = 0; t < d; ++t) norm += double{fit[at(a * d + t)]} * fit[at(a * d + t)];
        norm_ok = std::abs(norm - 1) < 1e-5;
        CHECK(norm_ok);
        for (int64_t c = 0; c < k; ++c) {
            double dot = 0;
            for (int64_t t = 0; t < d; ++t) dot += double{fit[at(a * d + t)]} * centres.values[at(c * d + t)];
            if (dot > best) best = dot, which = c;
        }
        CHECK(best > 0.98);
        ++matched[at(which)];
    }
    CHECK(std::count(matched.begin(), matched.end(), 1) == k);   // one anchor per cluster
    CHECK(anchors_fit(x.data(), k * per, d, k, 1, 10, 3) == fit);
    CHECK(anchors_fit(x.data(), k * per, d, k, 2, 0, 1) != anchors_fit(x.data(), k * per, d, k, 1, 0, 1));
    CHECK_THROWS_WITH(anchors_fit(x.data(), 3, d, 4, 0, 1, 1), Contains("3 nonzero rows") && Contains("4 anchors"));
}

TEST_CASE("anchors forward and backward vs the reference over A: rounds 1, 2, 4, causal or not, alone or | band(12), n = 130 (chunk 16), batch 2, 2 heads", "[content]") {
    const int64_t n = 130, d = 16;
    for (int64_t rounds : {1, 2, 4}) {
        for (bool causal : {false, true}) {
            for (bool band : {false, true}) {
                INFO("rounds " << rounds << ", causal " << causal << ", band " << band);
                const uint64_t seed = static_cast<uint64_t>(100 + rounds * 10 + causal * 2 + band);
                const TensorShape shape{2, 2, n, d};
                const Tensor q = tensor_random(shape, seed), k = tensor_random(shape, seed + 1),
                             v = tensor_random(shape, seed + 2), d_o = tensor_random(shape, seed + 3);
                ContentArrays arrays;
                arrays["a.npz"] = random_anchors(rounds, 6, d, seed);
                arrays["b.npz"] = random_anchors(rounds, 3, d, seed + 1);
                ContentOptions options;
                options.arrays = &arrays;
                const BlockMask fixed = mask_band(n, 16, band ? 12 : -1, causal);
                const MaskSet set = set_with_content({fixed, fixed},
                                                     {spec_make(ContentKind::anchors, 6, rounds, 16, causal, 0, true, "a.npz"),
                                                      spec_make(ContentKind::anchors, 3, rounds, 16, causal, 0, false, "b.npz")});
                check_against_reference(q, k, v, d_o, set, options);
                // A from the spec: buckets by the rule above, sorted by (anchor, position), chunks of 16.
                for (int64_t b = 0; b < 2; ++b) {
                    std::vector<std::vector<int64_t>> pos(at(rounds));
                    for (int64_t r = 0; r < rounds; ++r) {
                        const std::vector<int32_t> bucket =
                            oracle_assign(q.row(b, 0, 0), n, d, arrays["a.npz"].values.data() + r * 6 * d, 6);
                        std::vector<int64_t> order(at(n));
                        std::iota(order.begin(), order.end(), 0);
                        std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return bucket[at(x)] < bucket[at(y)]; });
                        pos[at(r)].assign(at(n), 0);
                        for (int64_t s = 0; s < n; ++s) pos[at(r)][at(order[at(s)])] = s;
                    }
                    std::vector<uint8_t> want(at(n * n), 0);
                    for (int64_t qi = 0; qi < n; ++qi) {
                        bool any = false, self = false;
                        for (int64_t ki = 0; ki < n; ++ki) {
                            bool met = false;
                            for (int64_t r = 0; r < rounds; ++r) {
                                const int64_t gap = pos[at(r)][at(qi)] / 16 - pos[at(r)][at(ki)] / 16;
                                met = met || gap == 0 || gap == 1;
                            }
                            if (ki == qi) self = met;
                            const bool in = (fixed.allowed(qi, ki) || (met && ki != qi)) && !(causal && ki > qi);
                            want[at(qi * n + ki)] = in;
                            any = any || in;
                        }
                        if (!any && self) want[at(qi * n + qi)] = 1;
                    }
                    CHECK(content_allowed_dense(q, k, set, 0, b, 0, options) == want);
                }
            }
        }
    }
}

TEST_CASE("reports: bucket sizes, pairs and density from A, recall against the dense softmax, empty rows", "[content]") {
    const int64_t n = 120, d = 16;
    const TensorShape shape{2, 2, n, d};
    const Tensor q = tensor_random(shape, 61), k = tensor_random(shape, 62), v = tensor_random(shape, 63);
    ContentArrays arrays;
    arrays["a.npz"] = random_anchors(2, 5, d, 7);
    ContentOptions options;
    options.arrays = &arrays;
    options.recall = true;
    const MaskSet set = set_with_content({mask_band(n, 16, 4, true), block_mask_empty(n, 16)},
                                         {spec_make(ContentKind::lsh, 8, 2, 16, true, 3, false),
                                          spec_make(ContentKind::anchors, 5, 2, 16, false, 0, true, "a.npz")});
    const ContentForward out = content_attention_forward(q, k, v, set, 0, options);
    const std::vector<ContentReport> alone = content_report(q, k, set, 0, options);
    REQUIRE(out.reports.size() == 4);
    REQUIRE(alone.size() == 4);
    for (size_t i = 0; i < 4; ++i) {
        const ContentReport& r = out.reports[i];
        INFO("report " << i << ": batch " << r.batch << ", head " << r.head);
        CHECK(r.batch == static_cast<int64_t>(i / 2));
        CHECK(r.head == static_cast<int64_t>(i % 2));
        const std::vector<uint8_t> a = content_allowed_dense(q, k, set, 0, r.batch, r.head, options);
        int64_t pairs = 0, empty = 0;
        double recall_sum = 0, recall_min = 1;
        for (int64_t qi = 0; qi < n; ++qi) {
            int64_t row = 0;
            double all = 0, kept = 0;
            std::vector<double> s(at(n));
            double top = -INFINITY;
            const int64_t last = r.head == 0 ? qi + 1 : n;   // head 0 is causal
            for (int64_t ki = 0; ki < last; ++ki) {
                double dot = 0;
                for (int64_t t = 0; t < d; ++t) dot += double{q.at(r.batch, r.head, qi, t)} * k.at(r.batch, r.head, ki, t);
                s[at(ki)] = dot / 4.0;
                top = std::max(top, s[at(ki)]);
            }
            for (int64_t ki = 0; ki < last; ++ki) {
                all += std::exp(s[at(ki)] - top);
                if (a[at(qi * n + ki)]) kept += std::exp(s[at(ki)] - top), ++row;
            }
            pairs += row;
            empty += row == 0;
            recall_sum += kept / all;
            recall_min = std::min(recall_min, kept / all);
            CHECK((out.lse.at(r.batch, r.head, qi, 0) == -INFINITY) == (row == 0));
        }
        CHECK(r.pairs == pairs);
        CHECK(alone[i].pairs == pairs);
        CHECK(r.density == Approx(static_cast<double>(pairs) / (n * n)));
        CHECK(r.empty_rows == empty);
        CHECK(r.recall_mean == Approx(recall_sum / n).epsilon(1e-12));
        CHECK(r.recall_min == Approx(recall_min).epsilon(1e-12));
        CHECK(alone[i].recall_mean == r.recall_mean);
        CHECK(r.bucket_min <= r.bucket_max);
        if (r.head == 1) CHECK(r.bucket_max <= (n + 4) / 5);   // anchors: balanced
        CHECK(r.imbalance == Approx(static_cast<double>(r.bucket_max) * r.buckets / n));
    }
    // Without recall it is NaN.
    options.recall = false;
    CHECK(std::isnan(content_report(q, k, set, 0, options).front().recall_mean));
}

TEST_CASE("anchors bad input: no fitted file, anchors of the wrong shape", "[content]") {
    const int64_t n = 40, d = 8;
    const TensorShape shape{1, 1, n, d};
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
    const BlockMask empty = block_mask_empty(n, 16);
    ContentArrays arrays;
    arrays["a.npz"] = random_anchors(1, 4, d, 1);
    ContentOptions options;
    options.arrays = &arrays;
    CHECK_THROWS_WITH(content_attention_forward(q, k, v, set_with_content({empty}, {spec_make(ContentKind::anchors, 4, 1, 16, false)}), 0, options),
                      Contains("needs its fitted anchors") && Contains("sparsa anchors fit"));
    CHECK_THROWS_WITH(content_attention_forward(q, k, v, set_with_content({empty}, {spec_make(ContentKind::anchors, 4, 2, 16, false, 0, true, "a.npz")}), 0, options),
                      Contains("anchors.npz has shape [1, 4, 8] but this head needs [2, 4, 8]"));
    CHECK_THROWS_WITH(content_attention_forward(q, k, v, set_with_content({empty}, {spec_make(ContentKind::anchors, 0, 1, 16, false, 0, true, "a.npz")}), 0, options),
                      Contains("1 or more anchors"));
}

TEST_CASE("given buckets (the GPU's walk): reports and allowed sets follow them instead of a new hash", "[content]") {
    const int64_t n = 120, d = 16, batch = 2, heads = 2;
    const Tensor q = tensor_random({batch, heads, n, d}, 71), k = tensor_random({batch, heads, n, d}, 72);
    ContentArrays arrays;
    arrays["a.npz"] = random_anchors(2, 5, d, 7);
    const MaskSet set = set_with_content({mask_band(n, 16, 4, true), block_mask_empty(n, 16)},
                                         {spec_make(ContentKind::lsh, 8, 2, 16, true, 3, false),
                                          spec_make(ContentKind::anchors, 5, 2, 16, false, 0, true, "a.npz")});
    ContentOptions hashed;
    hashed.arrays = &arrays;
    hashed.recall = true;
    // the buckets the engine's own hash gives, handed back as another engine would
    ContentBuckets given;
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t h = 0; h < heads; ++h) {
            const ContentSpec& spec = *set.content[at(h)];
            const ContentWalk w = content_walk_hash(spec, content_array_find(&arrays, spec, "test"), q.row(b, h, 0), k.row(b, h, 0), n, d,
                                                    0, h, 16, "test");
            given.q.push_back(w.q_bucket);
            given.k.push_back(w.k_bucket);
        }
    }
    ContentOptions with = hashed;
    with.buckets = &given;
    const std::vector<ContentReport> a = content_report(q, k, set, 0, hashed), b = content_report(q, k, set, 0, with);
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        CHECK(a[i].pairs == b[i].pairs);
        CHECK(a[i].bucket_min == b[i].bucket_min);
        CHECK(a[i].bucket_max == b[i].bucket_max);
        CHECK(a[i].recall_mean == b[i].recall_mean);
    }
    CHECK(content_allowed_dense(q, k, set, 0, 1, 1, hashed) == content_allowed_dense(q, k, set, 0, 1, 1, with));

    // other buckets: every token of (batch 0, head 0) in bucket 0 in both rounds -> one bucket of n
    std::fill(given.q[0].begin(), given.q[0].end(), 0);
    const std::vector<ContentReport> c = content_report(q, k, set, 0, with);
    CHECK(c[0].bucket_max == n);
    CHECK(c[0].pairs != a[0].pairs);
    CHECK(c[1].pairs == a[1].pairs);   // the others are untouched
    CHECK(content_allowed_dense(q, k, set, 0, 0, 0, hashed) != content_allowed_dense(q, k, set, 0, 0, 0, with));

    // wrong sizes and buckets out of range are refused, naming what is wrong
    given.q[0].pop_back();
    CHECK_THROWS_WITH(content_report(q, k, set, 0, with), Contains("given buckets: the queries' are 239 values, the spec needs 240"));
    given.q[0].push_back(8);
    CHECK_THROWS_WITH(content_report(q, k, set, 0, with), Contains("given buckets: bucket 8 is outside 0 to 7"));
    given.q[0].back() = 0;
    given.k[1] = {0};   // (0, 1) buckets keys as queries (shared_qk): keys' buckets of its own are refused
    CHECK_THROWS_WITH(content_report(q, k, set, 0, with), Contains("the keys' are 1 values, the spec needs 0"));
    given.k[1].clear();
    given.q.pop_back();
    CHECK_THROWS_WITH(content_report(q, k, set, 0, with), Contains("given buckets for 3 (batch, head) pairs, the call has 4"));
}
