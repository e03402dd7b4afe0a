// The CPU engine: exact block-sparse attention in float32 with Eigen, forward (streaming softmax
// over the kept blocks of each query block) and backward (FlashAttention-2 style), multithreaded.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/tensor.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

struct AttentionOptions {
    float scale = 0;   // softmax scale, any finite value; 0: 1 / sqrt(d)
    int threads = 0;   // 0: thread_count() (SPARSA_THREADS, else the core count); negative throws
};

struct AttentionOutput {
    Tensor o;     // [batch, heads, n, d]: softmax over the allowed keys of scale * q.k, times v
    Tensor lse;   // [batch, heads, n, 1]: log sum exp of the allowed scores; -inf for empty rows
};

struct AttentionGrads {
    Tensor dq, dk, dv;   // each [batch, heads, n, d]
};

// Attention with one BlockMask per head, from layer `layer` of `masks`. Work is proportional to
// the kept blocks: full blocks run unmasked, partial blocks apply their bitmask, rows with no
// allowed key give o = 0 and lse = -inf (never NaN). Memory is the outputs plus O(B * (B + d))
// per thread. Results are the same for any thread count.
// q, k, v: [batch, heads, n, d]. Throws sparsa::Error (and returns nothing) for mismatched
// shapes, d above 256, masks for another n or head count, a layer out of range, a NaN or
// infinite scale, a negative thread count, NaN / Inf in q, k or v (naming the tensor and the
// first bad index [b, h, i, j]); for scores float32 cannot hold: in some head the largest Q row
// norm times the largest K row norm times |scale| above kMaxScore = FLT_MAX / 4 (reference.hpp:
// a Cauchy-Schwarz bound on every score, found in one O(size) pass, the message naming both
// rows); and for an O whose sums of P V overflow (V near float32's limit; the message says so).
AttentionOutput attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks,
                                  int64_t layer, const AttentionOptions& options = {});

// The gradients of sum(d_o * o) with respect to q, k and v, from the forward's o and lse (P is
// recomputed block by block from S bit for bit as the forward computed it, whatever the shapes
// of the products, so P is consistent with lse even where a rounding step of S is far above 1;
// dS = P * (dP - D) with D = rowsum(d_o * o)). dK and dV are gathered per key block over the
// query blocks that keep it (the mask transposed), dQ per query block, so
// every sum runs in a fixed order: results are the same for any thread count. Empty rows give
// zero gradients. q, k, v, o, d_o: [batch, heads, n, d]; lse: [batch, heads, n, 1]. Throws as
// attention_forward does, for o, lse or d_o of another shape or with NaN (or lse = +inf), for
// gradients that overflow float32, and when P = exp(S - lse) does not sum to 1 in some row within
// float32's error (1e-3 plus the rounding of the row's scores, at most 0.1): for an lse that is
// not the forward's for these q, k, scale and mask (the message gives the row, the given and the
// exact lse, from the reference), or for scores too large for float32 to recompute P (it says
// so). The sums come from the P the dQ pass computes anyway: B additions per row of each kept
// block beside its three B x B x d products (under 1% of the work at d = 64); the dQ pass runs
// first, so a refused call has spent about half a backward.
AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                  const Tensor& lse, const Tensor& d_o, const MaskSet& masks, int64_t layer,
                                  const AttentionOptions& options = {});

// The check attention_backward makes of its lse, for other engines' backward passes (the CUDA
// engine's): throws unless each row's sum of P = exp(S - lse), as that pass recomputed it, is 1
// within float32's error, and a row whose lse is -inf keeps no key; the message names the row
// and says whether the lse is not the forward's or the scores are too large for float32.
// p_sum: [batch * heads * n]; q, k, v as the pass saw them (rounded to its dtype).
void attention_check_p_sums(const std::string& what, const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& lse, const MaskSet& masks, int64_t layer, float scale,
                            const std::vector<double>& p_sum);

} // namespace sparsa
