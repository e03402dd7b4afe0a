// The CUDA engine's content-based heads (issue 14): Reformer's LSH, anchor buckets and Performer's
// FAVOR+ forward on the GPU, for a layer whose heads carry a ContentSpec (MaskSet::content).
// Plain C++: no CUDA header is needed to use it. The meaning of each family is issue 14's spec
// (engine/content/content_spec.hpp, docs/pattern-language.md); this file says how the GPU runs it.
//
// lsh, anchors: the fixed pass (CudaAttention on the heads' fixed masks, when any is non-empty),
// then per round: hash (x R on the GPU, one warp a token) or the anchors' balanced assignment
// (on the GPU, identical to the CPU engine's anchors_assign: content_anchors.cuh), a stable radix sort of (round, batch * head, bucket) keys with CUB, each token's chunk id, and
// one banded pass per round in sorted order (query chunk i against key chunks i - 1 and i; Q, K,
// V rows read through the sorted order, so the gather is part of the pass's tile loads, and O,
// lse written back at the tokens' positions). The passes merge by log-sum-exp. Pairs the fixed
// mask holds are left out of the rounds (the fixed pass has them once) and each round's logit
// is corrected by -log(count), count = the rounds in which the pair meets: together the exact
// softmax over the spec's allowed set (the spec's count with the fixed pass as one more pass
// gives the same softmax).
//
// favor: FAVOR+'s phi(x') = exp(omega x' - |x'|^2 / 2 - c) / sqrt(m). The per-query factors and
// every global constant cancel in O = phi(q)(phi(K)^T V) / (phi(q) phi(K)^T 1), so (bidirectional)
//   pass 1: each feature j "attends" over the keys with logit omega_j . k' - |k'|^2 / 2:
//           (o_j, lse_j) = (sum_k w_jk v_k / sum_k w_jk, log sum_k w_jk), w_jk = phi(k)_j up to a constant;
//   pass 2: each query attends over the features with logit omega_j . q' + lse_j and values o_j:
//           O = sum_j e^{omega_j q'} sum_k w_jk v_k / sum_j e^{omega_j q'} sum_k w_jk, FAVOR+'s O.
// Both run on the same tensor-core pass as lsh (a bias per key instead of the band rule); the
// online softmax's running maximum is the stabiliser (never inf or NaN). Causal: pass 1 per
// 64-key chunk, an exclusive log-sum-exp scan over chunks (the prefix sums), pass 2 of each query
// chunk against its prefix, and inside the chunk the explicit phi products (k <= q), merged.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/content/content_arrays.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/cuda/attention_cuda.hpp"
#include "engine/tensor.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sparsa {

struct CudaContentOptions {
    float scale = 0;                      // softmax scale, any finite value (favor: > 0); 0: 1 / sqrt(d)
    CudaDtype dtype = CudaDtype::bfloat16;
    bool tensor_cores = true;             // false: the simple kernel (one warp a row); also used where
                                          // tensor cores do not run (float32, d other than 64 and 128)
    bool poison_outputs = true;           // fill O and lse with NaN before the run
    int version = 0;                      // the kernels: 4 (3 with lsh's hashing on tensor cores, bf16 / fp16,
                                          // d = 64 or 128, 16 to 128 buckets: content_hash4.cuh),
                                          // 3 (lsh and anchors with chunk 64: content_band3.cuh;
                                          // FAVOR+'s passes at d = 64, 128: content_dense3.cuh; else as 2), 2 (content_fast.cuh) or 1 (content_kernels.cuh, the
                                          // first, kept as the record and the fallback); 0: the newest
};

// The random numbers or fitted anchors of one head, as the host made them (cuda_content_numbers):
//   lsh: rotations [rounds, d, buckets / 2]; anchors: [rounds, k, d] (unit rows); favor: [m, d].
// Empty for a head without a ContentSpec.
using CudaContentNumbers = std::vector<std::vector<float>>;   // [heads]

// The numbers of every head of layer `layer`, exactly as the CPU engines draw them: lsh's
// rotations by lsh_rotation (the seed's, or the spec's file), anchors from the spec's file,
// FAVOR+'s features by favor_features_for_head (`draw`: the caller's count of redraws). arrays:
// the files the specs name (io/content_files.hpp), or nullptr. Throws sparsa::Error as those do
// (a file missing from arrays or of the wrong shape, anchors without a file).
CudaContentNumbers cuda_content_numbers(const MaskSet& masks, int64_t layer, int64_t d, const ContentArrays* arrays,
                                        int64_t draw = 0);

