// The CPU engine against the double-precision reference: forward and backward on every example
// pattern, random masks, causal, short last blocks, batch > 1, heads with different masks, d from
// 16 to 256; backward against finite differences; empty rows; thread counts; bad input.
//
// Tolerances (float32 engine vs double reference, per (batch, head), inputs standard normal):
//   O:          max |O - O_ref|    <= 1e-5 * max |O_ref|
//   lse:        |lse - lse_ref|    <= 1e-5 * max(1, |lse_ref|), and -inf exactly where the reference has it
//   dQ, dK, dV: max |dX - dX_ref| <= 2e-5 * max(max |dX_ref|, 1)  (dS = P * (dP - D) cancels; the
//               floor of 1, the inputs' scale, is for heads whose gradient is exactly 0, as when
//               every row keeps one key, where float rounding leaves ~1e-6)
// Measured worst cases over these tests: O 2.4e-6 (scale 4 / sqrt(d)), lse 6e-7, gradients 2.7e-6.
#include "engine/cpu_attention.hpp"

#include "dsl/pattern.hpp"
#include "dsl/script.hpp"
#include "engine/error.hpp"
#include "engine/reference.hpp"
#include "tests/engine/mask_testing.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

using namespace sparsa;
using Catch::Matchers::Contains;

namespace {

constexpr double kForwardTolerance = 1e-5;
constexpr double kGradTolerance = 2e-5;
constexpr double kGradFloor = 1.0;

// A set of one layer whose head h uses masks[h].
MaskSet set_of(const std::vector<BlockMask>& masks) {
    std::vector<std::shared_ptr<const BlockMask>> ptrs;
    for (const BlockMask& m : masks) ptrs.push_back(std::make_shared<BlockMask>(m));
    return mask_set_make(1, static_cast<int64_t>(masks.size()), ptrs);
}

BlockMask mask_causal(int64_t n, int32_t block) {
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 0);
    for (int64_t q = 0; q < n; ++q) {
        for (int64_t k = 0; k <= q; ++k) dense[static_cast<size_t>(q * n + k)] = 1;
    }
    return block_mask_from_dense(n, block, dense.data());
}

BlockMask mask_dense(int64_t n, int32_t block) {
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 1);
    return block_mask_from_dense(n, block, dense.data());
}

// Compares one tensor of the engine with the reference's, head by head (see the tolerances above).
void check_heads(const Tensor& got, const TensorD& want, double tolerance, const char* name, double floor = 0) {
    REQUIRE(got.shape == want.shape);
    const TensorShape s = got.shape;
    for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t h = 0; h < s.heads; ++h) {
            double err = 0, size = 0;
            for (int64_t i = 0; i < s.n; ++i) {
                for (int64_t j = 0; j < s.d; ++j) {
                    REQUIRE(std::isfinite(got.at(b, h, i, j)));
                    err = std::max(err, std::abs(got.at(b, h, i, j) - want.at(b, h, i, j)));
                    size = std::max(size, std::abs(want.at(b, h, i, j)));
                }
            }
            INFO(name << " of [" << b << ", " << h << "]: max error " << err << ", max |reference| " << size);
            CHECK(err <= tolerance * std::max(size, floor));
        }
    }
}

void check_lse(const Tensor& got, const TensorD& want) {
    REQUIRE(got.shape == want.shape);
    for (size_t e = 0; e < got.data.size(); ++e) {
        INFO("lse element " << e << ": " << got.data[e] << " vs " << want.data[e]);
        REQUIRE(!std::isnan(got.data[e]));
        if (std::isinf(want.data[e])) REQUIRE(got.data[e] == want.data[e]);
        else REQUIRE(std::abs(got.data[e] - want.data[e]) <= kForwardTolerance * std::max(1.0, std::abs(want.data[e])));
    }
}

// Forward and backward of one case against the reference, on fresh standard normal inputs.
void check_case(const TensorShape& shape, const MaskSet& set, int64_t layer, uint64_t seed, float scale = 0) {
    const Tensor q = tensor_random(shape, seed), k = tensor_random(shape, seed + 1), v = tensor_random(shape, seed + 2);
    AttentionOptions options;
    options.scale = scale;
    ReferenceOptions ref_options;
    ref_options.scale = scale;
    const AttentionOutput out = attention_forward(q, k, v, set, layer, options);
    const ReferenceOutput ref = reference_forward(q, k, v, set, layer, ref_options);
    check_heads(out.o, ref.o, kForwardTolerance, "O");
    check_lse(out.lse, ref.lse);
    const Tensor d_o = tensor_random(shape, seed + 3);
    const AttentionGrads g = attention_backward(q, k, v, out.o, out.lse, d_o, set, layer, options);
    const ReferenceGrads want = reference_backward(q, k, v, d_o, set, layer, ref_options);
    check_heads(g.dq, want.dq, kGradTolerance, "dQ", kGradFloor);
    check_heads(g.dk, want.dk, kGradTolerance, "dK", kGradFloor);
    check_heads(g.dv, want.dv, kGradTolerance, "dV", kGradFloor);
}

