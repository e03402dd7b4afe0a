// The dense reference against a naive full softmax over the whole [n, n] score matrix, and its
// analytic backward against central finite differences of itself. Everything here is double.
//
// Tolerances (double): forward vs naive 1e-12 relative to the largest |O| of the head, lse 1e-12;
// backward vs central differences (h = 1e-5) 1e-7 relative to the largest gradient of the tensor.
#include "engine/reference.hpp"

#include "engine/error.hpp"
#include "tests/engine/mask_testing.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

using namespace sparsa;
using Catch::Matchers::Contains;

namespace {

TensorD random_double(const TensorShape& shape, uint64_t seed) { return tensor_cast<double>(tensor_random(shape, seed)); }

// A set of one layer whose head h uses masks[h].
MaskSet set_of(const std::vector<BlockMask>& masks) {
    std::vector<std::shared_ptr<const BlockMask>> ptrs;
    for (const BlockMask& m : masks) ptrs.push_back(std::make_shared<BlockMask>(m));
    return mask_set_make(1, static_cast<int64_t>(masks.size()), ptrs);
}

// Attention straight from the definition: every score of the row, -inf where the mask says no,
// softmax over the whole row of n.
ReferenceOutput naive_attention(const TensorD& q, const TensorD& k, const TensorD& v, const MaskSet& set, double scale) {
    const TensorShape s = q.shape;
    ReferenceOutput out{tensor_zeros<double>(s), tensor_zeros<double>({s.batch, s.heads, s.n, 1})};
    std::vector<uint8_t> allowed(static_cast<size_t>(s.n));
    std::vector<double> scores(static_cast<size_t>(s.n));
    for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t h = 0; h < s.heads; ++h) {
            for (int64_t i = 0; i < s.n; ++i) {
                block_mask_dense_row(set.at(0, h), i, allowed.data());
                double m = -std::numeric_limits<double>::infinity();
                for (int64_t key = 0; key < s.n; ++key) {
                    double dot = 0;
                    for (int64_t j = 0; j < s.d; ++j) dot += q.at(b, h, i, j) * k.at(b, h, key, j);
                    scores[static_cast<size_t>(key)] = allowed[static_cast<size_t>(key)] ? scale * dot : -INFINITY;
                    m = std::max(m, scores[static_cast<size_t>(key)]);
                }
                if (m == -INFINITY) {
                    out.lse.at(b, h, i, 0) = -INFINITY;
                    continue;
                }
                double sum = 0;
                for (double& x : scores) sum += (x = std::exp(x - m));
                out.lse.at(b, h, i, 0) = m + std::log(sum);
                for (int64_t key = 0; key < s.n; ++key) {
                    for (int64_t j = 0; j < s.d; ++j) out.o.at(b, h, i, j) += scores[static_cast<size_t>(key)] / sum * v.at(b, h, key, j);
                }
            }
        }
    }
    return out;
}

double max_abs(const std::vector<double>& a) {
    double m = 0;
    for (double x : a) m = std::max(m, std::abs(x));
    return m;
}

void check_close(const TensorD& got, const TensorD& want, double tolerance) {
    REQUIRE(got.shape == want.shape);
    const double scale = std::max(max_abs(want.data), 1e-300);
    double worst = 0;
    for (size_t e = 0; e < got.data.size(); ++e) {
        if (std::isinf(want.data[e])) {
            REQUIRE(got.data[e] == want.data[e]);
            continue;
        }
        worst = std::max(worst, std::abs(got.data[e] - want.data[e]) / scale);
    }
    INFO("max error / max |want| = " << worst);
    CHECK(worst <= tolerance);
}

double loss(const ReferenceOutput& out, const TensorD& d_o) {
    double sum = 0;
    for (size_t e = 0; e < d_o.data.size(); ++e) sum += d_o.data[e] * out.o.data[e];
    return sum;
}

} // namespace

TEST_CASE("reference forward vs naive full softmax: random masks, n in {1, 20, 33, 70}, B in {16, 32}, d in {1, 5, 16}", "[reference]") {
    for (int64_t n : {1, 20, 33, 70}) {
        for (int32_t block : {16, 32}) {
            for (int64_t d : {1, 5, 16}) {
                const MaskSet set = set_of({testing::mask_random(n, block, 11 + n), testing::mask_random(n, block, 12 + n)});
                const TensorShape shape{2, 2, n, d};
                const TensorD q = random_double(shape, 1), k = random_double(shape, 2), v = random_double(shape, 3);
                for (double scale : {0.0, 1.5}) {
                    INFO("n " << n << ", B " << block << ", d " << d << ", scale " << scale);
                    ReferenceOptions options;
                    options.scale = scale;
                    const ReferenceOutput got = reference_forward(q, k, v, set, 0, options);
                    const ReferenceOutput want = naive_attention(q, k, v, set, scale != 0 ? scale : 1 / std::sqrt(double(d)));
                    check_close(got.o, want.o, 1e-12);
                    check_close(got.lse, want.lse, 1e-12);
                }
            }
        }
    }
}

