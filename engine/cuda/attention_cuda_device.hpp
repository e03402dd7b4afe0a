// Attention on tensors already on the GPU (sparsa.torch's CUDA path): the caller owns the memory
// and the stream; one layer's masks are uploaded once into a CudaLayerMasks and reused by every
// call. Plain C++: no CUDA header is needed to use it.
//
// Unlike CudaAttention::forward and CudaAttentionBackward::backward, which take host tensors and
// check every value (finite, in the dtype's range, scores in range, the lse against the forward),
// these calls check only what costs no copy from the GPU: shapes against the masks, dtype and
// head dim against the kernels, a finite positive scale. They launch on `stream` and return
// without waiting; a failed launch throws sparsa::Error.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/cuda/attention_cuda.hpp"

#include <cstdint>
#include <memory>

namespace sparsa {

// One call's tensors on the GPU: q, k, v (and o, d_o, the gradients) are contiguous
// [batch, heads, n, d] arrays of `dtype`, each starting on a 16-byte boundary (the kernels copy
// and store 16 bytes at a time; cudaMalloc and PyTorch's allocations are); lse and delta
// [batch, heads, n] float32.
struct CudaDeviceCall {
    const void* q = nullptr;
    const void* k = nullptr;
    const void* v = nullptr;
    int64_t batch = 1, heads = 1, n = 0, d = 0;
    CudaDtype dtype = CudaDtype::bfloat16;
    float scale = 0;          // 0: 1 / sqrt(d); else finite and positive
    void* stream = nullptr;   // a cudaStream_t; nullptr: the legacy default stream
};

// Layer `layer` of `masks` on the GPU, by query block (the forward, dQ) and transposed (dK, dV),
// with the forward's work plan for `batch`; kept until destroyed. Throws sparsa::Error for a
// layer out of range or when no GPU is usable.
class CudaLayerMasks {
public:
    CudaLayerMasks(const MaskSet& masks, int64_t layer);
    ~CudaLayerMasks();
    CudaLayerMasks(const CudaLayerMasks&) = delete;
    CudaLayerMasks& operator=(const CudaLayerMasks&) = delete;

    int64_t n() const;
    int64_t heads() const;
    int32_t block() const;

    // O [batch, heads, n, d] (dtype) and lse [batch, heads, n] (natural log, -inf for an empty
    // row), as CudaAttention::forward computes them with kernel 0's choice.
    void forward(const CudaDeviceCall& call, void* o, float* lse);

    // The same with the key blocks of every row replaced by `columns` (device int32, entries()
    // of them, as col_idx of the layer's masks concatenated head by head): the masks must be a
    // layout with one distinct mask per head, as learn::mask_set_top_k_layout gives, and each
    // row's columns distinct, ascending and below the row, but for its last, which must be the
    // row's own block (the layout's partial diagonal stays as it is). The row lengths, the work
    // plan and the partial blocks are the layout's, so a new selection costs no upload: only
    // 64-query-tile kernels run here (15 with wgmma, else 9, else 1), whose steps do not depend on
    // the columns. Nothing checks the columns on the device (sparsa.torch.attention_top_k makes
    // them from a top-k and can check them); a column out of range reads out of bounds.
    void forward(const CudaDeviceCall& call, void* o, float* lse, const int32_t* columns);

    // Kept blocks of the layer's distinct masks together: the length of forward's columns.
    int64_t entries() const;

    // dQ, dK, dV (dtype) from the forward's o and lse and the gradient d_o, as
    // CudaAttentionBackward::backward computes them with kernel 0's choice; `delta` is the
    // caller's float32 workspace of batch * heads * n (D = rowsum(dO * O)).
    void backward(const CudaDeviceCall& call, const void* o, const float* lse, const void* d_o, void* dq, void* dk,
                  void* dv, float* delta);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace sparsa