// The sequence length each example is checked at: long enough for its structure to show (the
// document boundaries at 700, 1900, 3000; the 64 x 64 grids; the 1024 window), else 520, which
// no block size divides.
int64_t example_n(const std::string& name) {
    static const std::map<std::string, int64_t> special = {
        {"axial.pat", 4096}, {"image_window2d.pat", 4096}, {"document_masking.pat", 3100}, {"streaming.pat", 1300}};
    const auto it = special.find(name);
    return it == special.end() ? 520 : it->second;
}

} // namespace

TEST_CASE("forward and backward vs reference: every examples/patterns/*.pat, every distinct layer, script's B and B = 16, d = 16", "[cpu]") {
    std::vector<std::filesystem::path> scripts;
    for (const auto& e : std::filesystem::directory_iterator(std::string(SPARSA_SOURCE_DIR) + "/examples/patterns")) {
        if (e.path().extension() == ".pat") scripts.push_back(e.path());
    }
    std::sort(scripts.begin(), scripts.end());
    REQUIRE(scripts.size() >= 17);
    int64_t content_examples = 0;
    for (const auto& path : scripts) {
        const std::string name = path.filename().string();
        const dsl::ScriptPtr script = dsl::script_load(path.string());
        const int64_t n = example_n(name);
        dsl::CompileOptions with_content{n, 0, 0};
        with_content.content = true;
        if (!dsl::script_compile(*script, with_content).masks.content.empty()) {
            // lsh, anchors, favor: the content engines' tests (tests/engine/content/) and sparsa
            // run --check on each such example (tests/cli) check them; the block-sparse engine alone cannot
            ++content_examples;
            continue;
        }
        for (int32_t block : {0, 16}) {
            const dsl::Compiled c = dsl::script_compile(*script, {n, block, 0});
            const MaskSet& set = c.masks;
            // A layer whose masks are all shared with an earlier checked layer computes the same
            // thing: check each distinct layer once.
            std::set<std::vector<const BlockMask*>> seen;
            int64_t checked = 0;
            for (int64_t l = 0; l < set.layers; ++l) {
                std::vector<const BlockMask*> layer_masks;
                for (int64_t h = 0; h < set.heads; ++h) layer_masks.push_back(&set.at(l, h));
                if (!seen.insert(layer_masks).second) continue;
                INFO(name << ": n " << n << ", B " << set.block << ", layer " << l << " of " << set.layers << ", "
                          << set.heads << " heads");
                check_case({1, set.heads, n, 16}, set, l, 100 + static_cast<uint64_t>(l));
                ++checked;
            }
            CHECK(checked >= 1);
        }
    }
    CHECK(static_cast<size_t>(content_examples) + 17 <= scripts.size());  // the 17 fixed examples all ran
}

TEST_CASE("forward and backward vs reference: random masks, n in {1, 15, 64, 100, 333}, B in {16, 32, 64, 128}, d in {16, 64}, batch 2, heads 2", "[cpu]") {
    for (int64_t n : {1, 15, 64, 100, 333}) {
        for (int32_t block : {16, 32, 64, 128}) {
            for (int64_t d : {16, 64}) {
                INFO("n " << n << ", B " << block << ", d " << d);
                const MaskSet set = set_of({testing::mask_random(n, block, 7 * n + block),
                                            testing::mask_random(n, block, 7 * n + block + 1)});
                check_case({2, 2, n, d}, set, 0, static_cast<uint64_t>(n + d));
            }
        }
    }
}

TEST_CASE("forward and backward vs reference: causal, n = 300 (short last block), B = 64, d in {16, 64, 128, 256}", "[cpu]") {
    const MaskSet set = set_of({mask_causal(300, 64)});
    for (int64_t d : {16, 64, 128, 256}) {
        INFO("d " << d);
        check_case({1, 1, 300, d}, set, 0, static_cast<uint64_t>(d));
    }
}