// Device times of the last run (CUDA events, milliseconds). bucketing: hashing or the anchors'
// cosines and balanced assignment, sorting, chunk ids; attention: the rounds' passes
// (favor: its key and query passes); merge: the log-sum-exp merge; fixed: the fixed pass (its
// kernel only; its output's copy through the host is not counted: see content_cuda.cu).
struct CudaContentTimes {
    float fixed_ms = 0, bucketing_ms = 0, attention_ms = 0, merge_ms = 0, total_ms = 0;
};

// What the GPU computed of the walk, for tests: per (batch, head, round) each token's bucket.
struct CudaContentWalk {
    int64_t rounds = 0;
    bool shared_qk = true;
    std::vector<int32_t> q_bucket, k_bucket;   // [rounds, batch * heads, n]; k_bucket empty when shared_qk
    std::string hashing;                       // the kernel that hashed or assigned them: content_hash_tc,
                                               // content_hash3, content_project2, content_project or anchors
};

// forward_device's tensors: the caller's device memory on the current device, contiguous
// [batch, heads, n, d] in the call's dtype (q, k, v, o) and lse [batch, heads, n] float32.
struct CudaContentDeviceCall {
    const void *q = nullptr, *k = nullptr, *v = nullptr;
    void* o = nullptr;
    float* lse = nullptr;
    int64_t batch = 0, heads = 0, n = 0, d = 0;
};

class CudaContentAttention {
public:
    CudaContentAttention();   // throws sparsa::Error when no GPU is usable
    ~CudaContentAttention();
    CudaContentAttention(const CudaContentAttention&) = delete;
    CudaContentAttention& operator=(const CudaContentAttention&) = delete;

    // Attention of layer `layer` of `masks`, whose heads all carry the same kind of ContentSpec
    // with the same parameters apart from seed and file (the GPU runs them in one launch; split
    // other layers into calls by head), with numbers[h] for head h. q, k, v: [batch, heads, n, d],
    // rounded to options.dtype; o [batch, heads, n, d] and lse [batch, heads, n, 1] in float32
    // (favor: lse is the log of FAVOR+'s denominator up to a constant per row: no softmax lse).
    // Throws sparsa::Error for what cuda_attention_check refuses, a head without a spec or with
    // another spec, buckets odd, below 2 or above n, numbers of the wrong size, favor with a scale
    // <= 0, or a failed CUDA call.
    AttentionOutput forward(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks, int64_t layer,
                            const CudaContentNumbers& numbers, const CudaContentOptions& options = {});

    // forward on the caller's device memory (sparsa.torch's GPU path: no host copies). The inputs
    // are copied into the engine's buffers on the device, the outputs back into o and lse (o in
    // options.dtype, lse as forward's). Runs on the legacy default stream and returns when it is
    // queued; the caller orders its own stream against it. Checks the shapes against the masks
    // (not the values: they stay on the GPU) and throws sparsa::Error as prepare, or for a layer
    // with fixed blocks beside its content heads (whose fixed pass goes through the host: use
    // forward).
    void forward_device(const CudaContentDeviceCall& call, const MaskSet& masks, int64_t layer,
                        const CudaContentNumbers& numbers, const CudaContentOptions& options = {});

    // The same in steps, for timing: prepare checks and uploads, run launches everything (it
    // waits only where the host must act: the fixed pass's output),
    // download waits and copies o and lse back.
    void prepare(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks, int64_t layer,
                 const CudaContentNumbers& numbers, const CudaContentOptions& options = {});
    void run();
    AttentionOutput download();
    CudaContentTimes times();     // of the last run (waits for it)
    // Runs the prepared call `runs` times (at least once) and gives each part's median over them
    // (the upper middle of an even count); the last run's output stays for download().
    CudaContentTimes run_median(int runs);
    CudaContentWalk walk();       // of the last run (lsh, anchors)

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    // prepare's work apart from the inputs: the spec's checks, the numbers and every buffer but
    // q, k, v (and the fixed pass's engine)
    void setup(const TensorShape& shape, const MaskSet& masks, int64_t layer, const CudaContentNumbers& numbers,
               const CudaContentOptions& options);
};

} // namespace sparsa
