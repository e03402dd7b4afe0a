// layer_attention: a layer mixing fixed, lsh, anchors-free and favor heads, split by head and put
// back. The pair heads against the double reference over their allowed sets (forward and
// backward), the favor heads against favor_forward / favor_backward run on the whole layer with
// features drawn for the head's own (layer, head) (so no head is renumbered), a layer without
// content against attention_forward bit for bit, the reports, thread counts, and bad input.
#include "engine/content/favor.hpp"
#include "engine/content/layer_attention.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/error.hpp"
#include "tests/engine/content/content_testing.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <vector>

using namespace sparsa;
using namespace sparsa::testing;
using Catch::Matchers::Contains;

namespace {

std::shared_ptr<ContentSpec> favor_spec(int64_t features, bool causal, uint64_t seed) {
    auto s = std::make_shared<ContentSpec>();
    s->kind = ContentKind::favor;
    s->features = features;
    s->causal = causal;
    s->seed = seed;
    return s;
}

// Head 0: a band alone; head 1: lsh(8, 2 rounds, chunk 32); head 2: favor(48); head 3: a causal
// band | causal lsh(6); head 4: causal favor(32). n = 150 is not a multiple of the chunk.
MaskSet mixed_set(int64_t n, int32_t block) {
    const BlockMask empty = block_mask_empty(n, block);
    return set_with_content({mask_band(n, block, 5, false), empty, empty, mask_band(n, block, 3, true), empty},
                            {nullptr, spec_make(ContentKind::lsh, 8, 2, 32, false, 7),
                             favor_spec(48, false, 3), spec_make(ContentKind::lsh, 6, 1, 20, true, 9),
                             favor_spec(32, true, 4)});
}

double max_abs_diff(const Tensor& a, const Tensor& b, int64_t batch, int64_t h) {
    double err = 0;
    for (int64_t i = 0; i < a.shape.n; ++i) {
        for (int64_t j = 0; j < a.shape.d; ++j) err = std::max(err, std::abs(double{a.at(batch, h, i, j)} - b.at(batch, h, i, j)));
    }
    return err;
}

} // namespace

TEST_CASE("layer_attention: a mixed layer's pair heads match the reference over A, forward and backward", "[content][layer]") {
    const int64_t n = 150, d = 16;
    const TensorShape s{2, 5, n, d};
    const MaskSet set = mixed_set(n, 16);
    const Tensor q = tensor_random(s, 1), k = tensor_random(s, 2), v = tensor_random(s, 3), d_o = tensor_random(s, 4);
    const LayerForward out = layer_attention_forward(q, k, v, set, 0);
    const LayerGrads g = layer_attention_backward(q, k, v, out.o, out.lse, d_o, set, 0);
    for (int64_t b = 0; b < s.batch; ++b) {
        const MaskSet a = layer_reference_masks(q, k, set, 0, b);
        const Tensor qb = batch_slice(q, b), kb = batch_slice(k, b), vb = batch_slice(v, b), dob = batch_slice(d_o, b);
        const ReferenceOutput ref = reference_forward(qb, kb, vb, a, 0);
        const ReferenceGrads want = reference_backward(qb, kb, vb, dob, a, 0);
        for (int64_t h : {0, 1, 3}) {
            INFO("batch " << b << ", head " << h);
            const auto [o_err, o_size] = head_error(out.o, b, ref.o, h);
            CHECK(o_err <= kForwardTolerance * o_size);
            for (int64_t i = 0; i < n; ++i) {
                const double got = out.lse.at(b, h, i, 0), want_lse = ref.lse.at(0, h, i, 0);
                if (std::isinf(want_lse)) REQUIRE(got == want_lse);
                else REQUIRE(std::abs(got - want_lse) <= kForwardTolerance * std::max(1.0, std::abs(want_lse)));
            }
            const std::pair<const Tensor*, const TensorD*> grads[] = {{&g.dq, &want.dq}, {&g.dk, &want.dk}, {&g.dv, &want.dv}};
            for (const auto& [got, exact] : grads) {
                const auto [err, size] = head_error(*got, b, *exact, h);
                CHECK(err <= kGradTolerance * std::max(size, kGradFloor));
            }
        }
        // The favor heads' lse is NaN: FAVOR+ has no normaliser to give.
        for (int64_t h : {2, 4}) CHECK(std::isnan(out.lse.at(b, h, 0, 0)));
    }
    // The lsh heads' pairs are those of A, and the band head's those of its mask.
    REQUIRE(out.reports.size() == 10);
    for (const LayerHeadReport& r : out.reports) {
        INFO("batch " << r.batch << ", head " << r.head);
        const MaskSet a = layer_reference_masks(q, k, set, 0, r.batch);
        if (r.kind == LayerHeadKind::favor) {
            CHECK(r.features == (r.head == 2 ? 48 : 32));
            CHECK(r.favor.rows == n);
        } else {
            CHECK(r.pairs.pairs == block_mask_stats(a.at(0, r.head)).kept_pairs);
        }
    }
    CHECK(out.reports[1].kind == LayerHeadKind::lsh);
    CHECK(out.reports[5 + 4].kind == LayerHeadKind::favor);
    CHECK(out.reports[5 + 4].batch == 1);
    CHECK(out.reports[0].kind == LayerHeadKind::fixed);
}