TEST_CASE("forward and backward vs reference: batch 3, heads 4 with different masks (dense, causal, random, empty), n = 150, B = 32, d = 64", "[cpu]") {
    const MaskSet set = set_of({mask_dense(150, 32), mask_causal(150, 32), testing::mask_random(150, 32, 9),
                                block_mask_empty(150, 32)});
    check_case({3, 4, 150, 64}, set, 0, 42);
}

TEST_CASE("forward and backward vs reference: scale 4 / sqrt(d) (a peaked softmax), n = 200, B in {16, 64}, d in {16, 64, 128, 256}", "[cpu]") {
    // Scores of standard deviation 4: rows are dominated by a few keys, and the running max moves
    // often, which exercises the online softmax's rescaling. (Larger scores lose float32
    // precision in S itself, about |S| * 6e-8, whatever the kernel does.)
    for (int32_t block : {16, 64}) {
        const MaskSet set = set_of({testing::mask_random(200, block, 3), mask_dense(200, block)});
        for (int64_t d : {16, 64, 128, 256}) {
            INFO("B " << block << ", d " << d);
            check_case({1, 2, 200, d}, set, 0, 5, static_cast<float>(4 / std::sqrt(double(d))));
        }
    }
}

TEST_CASE("backward vs central differences of the double reference: random masks, n = 37, B = 16, d = 16, batch 2", "[cpu]") {
    const int64_t n = 37, d = 16;
    const TensorShape shape{2, 2, n, d};
    const MaskSet set = set_of({testing::mask_random(n, 16, 77), testing::mask_random(n, 16, 78)});
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
    const Tensor d_o = tensor_random(shape, 4);
    const AttentionOutput out = attention_forward(q, k, v, set, 0);
    const AttentionGrads g = attention_backward(q, k, v, out.o, out.lse, d_o, set, 0);
    TensorD x[3] = {tensor_cast<double>(q), tensor_cast<double>(k), tensor_cast<double>(v)};
    const TensorD d_o64 = tensor_cast<double>(d_o);
    auto loss = [&] {
        const ReferenceOutput r = reference_forward(x[0], x[1], x[2], set, 0);
        double sum = 0;
        for (size_t e = 0; e < r.o.data.size(); ++e) sum += r.o.data[e] * d_o64.data[e];
        return sum;
    };
    const Tensor* grads[3] = {&g.dq, &g.dk, &g.dv};
    const char* names[3] = {"dQ", "dK", "dV"};
    for (int t = 0; t < 3; ++t) {
        TensorD numeric = tensor_zeros<double>(shape);
        for (size_t e = 0; e < numeric.data.size(); ++e) {
            const double keep = x[t].data[e], h = 1e-5;
            x[t].data[e] = keep + h;
            const double up = loss();
            x[t].data[e] = keep - h;
            const double down = loss();
            x[t].data[e] = keep;
            numeric.data[e] = (up - down) / (2 * h);
        }
        check_heads(*grads[t], numeric, kGradTolerance, names[t], kGradFloor);
    }
}

TEST_CASE("rows with no kept key give zeros, lse = -inf and zero gradients (never NaN), B in {16, 64}", "[cpu]") {
    // Head 0: query rows 0..39 keep nothing, the rest keep keys 0..29 (keys 30.. get no gradient).
    // Head 1: the empty mask.
    const int64_t n = 100;
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 0);
    for (int64_t q = 40; q < n; ++q) {
        for (int64_t key = 0; key < 30; ++key) dense[static_cast<size_t>(q * n + key)] = 1;
    }
    for (int32_t block : {16, 64}) {
        INFO("B " << block);
        const MaskSet set = set_of({block_mask_from_dense(n, block, dense.data()), block_mask_empty(n, block)});
        const TensorShape shape{2, 2, n, 16};
        const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
        const AttentionOutput out = attention_forward(q, k, v, set, 0);
        const AttentionGrads g = attention_backward(q, k, v, out.o, out.lse, tensor_random(shape, 4), set, 0);
        for (int64_t b = 0; b < 2; ++b) {
            for (int64_t h = 0; h < 2; ++h) {
                for (int64_t i = 0; i < n; ++i) {
                    const bool empty_row = h == 1 || i < 40, unused_key = h == 1 || i >= 30;
                    REQUIRE((out.lse.at(b, h, i, 0) == -INFINITY) == empty_row);
                    for (int64_t j = 0; j < 16; ++j) {
                        REQUIRE(std::isfinite(out.o.at(b, h, i, j)));
                        REQUIRE(std::isfinite(g.dq.at(b, h, i, j)));
                        if (empty_row) REQUIRE(out.o.at(b, h, i, j) == 0.0f);
                        if (empty_row) REQUIRE(g.dq.at(b, h, i, j) == 0.0f);
                        if (unused_key) REQUIRE(g.dk.at(b, h, i, j) == 0.0f);
                        if (unused_key) REQUIRE(g.dv.at(b, h, i, j) == 0.0f);
                    }
                }
            }
        }
        check_case(shape, set, 0, 11);
    }
}

