// The CPU engine: exact block-sparse attention in float32 with Eigen, forward (streaming softmax
// over the kept blocks of each query block) and backward (FlashAttention-2 style), multithreaded.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/tensor.hpp"

#include <cstdint>

namespace sparsa {

struct AttentionOptions {
    float scale = 0;   // softmax scale; 0: 1 / sqrt(d)
    int threads = 0;   // 0: thread_count() (SPARSA_THREADS, else the core count)
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
// shapes, d above 256, masks for another n or head count, a layer out of range, or NaN / Inf in
// q, k or v (naming the tensor and the first bad index [b, h, i, j]).
AttentionOutput attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks,
                                  int64_t layer, const AttentionOptions& options = {});

// The gradients of sum(d_o * o) with respect to q, k and v, from the forward's o and lse (P is
// recomputed block by block, dS = P * (dP - D) with D = rowsum(d_o * o)). dK and dV are gathered
// per key block over the query blocks that keep it (the mask transposed), dQ per query block, so
// every sum runs in a fixed order: results are the same for any thread count. Empty rows give
// zero gradients. q, k, v, o, d_o: [batch, heads, n, d]; lse: [batch, heads, n, 1]. Throws as
// attention_forward does, and for o, lse or d_o of another shape or with NaN (or lse = +inf).
AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                  const Tensor& lse, const Tensor& d_o, const MaskSet& masks, int64_t layer,
                                  const AttentionOptions& options = {});

} // namespace sparsa