TEST_CASE("layer_attention: favor heads are FAVOR+ with their own (layer, head)'s features, forward and backward",
          "[content][layer][favor]") {
    const int64_t n = 150, d = 16;
    const TensorShape s{2, 5, n, d};
    const MaskSet set = mixed_set(n, 16);
    Tensor q = tensor_random(s, 11), k = tensor_random(s, 12);
    for (float& x : q.data) x *= 0.5f;   // norms where FAVOR+ is not all noise
    for (float& x : k.data) x *= 0.5f;
    const Tensor v = tensor_random(s, 13), d_o = tensor_random(s, 14);
    const LayerForward out = layer_attention_forward(q, k, v, set, 0);
    const LayerGrads g = layer_attention_backward(q, k, v, out.o, out.lse, d_o, set, 0);
    for (int64_t h : {2, 4}) {
        const ContentSpec& spec = *set.content[static_cast<size_t>(h)];
        // Every head gets its features; only head h's are used (heads are independent in favor_forward).
        std::vector<FavorFeatures> features;
        for (int64_t x = 0; x < s.heads; ++x) features.push_back(favor_features_draw(spec.seed, 0, h, 0, spec.features, d));
        FavorOptions fo;
        fo.causal = spec.causal;
        const FavorOutput want = favor_forward(q, k, v, features, fo);
        const FavorGrads want_g = favor_backward(q, k, v, d_o, features, fo);
        for (int64_t b = 0; b < s.batch; ++b) {
            INFO("batch " << b << ", head " << h);
            CHECK(max_abs_diff(out.o, want.o, b, h) <= 1e-6);
            CHECK(max_abs_diff(g.dq, want_g.dq, b, h) <= 1e-5);
            CHECK(max_abs_diff(g.dk, want_g.dk, b, h) <= 1e-5);
            CHECK(max_abs_diff(g.dv, want_g.dv, b, h) <= 1e-5);
        }
        // Features of another head give another O: the head index was kept.
        std::vector<FavorFeatures> other(static_cast<size_t>(s.heads), favor_features_draw(spec.seed, 0, h + 1, 0, spec.features, d));
        CHECK(max_abs_diff(out.o, favor_forward(q, k, v, other, fo).o, 0, h) > 1e-4);
    }
    REQUIRE(g.favor.size() == 4);   // 2 batches x 2 favor heads
    CHECK(g.favor[0].head == 2);
    CHECK(g.favor[3].batch == 1);
    CHECK(g.favor[3].head == 4);
}

TEST_CASE("layer_attention: a layer without content heads is attention_forward and attention_backward exactly",
          "[content][layer]") {
    const int64_t n = 100, d = 8;
    const TensorShape s{1, 2, n, d};
    const MaskSet set = set_with_content({mask_band(n, 16, 4, false), mask_band(n, 16, 9, true)}, {});
    const Tensor q = tensor_random(s, 21), k = tensor_random(s, 22), v = tensor_random(s, 23), d_o = tensor_random(s, 24);
    const LayerForward out = layer_attention_forward(q, k, v, set, 0);
    const AttentionOutput want = attention_forward(q, k, v, set, 0);
    CHECK(out.o.data == want.o.data);
    CHECK(out.lse.data == want.lse.data);
    const LayerGrads g = layer_attention_backward(q, k, v, out.o, out.lse, d_o, set, 0);
    const AttentionGrads want_g = attention_backward(q, k, v, want.o, want.lse, d_o, set, 0);
    CHECK(g.dq.data == want_g.dq.data);
    CHECK(g.dk.data == want_g.dk.data);
    CHECK(g.dv.data == want_g.dv.data);
    REQUIRE(out.reports.size() == 2);
    CHECK(out.reports[1].pairs.pairs == block_mask_stats(set.at(0, 1)).kept_pairs);
    CHECK(std::isnan(out.reports[1].pairs.recall_mean));
}