TEST_CASE("results are identical for thread counts 1 and 3: forward and backward, batch 2, heads 3, n = 333, B = 32, d = 64", "[cpu]") {
    const TensorShape shape{2, 3, 333, 64};
    const MaskSet set = set_of({testing::mask_random(333, 32, 1), mask_causal(333, 32), mask_dense(333, 32)});
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
    const Tensor d_o = tensor_random(shape, 4);
    AttentionOptions one, three;
    one.threads = 1;
    three.threads = 3;
    const AttentionOutput a = attention_forward(q, k, v, set, 0, one), b = attention_forward(q, k, v, set, 0, three);
    CHECK(a.o.data == b.o.data);
    CHECK(a.lse.data == b.lse.data);
    const AttentionGrads ga = attention_backward(q, k, v, a.o, a.lse, d_o, set, 0, one);
    const AttentionGrads gb = attention_backward(q, k, v, a.o, a.lse, d_o, set, 0, three);
    CHECK(ga.dq.data == gb.dq.data);
    CHECK(ga.dk.data == gb.dk.data);
    CHECK(ga.dv.data == gb.dv.data);
}

TEST_CASE("bad input: shapes, masks, layer, NaN / Inf name the tensor and the index", "[cpu]") {
    const TensorShape shape{1, 2, 40, 16};
    const MaskSet set = set_of({testing::mask_random(40, 16, 1), testing::mask_random(40, 16, 2)});
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);

    SECTION("K of another shape") {
        const Tensor k2 = tensor_random({1, 2, 41, 16}, 2);
        CHECK_THROWS_WITH(attention_forward(q, k2, v, set, 0), Contains("K is [1, 2, 41, 16]"));
    }
    SECTION("masks for another n") {
        const MaskSet other = set_of({testing::mask_random(48, 16, 1), testing::mask_random(48, 16, 2)});
        CHECK_THROWS_WITH(attention_forward(q, k, v, other, 0), Contains("compiled for n = 48") && Contains("--n 40"));
    }
    SECTION("layer out of range") {
        CHECK_THROWS_WITH(attention_forward(q, k, v, set, 1), Contains("layer 1 is out of range"));
        CHECK_THROWS_WITH(attention_forward(q, k, v, set, -1), Contains("layer -1 is out of range"));
    }
    SECTION("head count differs") {
        const MaskSet three = set_of({testing::mask_random(40, 16, 1), testing::mask_random(40, 16, 2),
                                      testing::mask_random(40, 16, 3)});
        CHECK_THROWS_WITH(attention_forward(q, k, v, three, 0), Contains("3 heads per layer but the tensors have 2"));
    }
    SECTION("d above 256") {
        const Tensor big = tensor_random({1, 2, 40, 257}, 1);
        CHECK_THROWS_WITH(attention_forward(big, big, big, set, 0), Contains("d = 257 is above 256"));
    }
    SECTION("NaN in K, Inf in V, Inf in Q") {
        Tensor bad = k;
        bad.at(0, 1, 5, 3) = NAN;
        CHECK_THROWS_WITH(attention_forward(q, bad, v, set, 0), Contains("K has NaN at [0, 1, 5, 3]"));
        bad = v;
        bad.at(0, 0, 39, 15) = -INFINITY;
        CHECK_THROWS_WITH(attention_forward(q, k, bad, set, 0), Contains("V has Inf at [0, 0, 39, 15]"));
        bad = q;
        bad.at(0, 1, 0, 0) = INFINITY;
        CHECK_THROWS_WITH(attention_forward(bad, k, v, set, 0), Contains("Q has Inf at [0, 1, 0, 0]"));
    }
    SECTION("backward: dO of another shape, NaN in dO, lse = +inf or of another shape") {
        const AttentionOutput out = attention_forward(q, k, v, set, 0);
        const Tensor short_do = tensor_random({1, 2, 40, 8}, 4);
        CHECK_THROWS_WITH(attention_backward(q, k, v, out.o, out.lse, short_do, set, 0), Contains("dO is [1, 2, 40, 8]"));
        Tensor d_o = tensor_random(shape, 4);
        d_o.at(0, 0, 7, 2) = NAN;
        CHECK_THROWS_WITH(attention_backward(q, k, v, out.o, out.lse, d_o, set, 0), Contains("dO has NaN at [0, 0, 7, 2]"));
        Tensor lse = out.lse;
        lse.data[3] = INFINITY;
        CHECK_THROWS_WITH(attention_backward(q, k, v, out.o, lse, tensor_random(shape, 4), set, 0), Contains("lse[3]"));
        CHECK_THROWS_WITH(attention_backward(q, k, v, out.o, out.o, tensor_random(shape, 4), set, 0),
                          Contains("lse is [1, 2, 40, 16]"));
    }
}

