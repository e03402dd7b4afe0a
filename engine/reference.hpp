// The dense reference: masked attention computed plainly in double precision, forward and its
// analytic backward, for any mask. The oracle every engine is tested against; slow on purpose.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/tensor.hpp"

#include <cstdint>
#include <string>

namespace sparsa {

// Checks what every attention call needs (the reference and each engine call it first): q, k, v
// of one shape [batch, heads, n, d] with every dimension >= 1 and d <= kMaxHeadDim, `layer` a
// layer of `masks`, and masks compiled for this n and head count. Throws sparsa::Error naming
// `what` (e.g. "attention_forward") and how to fix the call.
constexpr int64_t kMaxHeadDim = 256;
void attention_check_shapes(const std::string& what, const TensorShape& q, const TensorShape& k,
                            const TensorShape& v, const MaskSet& masks, int64_t layer);

// The softmax scale when none is given: 1 / sqrt(d).
double attention_default_scale(int64_t d);

struct ReferenceOptions {
    double scale = 0;        // softmax scale; 0: 1 / sqrt(d)
    int64_t row_begin = 0;   // forward only: compute query rows [row_begin, row_end), so that a
    int64_t row_end = -1;    //   long sequence can be checked in chunks; -1: n
    int threads = 0;         // rows (forward) or heads (backward) in parallel; 0: thread_count()
    int64_t max_bytes = 0;   // refuse a call whose outputs and buffers need more; 0: half the RAM
};

struct ReferenceOutput {
    TensorD o;    // [batch, heads, rows, d]: softmax over the allowed keys of scale * q.k, times v
    TensorD lse;  // [batch, heads, rows, 1]: log of the sum of exp(scale * q.k) over allowed keys
};

// Attention of the given query rows with one BlockMask per head from layer `layer` of `masks`.
// A row with no allowed key gives o = 0 and lse = -inf. Work is O(kept blocks * B * d) per head
// (each kept block's keys are tested with BlockMask::allowed); memory is the outputs plus O(n)
// per thread. Results do not depend on the thread count.
// q, k, v: [batch, heads, n, d]. Throws sparsa::Error for bad shapes, a mask of another n or head
// count, a layer out of range, NaN or Inf in q, k or v, or a size over options.max_bytes.
ReferenceOutput reference_forward(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks,
                                  int64_t layer, const ReferenceOptions& options = {});
ReferenceOutput reference_forward(const TensorD& q, const TensorD& k, const TensorD& v, const MaskSet& masks,
                                  int64_t layer, const ReferenceOptions& options = {});

struct ReferenceGrads {
    TensorD dq, dk, dv;   // each [batch, heads, n, d]
};

// The gradients of sum(d_o * o) with respect to q, k and v, where o is reference_forward's
// output over all rows: the analytic backward (P recomputed, dS = P * (dP - rowsum(P * dP))).
// Empty rows contribute nothing. q, k, v, d_o: [batch, heads, n, d]. Throws as
// reference_forward does, and for d_o of another shape or not finite.
ReferenceGrads reference_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& d_o,
                                  const MaskSet& masks, int64_t layer, const ReferenceOptions& options = {});
ReferenceGrads reference_backward(const TensorD& q, const TensorD& k, const TensorD& v, const TensorD& d_o,
                                  const MaskSet& masks, int64_t layer, const ReferenceOptions& options = {});

} // namespace sparsa
