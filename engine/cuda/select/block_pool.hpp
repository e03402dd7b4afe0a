// Block pooling in one pass (the pooled gate's inputs on the GPU, sparsa.selectors): each block of
// `block` rows of q or k reduced to its mean row, and for keys also its largest and smallest
// element per channel (SeerAttention pools K so). In PyTorch the keys' three took three reads of k
// and a dozen launches (sum, divide, amax, amin, their float32 copies, the last block's fix-up, a
// concatenation); this reads x once. Plain C++: no CUDA header is needed to use it.
#pragma once

#include "engine/cuda/attention_cuda.hpp"

#include <cstdint>

namespace sparsa {

// x: device [batch, heads, n, d] of `dtype` with channel stride 1 and the other strides given in
// elements (a PyTorch view's strides, such as a transposed projection's). out: device float32,
// contiguous [batch, heads, blocks, d] (bounds false: each block's mean row) or
// [batch, heads, blocks, 3 d] (bounds true: its mean, then its largest, then its smallest element
// per channel), blocks = ceil(n / block); the last block's mean and bounds are over its n - (blocks
// - 1) block rows alone. The mean is summed in float32, then divided by the rows: in row order, or
// (where d and the strides allow 16-byte reads: block_pool.cu) in interleaved row groups added in
// group order, so a sum may differ from the row order's by float32 rounding.
// With `projection` (device float32 [heads, d or 3 d, width], contiguous), each block's pooled
// row goes through its head's map instead: out [batch, heads, blocks, width] = pooled @
// projection[head], summed in float32 in slices of the input added in order (the pooled gate's a = mean(Q) wq and
// b = keys(K) wk in the same launch as the pooling).
// Launched on `stream` (a cudaStream_t; nullptr: the legacy default stream) without waiting.
// Throws sparsa::Error for sizes out of range (batch, heads, n, block >= 1; d 1 to 1,024; width 1
// to 1,024 with a projection), a null pointer, or a failed launch.
struct CudaBlockPoolCall {
    const void* x = nullptr;
    CudaDtype dtype = CudaDtype::bfloat16;
    int64_t batch = 1, heads = 1, n = 0, d = 0;
    int64_t stride_batch = 0, stride_head = 0, stride_row = 0;   // in elements
    int64_t block = 64;
    bool bounds = false;
    const float* projection = nullptr;   // optional [heads, d or 3 d, width]
    int64_t width = 0;                   // the projection's outputs
    float* out = nullptr;
    void* stream = nullptr;
};
void cuda_block_pool(const CudaBlockPoolCall& call);

} // namespace sparsa