// [SECTION] numbers float32 cannot hold, and arguments that are not numbers

namespace {

// x times c, element by element.
Tensor tensor_times(Tensor x, double c) {
    for (float& e : x.data) e = static_cast<float>(e * c);
    return x;
}

// The largest |scale| |q_i| |k_j| of any head: the bound attention_check_score_range tests.
double score_bound(const Tensor& q, const Tensor& k, double scale) {
    const TensorD qn = tensor_row_norms(q), kn = tensor_row_norms(k);
    double worst = 0;
    for (int64_t b = 0; b < q.shape.batch; ++b) {
        for (int64_t h = 0; h < q.shape.heads; ++h) {
            double q_max = 0, k_max = 0;
            for (int64_t i = 0; i < q.shape.n; ++i) {
                q_max = std::max(q_max, qn.at(b, h, i, 0));
                k_max = std::max(k_max, kn.at(b, h, i, 0));
            }
            worst = std::max(worst, std::abs(scale) * q_max * k_max);
        }
    }
    return worst;
}

} // namespace

TEST_CASE("scores near float32's limit: a bound of 0.9 * FLT_MAX / 4 is taken and matches the reference, 1.1 * is refused", "[cpu][range]") {
    // Q = K, scaled so that the largest |scale| |q_i| |k_j| is `fraction` of kMaxScore: each row's
    // own key scores highest by far, so the softmax is one-hot and lse = scale |q_i|^2.
    const TensorShape shape{1, 2, 100, 64};
    const MaskSet set = set_of({mask_dense(100, 32), testing::mask_random(100, 32, 5)});
    const Tensor base = tensor_random(shape, 1), v = tensor_random(shape, 3), d_o = tensor_random(shape, 4);
    const double scale = attention_default_scale(64);
    for (double fraction : {0.9, 0.5, 1e-10}) {
        INFO("bound " << fraction << " * kMaxScore");
        const Tensor q = tensor_times(base, std::sqrt(fraction * kMaxScore / score_bound(base, base, scale)));
        REQUIRE(score_bound(q, q, scale) <= kMaxScore);
        const AttentionOutput out = attention_forward(q, q, v, set, 0);
        const ReferenceOutput ref = reference_forward(q, q, v, set, 0);
        check_heads(out.o, ref.o, kForwardTolerance, "O");
        check_lse(out.lse, ref.lse);
        // The backward takes the forward's lse at these scores too; dV = P^T dO is well conditioned.
        const AttentionGrads g = attention_backward(q, q, v, out.o, out.lse, d_o, set, 0);
        check_heads(g.dv, reference_backward(q, q, v, d_o, set, 0).dv, kGradTolerance, "dV", kGradFloor);
    }
    const Tensor over = tensor_times(base, std::sqrt(1.1 * kMaxScore / score_bound(base, base, scale)));
    const AttentionOutput small = attention_forward(base, base, v, set, 0);
    CHECK_THROWS_WITH(attention_forward(over, over, v, set, 0),
                      Contains("attention_forward: Q row [0, ") && Contains("and K row [0, ") &&
                          Contains("overflow float32") && Contains("scale Q or K down, or lower `scale`"));
    CHECK_THROWS_WITH(attention_backward(over, over, v, small.o, small.lse, d_o, set, 0),
                      Contains("attention_backward: Q row") && Contains("overflow float32"));
}

namespace {

// The largest row norm of x over all heads.
double max_row_norm(const Tensor& x) {
    const TensorD norms = tensor_row_norms(x);
    return *std::max_element(norms.data.begin(), norms.data.end());
}

} // namespace

