// The CUDA engine's backward: dQ, dK and dV on the GPU for one MaskSet layer, the same call shape
// as the CPU engine's attention_backward (engine/cpu_attention.hpp). Plain C++: no CUDA header
// is needed to use it. The kernels are in attn_bwd_kernels.cuh.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/cuda/attention_cuda.hpp"
#include "engine/tensor.hpp"

#include <cstdint>
#include <memory>
#include <vector>

namespace sparsa {

struct CudaBackwardOptions {
    float scale = 0;                  // softmax scale, any finite value; 0: 1 / sqrt(d)
    CudaDtype dtype = CudaDtype::bfloat16;   // of Q, K, V, O, dO and the gradients on the GPU
    int kernel = 0;                   // attn_bwd kernel 1 to 9 (attn_bwd_kernels.cuh); 0: 8 where it runs, else 3, else 1
    bool poison_outputs = true;       // fill dQ, dK, dV with NaN before the run (tests catch unwritten elements)
    bool check_lse = true;            // check that P = exp(S - lse) sums to 1 in every row (the CPU engine's check)
    int64_t split_steps = 0;          // kernels 3 and up: rows and columns of more 64-row steps than this are cut into
                                      // chunks of at most this many; 0: max(64, all steps / (8 * multiprocessors))
};

// The backward kernel versions: 1 (simple: any d <= 256, any block, every dtype), 2 (tensor
// cores, mma.sync: bf16 / fp16, d = 64 or 128, mask blocks 64, 128 or 256; any GPU of compute
// capability 8.0 or more), 3 (2 with long rows and columns split into chunks and merged), 4 (3 with
// dQ added by atomics in the dK / dV pass: its last bits may differ from run to run), 5 (3 on
// Hopper's wgmma: compute capability 9.0 only), 6 and 7 (5 with products issued in pairs; 7 also
// copies the next step's tiles during this one).
int cuda_backward_kernel_count();
bool cuda_backward_kernel_supports(int kernel, CudaDtype dtype, int64_t d, int32_t block);
// The kernel a call runs: `kernel`, or for 0 the newest that runs this dtype / d / block.
int cuda_backward_kernel_choice(int kernel, CudaDtype dtype, int64_t d, int32_t block);

// One GPU's backward: device buffers are kept and reused across calls (grown when needed).
class CudaAttentionBackward {
public:
    CudaAttentionBackward();   // throws sparsa::Error when no GPU is usable
    ~CudaAttentionBackward();
    CudaAttentionBackward(const CudaAttentionBackward&) = delete;
    CudaAttentionBackward& operator=(const CudaAttentionBackward&) = delete;

    // The gradients of sum(d_o * o) with respect to q, k and v, from the forward's o and lse (of
    // either engine), with one BlockMask per head from layer `layer` of `masks`; every tensor is
    // rounded to options.dtype on the way up, lse stays float32. Empty rows give zero gradients.
    // q, k, v, o, d_o: [batch, heads, n, d]; lse: [batch, heads, n, 1]; returns dq, dk, dv as
    // float32 [batch, heads, n, d] (their values rounded to the dtype). Throws sparsa::Error for
    // what the CPU engine's attention_backward refuses (shapes, a NaN or +inf lse, NaN / Inf in
    // the tensors, scores out of range), elements beyond the dtype's range, a kernel that does not
    // run this dtype / d / block (saying which does), an lse that is not the forward's (with
    // check_lse: the row, the given and the exact lse, as the CPU engine says it), a gradient that
    // overflowed, or a failed CUDA call.
    AttentionGrads backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                            const Tensor& d_o, const MaskSet& masks, int64_t layer, const CudaBackwardOptions& options = {});

    // The same in three steps, for timing: prepare checks and uploads, run launches the kernels
    // (D = rowsum(dO * O), the dK / dV pass, the dQ pass; asynchronously), download waits and
    // copies the gradients back, with the checks above.
    void prepare(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                 const Tensor& d_o, const MaskSet& masks, int64_t layer, const CudaBackwardOptions& options = {});
    void run();
    AttentionGrads download();

    // Milliseconds of each of `runs` launches of the prepared call (CUDA events), after `warmup`.
    std::vector<float> time_runs(int warmup, int runs);

    int kernel() const;   // the kernel the prepared call runs

private:
    friend class CudaLayerMasks;   // attention_cuda_device.hpp: the same kernels on the caller's tensors
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace sparsa
