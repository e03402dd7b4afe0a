// Helpers for the content-based engine tests: mask sets of fixed masks + content specs built by
// hand, batch slices, and the check of content_attention against the double-precision dense
// reference over content_allowed_dense's set (the tolerances of tests/engine/test_cpu_attention.cpp).
#pragma once

#include "engine/block_mask.hpp"
#include "engine/content/content_attention.hpp"
#include "engine/reference.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

namespace sparsa::testing {

constexpr double kForwardTolerance = 1e-5;
constexpr double kGradTolerance = 2e-5;
constexpr double kGradFloor = 1.0;

// A band |q - k| <= w (k <= q too when causal); w < 0: empty.
inline BlockMask mask_band(int64_t n, int32_t block, int64_t w, bool causal) {
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 0);
    for (int64_t q = 0; q < n && w >= 0; ++q) {
        for (int64_t k = std::max<int64_t>(0, q - w); k <= std::min(n - 1, causal ? q : q + w); ++k) {
            dense[static_cast<size_t>(q * n + k)] = 1;
        }
    }
    return block_mask_from_dense(n, block, dense.data());
}

// One layer; head h has fixed[h] and content[h] (nullptr: a plain head).
inline MaskSet set_with_content(const std::vector<BlockMask>& fixed, const std::vector<std::shared_ptr<ContentSpec>>& content) {
    std::vector<std::shared_ptr<const BlockMask>> ptrs;
    for (const BlockMask& m : fixed) ptrs.push_back(std::make_shared<BlockMask>(m));
    MaskSet set = mask_set_make(1, static_cast<int64_t>(fixed.size()), ptrs);
    for (const auto& c : content) set.content.push_back(c);
    return set;
}

inline std::shared_ptr<ContentSpec> spec_make(ContentKind kind, int64_t buckets, int64_t rounds, int64_t chunk,
                                              bool causal, uint64_t seed = 0, bool shared_qk = true,
                                              const std::string& file = "") {
    auto s = std::make_shared<ContentSpec>();
    s->kind = kind;
    s->buckets = buckets;
    s->rounds = rounds;
    s->chunk = chunk;
    s->causal = causal;
    s->seed = seed;
    s->shared_qk = shared_qk;
    s->file = file;
    return s;
}

// Batch b of x as a tensor of batch 1.
template <typename T> BasicTensor<T> batch_slice(const BasicTensor<T>& x, int64_t b) {
    TensorShape s = x.shape;
    s.batch = 1;
    BasicTensor<T> out = tensor_zeros<T>(s);
    std::copy(x.row(b, 0, 0), x.row(b, 0, 0) + s.size(), out.data.begin());
    return out;
}

// The set of batch b whose head h is content_allowed_dense's A (as a plain block mask).
inline MaskSet allowed_set(const Tensor& q, const Tensor& k, const MaskSet& masks, int64_t b,
                           const ContentOptions& options) {
    std::vector<std::shared_ptr<const BlockMask>> ptrs;
    for (int64_t h = 0; h < q.shape.heads; ++h) {
        const std::vector<uint8_t> dense = content_allowed_dense(q, k, masks, 0, b, h, options);
        ptrs.push_back(std::make_shared<BlockMask>(block_mask_from_dense(q.shape.n, masks.block, dense.data())));
    }
    return mask_set_make(1, q.shape.heads, ptrs);
}

// max |got - want| over one head, and max |want|.
template <typename A, typename B>
std::pair<double, double> head_error(const BasicTensor<A>& got, int64_t gb, const BasicTensor<B>& want, int64_t h) {
    double err = 0, size = 0;
    for (int64_t i = 0; i < got.shape.n; ++i) {
        for (int64_t j = 0; j < got.shape.d; ++j) {
            const double g = got.at(gb, h, i, j), w = want.at(0, h, i, j);
            if (std::isinf(w) || std::isinf(g)) {
                if (g != w) err = INFINITY;
                continue;
            }
            err = std::max(err, std::abs(g - w));
            size = std::max(size, std::abs(w));
        }
    }
    return {err, size};
}

// The largest forward error of O relative to max |O_ref| over all (batch, head) (for tests that
// expect a failure, e.g. without the duplicate correction).
inline double forward_relative_error(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks,
                                     const ContentOptions& options) {
    const ContentForward out = content_attention_forward(q, k, v, masks, 0, options);
    double worst = 0;
    for (int64_t b = 0; b < q.shape.batch; ++b) {
        const MaskSet a = allowed_set(q, k, masks, b, options);
        const ReferenceOutput ref = reference_forward(batch_slice(q, b), batch_slice(k, b), batch_slice(v, b), a, 0);
        for (int64_t h = 0; h < q.shape.heads; ++h) {
            const auto [err, size] = head_error(out.o, b, ref.o, h);
            worst = std::max(worst, err / std::max(size, 1e-30));
        }
    }
    return worst;
}

// Forward and backward of content_attention against the reference over A, every (batch, head).
inline void check_against_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& d_o,
                                    const MaskSet& masks, const ContentOptions& options = {}) {
    const ContentForward out = content_attention_forward(q, k, v, masks, 0, options);
    const AttentionGrads g = content_attention_backward(q, k, v, out.o, out.lse, d_o, masks, 0, options);
    for (int64_t b = 0; b < q.shape.batch; ++b) {
        const MaskSet a = allowed_set(q, k, masks, b, options);
        const Tensor qb = batch_slice(q, b), kb = batch_slice(k, b), vb = batch_slice(v, b), dob = batch_slice(d_o, b);
        const ReferenceOutput ref = reference_forward(qb, kb, vb, a, 0);
        const ReferenceGrads want = reference_backward(qb, kb, vb, dob, a, 0);
        for (int64_t h = 0; h < q.shape.heads; ++h) {
            INFO("batch " << b << ", head " << h);
            const auto [o_err, o_size] = head_error(out.o, b, ref.o, h);
            INFO("O: max error " << o_err << ", max |reference| " << o_size);
            CHECK(o_err <= kForwardTolerance * o_size);
            for (int64_t i = 0; i < q.shape.n; ++i) {
                const double got = out.lse.at(b, h, i, 0), want_lse = ref.lse.at(0, h, i, 0);
                INFO("lse row " << i << ": " << got << " vs " << want_lse);
                if (std::isinf(want_lse)) REQUIRE(got == want_lse);
                else REQUIRE(std::abs(got - want_lse) <= kForwardTolerance * std::max(1.0, std::abs(want_lse)));
            }
            const std::pair<const Tensor*, const TensorD*> grads[] = {{&g.dq, &want.dq}, {&g.dk, &want.dk}, {&g.dv, &want.dv}};
            const char* names[] = {"dQ", "dK", "dV"};
            for (int i = 0; i < 3; ++i) {
                const auto [err, size] = head_error(*grads[i].first, b, *grads[i].second, h);
                INFO(names[i] << ": max error " << err << ", max |reference| " << size);
                CHECK(err <= kGradTolerance * std::max(size, kGradFloor));
            }
        }
    }
}

} // namespace sparsa::testing