TEST_CASE("backward at scores of ~1e30 (one-hot rows) matches the reference: runs of blocks, partial blocks, runs split at 512 keys; (B, d) in {(16, 64), (64, 40), (256, 100)}", "[cpu][range]") {
    // At |S| ~ 1e30 one rounding step of S is ~1e23, so P = exp(S - lse) is 1 at a row's largest
    // score only if the backward recomputes that score bit for bit as the forward did, although
    // the forward computes S over runs of up to 512 keys and the backward one block at a time, in
    // the dQ pass and in the dK, dV pass (a score one step off gives P = 0 or 5e34). The rows are
    // one-hot: dV gathers dO by each row's argmax, O is V's argmax row, and dQ, dK are 0 up to the
    // rounding of dP - D, so they are measured against their natural size (|dS| <= |dO| |v| per
    // row): |scale| max|k| max|dO| max|v| for dQ, the same with max|q| for dK.
    const int64_t n = 600;   // a short last block for every B
    std::vector<uint8_t> band(static_cast<size_t>(n * n), 0);
    for (int64_t q = 0; q < n; ++q) {
        for (int64_t key = std::max<int64_t>(0, q - 150); key < std::min(n, q + 61); ++key) band[static_cast<size_t>(q * n + key)] = 1;
    }
    for (auto [block, d] : {std::pair<int32_t, int64_t>{16, 64}, {64, 40}, {256, 100}}) {
        INFO("B " << block << ", d " << d);
        // band: runs of several blocks, partial at both ends; dense: a run of 512 keys, then the
        // rest (B = 16); random: runs broken anywhere, every kind of partial block.
        const MaskSet set = set_of({block_mask_from_dense(n, block, band.data()), mask_dense(n, block),
                                    testing::mask_random(n, block, 31)});
        const TensorShape shape{1, 3, n, d};
        const double scale = attention_default_scale(d);
        const Tensor q0 = tensor_random(shape, 11), k0 = tensor_random(shape, 12);
        const double c = std::sqrt(1e31 / score_bound(q0, k0, scale));   // scores up to ~1e31
        const Tensor q = tensor_times(q0, c), k = tensor_times(k0, c), v = tensor_random(shape, 13);
        const Tensor d_o = tensor_random(shape, 14);
        const AttentionOutput out = attention_forward(q, k, v, set, 0);
        const ReferenceOutput ref = reference_forward(q, k, v, set, 0);
        check_heads(out.o, ref.o, kForwardTolerance, "O");
        check_lse(out.lse, ref.lse);
        const AttentionGrads g = attention_backward(q, k, v, out.o, out.lse, d_o, set, 0);
        const ReferenceGrads want = reference_backward(q, k, v, d_o, set, 0);
        const double dq_size = scale * max_row_norm(k) * max_row_norm(d_o) * max_row_norm(v);
        const double dk_size = scale * max_row_norm(q) * max_row_norm(d_o) * max_row_norm(v);
        check_heads(g.dv, want.dv, kGradTolerance, "dV", kGradFloor);
        check_heads(g.dq, want.dq, kGradTolerance, "dQ", dq_size);
        check_heads(g.dk, want.dk, kGradTolerance, "dK", dk_size);
    }
}

TEST_CASE("the issue's inputs: Q = K = 1e20 and Q = K = 3e38 are refused, saying why; the reference gets them right", "[cpu][range]") {
    const int64_t n = 50;
    const TensorShape shape{1, 1, n, 64};
    const MaskSet set = set_of({mask_dense(n, 16)});
    const Tensor v = tensor_random(shape, 3);
    // Every score equal: O is the mean of V's rows and lse = scale * d * x^2 + log(n).
    std::vector<double> mean(64, 0.0);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < 64; ++j) mean[static_cast<size_t>(j)] += v.at(0, 0, i, j) / static_cast<double>(n);
    }
    for (float x : {1e20f, 3e38f}) {
        INFO("Q = K = " << x);
        Tensor q = tensor_zeros<float>(shape);
        std::fill(q.data.begin(), q.data.end(), x);
        CHECK_THROWS_WITH(attention_forward(q, q, v, set, 0),
                          Contains("Q row [0, 0, 0] and K row [0, 0, 0] have norms") && Contains("scores up to") &&
                              Contains("overflow float32") && Contains("scale Q or K down"));
        const ReferenceOutput ref = reference_forward(q, q, v, set, 0);
        const double lse = 64.0 * static_cast<double>(x) * static_cast<double>(x) / 8.0 + std::log(static_cast<double>(n));
        CHECK(std::abs(ref.lse.at(0, 0, 7, 0) - lse) <= 1e-12 * lse);
        for (int64_t j = 0; j < 64; ++j) CHECK(std::abs(ref.o.at(0, 0, 7, j) - mean[static_cast<size_t>(j)]) <= 1e-12);
    }
}