TEST_CASE("layer_attention: results and reports do not depend on the thread count; layer_report agrees", "[content][layer]") {
    const int64_t n = 150, d = 16;
    const TensorShape s{2, 5, n, d};
    const MaskSet set = mixed_set(n, 16);
    const Tensor q = tensor_random(s, 31), k = tensor_random(s, 32), v = tensor_random(s, 33);
    LayerOptions one, three;
    one.threads = 1;
    three.threads = 3;
    three.recall = true;
    const LayerForward a = layer_attention_forward(q, k, v, set, 0, one), b = layer_attention_forward(q, k, v, set, 0, three);
    CHECK(a.o.data == b.o.data);
    const std::vector<LayerHeadReport> reports = layer_report(q, k, set, 0, three);
    REQUIRE(reports.size() == b.reports.size());
    for (size_t i = 0; i < reports.size(); ++i) {
        INFO("report " << i);
        CHECK(reports[i].kind == b.reports[i].kind);
        CHECK(reports[i].pairs.pairs == a.reports[i].pairs.pairs);
        CHECK(reports[i].pairs.bucket_max == a.reports[i].pairs.bucket_max);
        CHECK(reports[i].favor.degraded_rows == b.reports[i].favor.degraded_rows);
        CHECK(reports[i].favor.predicted_error == b.reports[i].favor.predicted_error);
        if (reports[i].kind == LayerHeadKind::lsh) {
            // Recall was asked for: a share of the softmax's mass, not NaN.
            CHECK(reports[i].pairs.recall_mean > 0);
            CHECK(reports[i].pairs.recall_mean <= 1 + 1e-9);
            CHECK(reports[i].pairs.recall_min <= reports[i].pairs.recall_mean);
            CHECK(reports[i].pairs.recall_mean == b.reports[i].pairs.recall_mean);
            CHECK(std::isnan(a.reports[i].pairs.recall_mean));
        }
    }
}

TEST_CASE("layer_attention: bad input is refused naming what is wrong", "[content][layer]") {
    const int64_t n = 150, d = 16;
    const MaskSet set = mixed_set(n, 16);
    const Tensor q = tensor_random({1, 5, n, d}, 1);
    // Wrong head count.
    const Tensor q4 = tensor_random({1, 4, n, d}, 1);
    CHECK_THROWS_WITH(layer_attention_forward(q4, q4, q4, set, 0), Contains("heads"));
    // A features file the options do not hold.
    MaskSet with_file = set;
    auto spec = favor_spec(48, false, 3);
    spec->file = "/nowhere/features.npy";
    with_file.content[2] = spec;
    CHECK_THROWS_WITH(layer_attention_forward(q, q, q, with_file, 0), Contains("features.npy") && Contains("not loaded"));
    // Features of the wrong shape.
    ContentArrays arrays;
    arrays["/nowhere/features.npy"] = ContentArray{"/nowhere/features.npy", {48, 8}, std::vector<float>(48 * 8, 0.1f)};
    LayerOptions options;
    options.arrays = &arrays;
    CHECK_THROWS_WITH(layer_attention_forward(q, q, q, with_file, 0, options),
                      Contains("[48, 8]") && Contains("[48, 16]"));
    // A favor head has no pairs to list; a fixed head's are its mask's.
    CHECK_THROWS_WITH(layer_allowed_dense(q, q, set, 0, 0, 2), Contains("favor") && Contains("no allowed pairs"));
    const std::vector<uint8_t> band = layer_allowed_dense(q, q, set, 0, 0, 0);
    CHECK(block_mask_from_dense(n, 16, band.data()) == set.at(0, 0));
    // The reference masks stop at n = 8192.
    const MaskSet big = set_with_content({block_mask_empty(8200, 64)}, {spec_make(ContentKind::lsh, 8, 1, 64, false)});
    const Tensor qb = tensor_random({1, 1, 8200, 4}, 1);
    CHECK_THROWS_WITH(layer_reference_masks(qb, qb, big, 0, 0), Contains("8192"));
}
