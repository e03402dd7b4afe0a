// Performer's FAVOR+ on the CPU (Choromanski et al. 2021): dense softmax attention, or causal
// attention, estimated with m positive orthogonal random features in O(n m d) time and
// O(n (m + d)) memory, forward and backward, and its error against exact attention as m grows.
// Issue 14's spec and docs/pattern-language.md define it; this file is that definition in code,
// and the CUDA engine draws its features here (favor_features_draw) and uploads them.
//
// Definition, per (batch b, head h), with scale s and features omega [m, d]:
//   x' = x sqrt(s) (for s < 0: q' = q sqrt|s|, k' = -k sqrt|s|, so that q' . k' = s q . k),
//   phi(x') = exp(omega x' - |x'|^2 / 2 - c) / sqrt(m),
//   O = phi(Q') (phi(K')^T V) / (phi(Q') (phi(K')^T 1))    (causal: sums over keys j <= i).
// The stabiliser c and every factor common to one query row (|q'|^2 / 2, 1 / sqrt(m)) or to all
// keys of a head cancel in the ratio, so O does not depend on them. This file picks them so that
// float32 holds the features whatever the norms: a query row's largest feature is exactly 1
// (c = max_r omega_r q'; |q'|^2 / 2 and 1 / sqrt(m) are left out), and the head's largest key
// feature is exactly 1 (c = max over keys j and features r of omega_r k'_j - |k'_j|^2 / 2).
// The spec's key stabiliser (the max of omega_r k'_j alone, as Performer writes it) gives the same
// O in exact arithmetic, but once |k'|^2 / 2 passes 87 (keys about 4.7 times the norm of unit
// normal rows at d = 64) every key feature is below float32's smallest normal and O is 0 / 0.
// Features whose exponent falls below -87 (1.6e-38 of the largest) are stored as 0: the estimate
// then rests on fewer features, which the report counts (large norms).
//
// Accumulation: features and products in float32 (Eigen); the states phi(K)^T V and phi(K)^T 1
// are summed in double across chunks, each query's denominator is a double dot product, and the
// backward's states too. Results do not depend on the thread count (one head per task).
#pragma once

#include "engine/block_mask.hpp"
#include "engine/content/content_arrays.hpp"
#include "engine/content/content_spec.hpp"
#include "engine/tensor.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

// [SECTION] features

// The random features of one head: omega [m, d], float32, row-major.
struct FavorFeatures {
    int64_t m = 0, d = 0;
    std::vector<float> omega;   // [m, d]
};

// Performer's "regular" positive orthogonal features, from stream `draw` of (seed, layer, head)
// (engine/content/random_numbers.hpp), in this order:
//   for each block b = 0 .. ceil(m / d) - 1: d * d normals, a d x d matrix G row-major; its rows
//     orthonormalised by Gram-Schmidt in double (each row against the earlier ones, twice, then
//     divided by its norm); block b gives rows b d .. min(m, (b + 1) d) - 1 of omega, the first
//     rows of the block (the last block truncated; a whole block is drawn even then);
//   then m * d normals, an m x d matrix N row-major; row r of omega is multiplied by |N_r|, the
//     norm of an independent d-dim normal vector, so rows have the norms of Gaussian rows.
// Computed in double, rounded to float once. Throws sparsa::Error for m < 1 or d < 1.
FavorFeatures favor_features_draw(uint64_t seed, int64_t layer, int64_t head, int64_t draw, int64_t m, int64_t d);

// Features given explicitly: omega [m, d] row-major. Throws sparsa::Error naming `what` for
// m < 1, d < 1, a size that is not m * d, or a value that is NaN or infinite.
FavorFeatures favor_features_make(std::vector<float> omega, int64_t m, int64_t d, const std::string& what);

// The features of (layer, head) for a favor spec: the spec's file from `arrays` (float32
// [features, d], content_arrays.hpp; its shape checked, naming the file, the shape found and the
// shape expected), or else favor_features_draw(spec.seed, layer, head, draw, spec.features, d).
// `draw` is the caller's count of redraws (0 when spec.redraw is 0). Throws sparsa::Error naming
// `what` for a spec that is not favor, features < 1, a file missing from `arrays` (may be nullptr).
FavorFeatures favor_features_for_head(const ContentSpec& spec, int64_t layer, int64_t head, int64_t d, int64_t draw,
                                      const ContentArrays* arrays, const std::string& what);

// [SECTION] forward and backward

struct FavorOptions {
    double scale = 0;     // softmax scale, any finite value; 0: 1 / sqrt(d)
    bool causal = false;  // true: query i attends to keys j <= i (prefix sums)
    int threads = 0;      // heads in parallel; 0: thread_count(); negative throws
};

// A denominator below kFavorMinRatio times the largest product of one query feature and one key
// feature of its head (after the stabilisers: 1 x 1) makes an estimate degraded: no key
// contributes even 1e-30 of a feature product, so O rests on the features float32 nearly loses.
constexpr double kFavorMinRatio = 1e-30;
// Feature exponents (after the stabiliser, <= 0) below this are stored as 0: exp(-87) = 1.6e-38
// is float32's smallest normal range; below it the features would be subnormal (imprecise, and
// about 100 times slower on x86).
constexpr double kFavorMinExponent = -87.0;