TEST_CASE("scale * Q beyond float32 is refused even when the scores fit (K tiny)", "[cpu][range]") {
    const TensorShape shape{1, 1, 20, 16};
    const MaskSet set = set_of({mask_dense(20, 16)});
    const Tensor q = tensor_times(tensor_random(shape, 1), 1e30), k = tensor_times(tensor_random(shape, 2), 1e-30);
    AttentionOptions options;
    options.scale = 1e10f;
    CHECK_THROWS_WITH(attention_forward(q, k, q, set, 0, options),
                      Contains("has norm") && Contains("times scale 1e+10 it overflows float32"));
}

TEST_CASE("O and the gradients that overflow float32 (V and dO near FLT_MAX) are refused, not returned as Inf", "[cpu][range]") {
    const int64_t n = 40;
    const TensorShape shape{1, 1, n, 16};
    const MaskSet set = set_of({mask_dense(n, 16)});
    const Tensor zero = tensor_zeros<float>(shape);
    Tensor big = tensor_zeros<float>(shape);
    std::fill(big.data.begin(), big.data.end(), 3e38f);
    // Q = K = 0: P = 1 for each of the 40 keys, so sum P V = 40 * 3e38 leaves float32; O is 3e38
    CHECK_THROWS_WITH(attention_forward(zero, zero, big, set, 0),
                      Contains("O at [0, 0, 0, 0] overflows float32") && Contains("scale V down"));
    CHECK(reference_forward(zero, zero, big, set, 0).o.at(0, 0, 3, 5) == Approx(3e38).epsilon(1e-6));
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
    const AttentionOutput out = attention_forward(q, k, v, set, 0);
    CHECK_THROWS_WITH(attention_backward(q, k, big, out.o, out.lse, big, set, 0),
                      Contains("attention_backward: d") && Contains("overflows float32") && Contains("scale dO down"));
}

TEST_CASE("scale NaN or infinite and negative thread counts are refused; a negative scale is taken and matches the reference", "[cpu][range]") {
    const TensorShape shape{1, 2, 40, 16};
    const MaskSet set = set_of({testing::mask_random(40, 16, 1), testing::mask_random(40, 16, 2)});
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
    const Tensor d_o = tensor_random(shape, 4);
    const AttentionOutput out = attention_forward(q, k, v, set, 0);
    for (float bad : {NAN, INFINITY, -INFINITY}) {
        AttentionOptions options;
        options.scale = bad;
        const std::string said = std::string("scale is ") + (std::isnan(bad) ? "nan" : bad > 0 ? "inf" : "-inf");
        CHECK_THROWS_WITH(attention_forward(q, k, v, set, 0, options),
                          Contains("attention_forward: " + said) && Contains("give a finite softmax scale"));
        CHECK_THROWS_WITH(attention_backward(q, k, v, out.o, out.lse, d_o, set, 0, options),
                          Contains("attention_backward: " + said));
    }
    AttentionOptions options;
    options.threads = -1;
    CHECK_THROWS_WITH(attention_forward(q, k, v, set, 0, options),
                      Contains("attention_forward: threads is -1") && Contains("give a positive thread count, or 0"));
    CHECK_THROWS_WITH(attention_backward(q, k, v, out.o, out.lse, d_o, set, 0, options),
                      Contains("attention_backward: threads is -1"));
    check_case(shape, set, 0, 21, -0.3f);   // negative: the softmax favours the smallest q.k
}