TEST_CASE("reference forward: float inputs give the double inputs' result exactly", "[reference]") {
    const MaskSet set = set_of({testing::mask_random(50, 16, 4)});
    const Tensor q = tensor_random({1, 1, 50, 8}, 1), k = tensor_random({1, 1, 50, 8}, 2), v = tensor_random({1, 1, 50, 8}, 3);
    const ReferenceOutput a = reference_forward(q, k, v, set, 0);
    const ReferenceOutput b = reference_forward(tensor_cast<double>(q), tensor_cast<double>(k), tensor_cast<double>(v), set, 0);
    CHECK(a.o.data == b.o.data);
    CHECK(a.lse.data == b.lse.data);
}

TEST_CASE("reference forward: row chunks equal the whole, for threads 1 and 3", "[reference]") {
    const int64_t n = 100;
    const MaskSet set = set_of({testing::mask_random(n, 16, 5), testing::mask_random(n, 16, 6)});
    const TensorShape shape{2, 2, n, 4};
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
    ReferenceOptions whole;
    whole.threads = 1;
    const ReferenceOutput all = reference_forward(q, k, v, set, 0, whole);
    for (int threads : {1, 3}) {
        for (int64_t chunk : {1, 7, 64, 100}) {
            for (int64_t r0 = 0; r0 < n; r0 += chunk) {
                ReferenceOptions options;
                options.threads = threads;
                options.row_begin = r0;
                options.row_end = std::min(n, r0 + chunk);
                const ReferenceOutput part = reference_forward(q, k, v, set, 0, options);
                REQUIRE(part.o.shape == TensorShape{2, 2, options.row_end - r0, 4});
                for (int64_t b = 0; b < 2; ++b) {
                    for (int64_t h = 0; h < 2; ++h) {
                        for (int64_t r = r0; r < options.row_end; ++r) {
                            REQUIRE(part.lse.at(b, h, r - r0, 0) == all.lse.at(b, h, r, 0));
                            for (int64_t j = 0; j < 4; ++j) REQUIRE(part.o.at(b, h, r - r0, j) == all.o.at(b, h, r, j));
                        }
                    }
                }
            }
        }
    }
    ReferenceOptions bad;
    bad.row_begin = 50;
    bad.row_end = 101;
    CHECK_THROWS_WITH(reference_forward(q, k, v, set, 0, bad), Contains("query rows [50, 101) are not inside [0, 100)"));
}

TEST_CASE("reference backward vs central differences: random masks, n in {20, 37}, B = 16, d in {3, 16}, batch 2", "[reference]") {
    for (int64_t n : {20, 37}) {
        for (int64_t d : {3, 16}) {
            const MaskSet set = set_of({testing::mask_random(n, 16, 21 + n), testing::mask_random(n, 16, 22 + d)});
            const TensorShape shape{2, 2, n, d};
            TensorD q = random_double(shape, 1), k = random_double(shape, 2), v = random_double(shape, 3);
            const TensorD d_o = random_double(shape, 4);
            const ReferenceGrads g = reference_backward(q, k, v, d_o, set, 0);
            const double h = 1e-5;
            for (auto [x, grad, name] : {std::tuple{&q, &g.dq, "dQ"}, std::tuple{&k, &g.dk, "dK"}, std::tuple{&v, &g.dv, "dV"}}) {
                TensorD numeric = tensor_zeros<double>(shape);
                for (size_t e = 0; e < x->data.size(); ++e) {
                    const double keep = x->data[e];
                    x->data[e] = keep + h;
                    const double up = loss(reference_forward(q, k, v, set, 0), d_o);
                    x->data[e] = keep - h;
                    const double down = loss(reference_forward(q, k, v, set, 0), d_o);
                    x->data[e] = keep;
                    numeric.data[e] = (up - down) / (2 * h);
                }
                INFO(name << ", n " << n << ", d " << d);
                check_close(*grad, numeric, 1e-7);
            }
        }
    }
}

TEST_CASE("reference: rows with no key give zeros, lse = -inf and zero gradients", "[reference]") {
    // Query rows 0..9 keep nothing; the rest keep keys 0..19 (so key 20..29 get no gradient).
    const int64_t n = 30;
    std::vector<uint8_t> dense(n * n, 0);
    for (int64_t q = 10; q < n; ++q) {
        for (int64_t key = 0; key < 20; ++key) dense[static_cast<size_t>(q * n + key)] = 1;
    }
    const MaskSet set = set_of({block_mask_from_dense(n, 16, dense.data()), block_mask_empty(n, 16)});
    const TensorShape shape{1, 2, n, 4};
    const TensorD q = random_double(shape, 1), k = random_double(shape, 2), v = random_double(shape, 3), d_o = random_double(shape, 4);
    const ReferenceOutput out = reference_forward(q, k, v, set, 0);
    const ReferenceGrads g = reference_backward(q, k, v, d_o, set, 0);
    for (int64_t h = 0; h < 2; ++h) {
        for (int64_t i = 0; i < n; ++i) {
            const bool empty_row = h == 1 || i < 10, unused_key = h == 1 || i >= 20;
            CHECK((out.lse.at(0, h, i, 0) == -INFINITY) == empty_row);
            for (int64_t j = 0; j < 4; ++j) {
                if (empty_row) CHECK(out.o.at(0, h, i, j) == 0.0);
                if (empty_row) CHECK(g.dq.at(0, h, i, j) == 0.0);
                if (unused_key) CHECK(g.dk.at(0, h, i, j) == 0.0);
                if (unused_key) CHECK(g.dv.at(0, h, i, j) == 0.0);
                CHECK(std::isfinite(g.dq.at(0, h, i, j)));
            }
        }
    }
}