// What degraded on one call; the caller prints favor_report_warning when it is not "" (when
// degraded() or noisy() is true).
struct FavorReport {
    int64_t rows = 0;            // query rows estimated: batch * heads * n
    // Rows whose denominator ratio is below kFavorMinRatio (including 0). The forward still gives
    // o = N / D when D > 0 (finite: a weighted mean of V rows), and o = 0 when D = 0; the
    // backward leaves their gradient out (as if o were a constant).
    int64_t degraded_rows = 0;
    int64_t zero_rows = 0;       // of those, rows with D = 0 (o = 0)
    double worst_ratio = 1;      // the smallest denominator ratio of any row (1 when none is below 1)
    int64_t worst_b = -1, worst_h = -1, worst_i = -1;   // where it is
    // Query rows and keys with at least one feature stored as 0 (exponent below
    // kFavorMinExponent): from large norms, where the features span more than float32 holds.
    int64_t large_norm_queries = 0, large_norm_keys = 0;
    double largest_spread = 0;   // the most negative feature exponent seen, negated
    double largest_q_norm = 0, largest_k_norm = 0;   // max |q'|, |k'| (after the scale)
    // The statistical side, before any rounding: one feature's estimate of exp(q' . k') has
    // relative variance exp(|q' + k'|^2) - 1 (Performer, Lemma 2, i.i.d. features; orthogonal
    // ones do a little better), so m features give a relative standard deviation of
    // sqrt((exp(|q'|^2 + |k'|^2) - 1) / m) for a pair of typical directions. This is that, with
    // the head's mean |q'|^2 and mean |k'|^2, the largest over heads. Measured against exact
    // attention it tracks the relative error of O while below 1 (d = 16 and 64: 0.32 predicted,
    // 0.28 measured; 0.46 and 0.40); above 1 the estimate is mostly noise (unit normal Q and K at
    // d = 64, scale 1/8: |q'|^2 ~ 8, predicted 186, measured error of O 5.7 at m = 256), and more
    // features help only slowly.
    double predicted_error = 0;

    bool degraded() const { return degraded_rows > 0 || large_norm_queries > 0 || large_norm_keys > 0; }
    bool noisy() const { return predicted_error > 1; }
};

// One line for a degraded report ("" when nothing degraded): what happened, where, and what to
// do (scale Q or K down, or normalise them).
std::string favor_report_warning(const FavorReport& report, const std::string& what);

struct FavorOutput {
    Tensor o;             // [batch, heads, n, d]
    FavorReport report;
};

// FAVOR+ attention. features: one per head (index h; the batch shares them), each [m, d] with
// d = q's d (m may differ between heads). Work O(batch heads n m d); memory the output plus
// O(n (m + d)) per thread. Never gives inf or NaN: degraded rows are in the report.
// q, k, v: [batch, heads, n, d]. Throws sparsa::Error naming favor_forward for mismatched shapes,
// a features count or d that does not fit, NaN or Inf in q, k or v (naming the tensor and index),
// a NaN or infinite scale, a negative thread count, and for V whose sums float32 cannot hold
// (max |v| n m above FLT_MAX / 4: scale V down).
FavorOutput favor_forward(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<FavorFeatures>& features,
                          const FavorOptions& options = {});

struct FavorGrads {
    Tensor dq, dk, dv;    // each [batch, heads, n, d]
    FavorReport report;   // the recomputed forward's
};

// The gradients of sum(d_o * o) for o = favor_forward(q, k, v, features, options).o, with the
// features omega fixed and the stabilisers treated as constants (as Performer's implementation
// does). That is the exact gradient of O: a stabiliser multiplies a whole query row's features, or
// every key's, by one factor, which O does not see; likewise |q'|^2 / 2, whose gradient
// (sum_r dphi_r phi_r = o . d_o - d_o . o) is exactly 0 and is not formed. The forward is
// recomputed (nothing is kept from it); the causal backward runs the prefix sums forward for dQ
// and suffix sums backward for dK and dV. Rows the report calls degraded contribute nothing.
// Throws as favor_forward does, for d_o of another shape or not finite, and for gradients that
// overflow float32 (degraded estimates at extreme norms: scale Q or K down).
FavorGrads favor_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& d_o,
                          const std::vector<FavorFeatures>& features, const FavorOptions& options = {});

// [SECTION] error against exact attention

// ||o - exact|| / ||exact|| over every element (Frobenius); 0 when both are 0. Shapes must match.
double favor_relative_error(const Tensor& o, const TensorD& exact);

// The masks of exact attention that FAVOR+ approximates: every pair (or k <= q under causal), one
// layer of `heads` heads, blocks of 64 (full blocks, and causal's diagonal blocks partial). For
// comparing with the reference and the dense engines. Throws sparsa::Error for n < 1 or heads < 1.
MaskSet favor_dense_masks(int64_t n, int64_t heads, bool causal);

// Exact dense softmax attention (causal under options.causal), from the double reference
// (engine/reference.hpp) over favor_dense_masks: O(batch heads n^2 d). For favor_error_curve and tests.
TensorD favor_exact_attention(const Tensor& q, const Tensor& k, const Tensor& v, const FavorOptions& options = {});

struct FavorErrorPoint {
    int64_t features = 0;
    double error = 0;     // favor_relative_error against exact attention
    FavorReport report;
};

// The error of FAVOR+ as the feature count grows: for each m of `feature_counts` (e.g.
// favor_feature_counts(): 16, 32, ..., 1024), features drawn per head from (seed, layer, h, draw),
// O against favor_exact_attention (computed once). Throws as favor_forward does, and for a count
// below 1.
std::vector<FavorErrorPoint> favor_error_curve(const Tensor& q, const Tensor& k, const Tensor& v,
                                               const std::vector<int64_t>& feature_counts, uint64_t seed,
                                               int64_t layer, int64_t draw, const FavorOptions& options = {});

// 16, 32, 64, ..., up to and including `largest` (doubling).
std::vector<int64_t> favor_feature_counts(int64_t largest = 1024);

} // namespace sparsa