TEST_CASE("backward: an lse that is not the forward's is refused, naming the row, the given and the exact lse", "[cpu][range]") {
    // Head 0 random, head 1 with empty rows (queries 0..19 keep nothing).
    const int64_t n = 70;
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 0);
    for (int64_t q = 20; q < n; ++q) {
        for (int64_t key = 0; key <= q; ++key) dense[static_cast<size_t>(q * n + key)] = 1;
    }
    const TensorShape shape{2, 2, n, 32};
    const MaskSet set = set_of({testing::mask_random(n, 16, 3), block_mask_from_dense(n, 16, dense.data())});
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
    const Tensor d_o = tensor_random(shape, 4);
    const AttentionOutput out = attention_forward(q, k, v, set, 0);
    const ReferenceOutput ref = reference_forward(q, k, v, set, 0);
    const AttentionGrads good = attention_backward(q, k, v, out.o, out.lse, d_o, set, 0);   // the forward's: taken
    CHECK(std::all_of(good.dq.data.begin(), good.dq.data.end(), [](float x) { return std::isfinite(x); }));

    auto refused_at = [&](const Tensor& lse, int64_t b, int64_t h, int64_t i) {
        char exact[32];
        std::snprintf(exact, sizeof exact, "%.7g", ref.lse.at(b, h, i, 0));
        const std::string row = "[" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(i) + "]";
        CHECK_THROWS_WITH(attention_backward(q, k, v, out.o, lse, d_o, set, 0),
                          Contains("attention_backward: lse does not match Q, K, the scale and the mask at row " + row) &&
                              Contains("recomputed " + std::string(exact)) && Contains("pass the lse the forward returned"));
    };
    for (float shift : {100.0f, -100.0f, 0.01f, -0.01f}) {   // every row shifted
        INFO("lse + " << shift);
        Tensor lse = out.lse;
        for (float& x : lse.data) x += shift;
        int64_t b0 = 0, h0 = 0, i0 = 0;   // the first row that keeps a key
        while (ref.lse.at(b0, h0, i0, 0) == -INFINITY) ++i0;
        refused_at(lse, b0, h0, i0);
    }
    int64_t i1 = 33;   // one row that keeps a key
    while (ref.lse.at(1, 0, i1, 0) == -INFINITY) ++i1;
    Tensor lse = out.lse;
    lse.at(1, 0, i1, 0) += 0.05f;
    refused_at(lse, 1, 0, i1);
    lse = out.lse;
    lse.at(0, 1, 40, 0) = -INFINITY;   // -inf for a row that keeps keys
    refused_at(lse, 0, 1, 40);
    lse = out.lse;
    REQUIRE(lse.at(1, 1, 5, 0) == -INFINITY);
    lse.at(1, 1, 5, 0) = 2.0f;   // a finite lse for a row that keeps none: recomputed -inf
    refused_at(lse, 1, 1, 5);
    // Scores of about 1e6 (Q and K times 300): float32 rounds a score by about 0.06, so an lse 0.5
    // off is within what it could be; P then sums to exp(-0.5), and the message says why.
    const Tensor q_big = tensor_times(q, 300), k_big = tensor_times(k, 300);
    Tensor lse_big = attention_forward(q_big, k_big, v, set, 0).lse;
    int64_t i2 = 0;
    while (lse_big.at(0, 0, i2, 0) == -INFINITY) ++i2;
    lse_big.at(0, 0, i2, 0) += 0.5f;
    CHECK_THROWS_WITH(attention_backward(q_big, k_big, v, out.o, lse_big, d_o, set, 0),
                      Contains("at row [0, 0, " + std::to_string(i2) + "] the scores, up to") &&
                          Contains("are too large for float32: P = exp(S - lse) recomputed in float32 sums to 0.606") &&
                          Contains("scale Q or K down, or lower `scale`"));
    AttentionOptions other_scale;   // the forward's lse with another scale
    other_scale.scale = 0.5f;
    CHECK_THROWS_WITH(attention_backward(q, k, v, out.o, out.lse, d_o, set, 0, other_scale), Contains("lse does not match"));
}

// [SECTION] speed (hidden: run with `test_cpu_engine "[.perf]"`)

namespace {

// CPU seconds of this process: on a shared machine, steadier than the wall clock for one thread.
double cpu_seconds() {
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

double median(std::vector<double> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
}

} // namespace

TEST_CASE("perf: forward and backward, window(256), n = 16384, d = 64, B = 64, 1 thread: median of 9", "[.perf]") {
    const int64_t n = 16384, d = 64;
    const MaskSet set = set_of({dsl::pattern_compile(*dsl::pattern_window(256, 256), n, 64)});
    const TensorShape shape{1, 1, n, d};
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
    const Tensor d_o = tensor_random(shape, 4);
    AttentionOptions options;
    options.threads = 1;
    std::vector<double> forward, backward, forward_cpu, backward_cpu;
    for (int run = 0; run < 9; ++run) {
        const auto t0 = std::chrono::steady_clock::now();
        const double c0 = cpu_seconds();
        const AttentionOutput out = attention_forward(q, k, v, set, 0, options);
        const auto t1 = std::chrono::steady_clock::now();
        const double c1 = cpu_seconds();
        const AttentionGrads g = attention_backward(q, k, v, out.o, out.lse, d_o, set, 0, options);
        const auto t2 = std::chrono::steady_clock::now();
        const double c2 = cpu_seconds();
        forward.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        backward.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
        forward_cpu.push_back(1e3 * (c1 - c0));
        backward_cpu.push_back(1e3 * (c2 - c1));
        CHECK(std::isfinite(g.dq.data[0]));
    }
    std::printf("window(256), n = %lld, d = %lld, B = 64, 1 thread, median of 9: forward %.1f ms (CPU %.1f ms), "
                "backward %.1f ms (CPU %.1f ms)\n",
                static_cast<long long>(n), static_cast<long long>(d), median(forward), median(forward_cpu),
                median(backward), median(backward_cpu));
}