TEST_CASE("reference: refuses a size over max_bytes, saying the bytes needed", "[reference]") {
    const MaskSet set = set_of({testing::mask_random(64, 16, 1)});
    const Tensor x = tensor_random({1, 1, 64, 16}, 1);
    ReferenceOptions options;
    options.max_bytes = 1024;
    CHECK_THROWS_WITH(reference_forward(x, x, x, set, 0, options),
                      Contains("the dense reference needs") && Contains("bytes for this size but may use 1024 bytes"));
    CHECK_THROWS_WITH(reference_backward(x, x, x, x, set, 0, options), Contains("the dense reference needs"));
    options.max_bytes = 1 << 30;
    CHECK_NOTHROW(reference_forward(x, x, x, set, 0, options));
}

TEST_CASE("reference: a NaN or infinite scale and a negative thread count are refused; a negative scale is computed", "[reference]") {
    const MaskSet set = set_of({testing::mask_random(40, 16, 1)});
    const Tensor x = tensor_random({1, 1, 40, 8}, 1);
    for (double bad : {std::nan(""), double{INFINITY}, -double{INFINITY}}) {
        ReferenceOptions options;
        options.scale = bad;
        CHECK_THROWS_WITH(reference_forward(x, x, x, set, 0, options),
                          Contains("reference_forward: scale is") && Contains("give a finite softmax scale"));
        CHECK_THROWS_WITH(reference_backward(x, x, x, x, set, 0, options), Contains("reference_backward: scale is"));
    }
    ReferenceOptions options;
    options.threads = -1;
    CHECK_THROWS_WITH(reference_forward(x, x, x, set, 0, options), Contains("reference_forward: threads is -1"));
    CHECK_THROWS_WITH(reference_backward(x, x, x, x, set, 0, options), Contains("reference_backward: threads is -1"));
    options.threads = 0;
    options.scale = -0.7;   // the naive softmax with the same scale
    const TensorD q = tensor_cast<double>(x);
    const ReferenceOutput got = reference_forward(q, q, q, set, 0, options);
    const ReferenceOutput want = naive_attention(q, q, q, set, -0.7);
    check_close(got.o, want.o, 1e-12);
    check_close(got.lse, want.lse, 1e-12);
}

TEST_CASE("reference: float inputs up to FLT_MAX are computed right; double scores beyond double's range are refused", "[reference]") {
    const MaskSet set = set_of({testing::mask_random(40, 16, 2)});
    const TensorShape shape{1, 1, 40, 8};
    // Q = K = 3e38 (every score 8 * 9e76 / sqrt(8)): equal scores, so O is the mean of V's allowed
    // rows and lse = that score + log(keys).
    Tensor big = tensor_zeros<float>(shape);
    std::fill(big.data.begin(), big.data.end(), 3e38f);
    const Tensor v = tensor_random(shape, 3);
    const ReferenceOutput out = reference_forward(big, big, v, set, 0);
    std::vector<uint8_t> allowed(40);
    for (int64_t i = 0; i < 40; ++i) {
        block_mask_dense_row(set.at(0, 0), i, allowed.data());
        const double keys = static_cast<double>(std::count(allowed.begin(), allowed.end(), 1));
        if (keys == 0) continue;
        const double x = 3e38f;   // the float nearest 3e38
        CHECK(out.lse.at(0, 0, i, 0) == Approx(8 * x * x / std::sqrt(8.0) + std::log(keys)).epsilon(1e-12));
        for (int64_t j = 0; j < 8; ++j) {
            double mean = 0;
            for (int64_t key = 0; key < 40; ++key) mean += allowed[static_cast<size_t>(key)] * double{v.at(0, 0, key, j)} / keys;
            CHECK(std::abs(out.o.at(0, 0, i, j) - mean) <= 1e-12);
        }
    }
    TensorD huge = tensor_zeros<double>(shape);
    std::fill(huge.data.begin(), huge.data.end(), 1e160);
    CHECK_THROWS_WITH(reference_forward(huge, huge, huge, set, 0),
                      Contains("reference_forward: the score of Q row [0, 0, ") && Contains("overflows double") &&
                          Contains("scale Q or K down"));
    CHECK_THROWS_WITH(reference_backward(huge, huge, huge, huge, set, 0), Contains("reference_backward: the score of Q row"));
}
