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

// The scale a call uses: `scale`, or attention_default_scale(d) for 0. Any finite value is
// taken (a negative one turns the softmax toward the smallest scores, as the formula says);
// NaN or infinity throws sparsa::Error naming `what`.
double attention_scale(const std::string& what, double scale, int64_t d);

// The threads a call uses: `threads`, or thread_count() (SPARSA_THREADS, else the core count)
// for 0. Throws sparsa::Error naming `what` for a negative count.
int attention_threads(const std::string& what, int threads);

// The Euclidean norm of every row of x, in double (a float's square, 1.2e77 at most, is far
// inside double's range, so no finite row overflows): [batch, heads, n, 1]. O(size) work on
// `threads` threads (0: thread_count()).
TensorD tensor_row_norms(const Tensor& x, int threads = 0);

// The largest |score| the float32 engines take: FLT_MAX / 4, about 8.5e37. Cauchy-Schwarz
// bounds every score scale * q_i . k_j, and every partial sum of it, by Z = |scale| |q_i| |k_j|.
// Z below this keeps every float32 step finite: the scores, the differences S - max S down to
// -2 Z (the online softmax, the backward's S - lse), the lse (max S + the log of at most 2^32
// terms), and a CUDA kernel's scores in base 2 (times log2(e) < 1.45). At FLT_MAX / 2 the
// differences could already overflow; so every input whose scores float32 holds with a factor
// of 4 to spare is taken, and only those beyond are refused.
constexpr double kMaxScore = 3.4028234663852886e38 / 4;

// The largest |score| the CUDA engine's tensor-core kernels (2 to 19) take: 2^29, about 5.4e8.
// They form P = 2^(s scale log2(e) - m) with one FMA, exact but for the rounding of the row max
// m: a factor 2^e, |e| up to half an ulp of m, common to the whole row, which O and lse do not
// see while it fits float32. From |m| = 2^31 (ulp 256) it overflows: on an H100 every kernel 2 to
// 15 in bf16 gave NaN at scores of 2^33 and was right up to 2^31. 2^29 log2(e) < 2^30 keeps the
// factor within 2^32, so the sums of P V keep room too.
constexpr double kMaxTensorCoreScore = 536870912.0;

// How a float32 engine forms a score, which decides its range and what else must stay finite.
enum class ScoreEngine {
    cpu,                 // S = (scale Q) K^T: scale * Q too; scores up to kMaxScore
    cuda,                // CUDA kernel 1, S = scale (Q K^T): Q K^T too; scores up to kMaxScore
    cuda_tensor_cores,   // CUDA kernels 2 to 15: as kernel 1, scores up to kMaxTensorCoreScore
};

// Throws sparsa::Error naming `what` unless, in every head, the largest Q row norm times the
// largest K row norm times |scale| is at most the engine's limit (and scale * Q, or Q K^T, as
// the engine forms them, at most kMaxScore). The message names the two rows [b, h, i], their
// norms and the bound Z, and says to scale Q or K down or lower the scale (for the tensor-core
// kernels, or to use kernel 1). q_norms, k_norms: tensor_row_norms of Q and K, [batch, heads, n,
// 1]. O(batch * heads * n).
void attention_check_score_range(const std::string& what, const TensorD& q_norms, const TensorD& k_norms, double scale,
                                 ScoreEngine engine);

struct ReferenceOptions {
    double scale = 0;        // softmax scale; 0: 1 / sqrt(d); NaN or infinity throws
    int64_t row_begin = 0;   // forward only: compute query rows [row_begin, row_end), so that a
    int64_t row_end = -1;    //   long sequence can be checked in chunks; -1: n
    int threads = 0;         // rows (forward) or heads (backward) in parallel; 0: thread_count(); < 0 throws
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
// count, a layer out of range, NaN or Inf in q, k or v, a size over options.max_bytes, or a NaN
// or infinite scale, a negative thread count, or a score beyond double's range (float inputs
// never reach it; double inputs of about 1e150 may), naming the query and the key.
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
