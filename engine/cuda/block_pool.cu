// cuda_block_pool (block_pool.hpp): one thread block per (batch, head, block of rows); each thread
// takes channels tid, tid + threads, ... and walks the block's rows in order, a warp reading
// consecutive channels of one row at a time; with a projection, then the map's outputs.
#include "engine/cuda/block_pool.hpp"

#include "engine/cuda/cuda_host.hpp"
#include "engine/error.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

namespace sparsa {

namespace {

constexpr int kThreads = 128;

__device__ float to_float(float x) { return x; }
__device__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ float to_float(__half x) { return __half2float(x); }

// With a projection the pooled row is kept in shared memory (its d or 3 d floats) and each
// thread then sums output j's products over it, in input order.
template <typename T>
__global__ void __launch_bounds__(kThreads) block_pool_kernel(const T* __restrict__ x, int64_t heads, int64_t n, int64_t d,
                                                              int64_t stride_batch, int64_t stride_head, int64_t stride_row,
                                                              int64_t block, int64_t blocks, bool bounds,
                                                              const float* __restrict__ projection, int64_t width,
                                                              float* __restrict__ out) {
    extern __shared__ float pooled[];   // [d or 3 d] with a projection
    const int64_t item = blockIdx.x;   // (batch, head, block) row-major
    const int64_t r = item % blocks;
    const int64_t grid = item / blocks;
    const int64_t b = grid / heads, h = grid % heads;
    const int64_t first = r * block;
    const int64_t rows = min(block, n - first);
    const T* base = x + b * stride_batch + h * stride_head + first * stride_row;
    const int64_t in_dim = bounds ? 3 * d : d;
    float* o = projection != nullptr ? pooled : out + item * in_dim;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        const T* p = base + c;
        float sum = 0.0f;
        float hi = to_float(p[0]), lo = hi;
#pragma unroll 8
        for (int64_t i = 0; i < rows; ++i) {
            const float v = to_float(p[i * stride_row]);
            sum += v;
            hi = (v > hi || v != v) ? v : hi;   // a NaN wins, as torch.amax / amin keep it
            lo = (v < lo || v != v) ? v : lo;
        }
        o[c] = sum / static_cast<float>(rows);
        if (bounds) {
            o[d + c] = hi;
            o[2 * d + c] = lo;
        }
    }
    if (projection == nullptr) return;
    __syncthreads();
    const float* map = projection + h * in_dim * width;
    for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
        float acc = 0.0f;
        for (int64_t i = 0; i < in_dim; ++i) acc += pooled[i] * map[i * width + j];
        out[item * width + j] = acc;
    }
}

} // namespace

void cuda_block_pool(const CudaBlockPoolCall& call) {
    const auto sizes = std::to_string(call.batch) + " x " + std::to_string(call.heads) + " x " + std::to_string(call.n) + " x " +
                       std::to_string(call.d);
    if (call.batch < 1 || call.heads < 1 || call.n < 1 || call.d < 1 || call.d > 1024)
        throw Error("cuda_block_pool: x must be [batch, heads, n, d] with every size >= 1 and d <= 1024, got " + sizes);
    if (call.block < 1) throw Error("cuda_block_pool: block must be >= 1, got " + std::to_string(call.block));
    if (call.x == nullptr || call.out == nullptr) throw Error("cuda_block_pool: x and out must not be null");
    if (call.projection != nullptr && (call.width < 1 || call.width > 1024))
        throw Error("cuda_block_pool: a projection's width must be 1 to 1024, got " + std::to_string(call.width));
    const int64_t blocks = (call.n + call.block - 1) / call.block;
    if (call.batch * call.heads * blocks > int64_t{0x7fffffff})
        throw Error("cuda_block_pool: batch x heads x blocks is over 2^31 - 1 thread blocks (" + sizes + ")");
    const int threads = static_cast<int>(std::min<int64_t>(kThreads, (call.d + 31) / 32 * 32));
    const auto grid = static_cast<unsigned>(call.batch * call.heads * blocks);
    auto* stream = static_cast<cudaStream_t>(call.stream);
    const size_t smem = call.projection != nullptr ? static_cast<size_t>(call.bounds ? 3 * call.d : call.d) * sizeof(float) : 0;
    const auto launch = [&](const auto* x) {
        block_pool_kernel<<<grid, threads, smem, stream>>>(x, call.heads, call.n, call.d, call.stride_batch, call.stride_head,
                                                        call.stride_row, call.block, blocks, call.bounds, call.projection,
                                                        call.width, call.out);
    };
    switch (call.dtype) {
        case CudaDtype::bfloat16: launch(static_cast<const __nv_bfloat16*>(call.x)); break;
        case CudaDtype::float16: launch(static_cast<const __half*>(call.x)); break;
        case CudaDtype::float32: launch(static_cast<const float*>(call.x)); break;
    }
    cuda_host::cuda_check(cudaGetLastError(), "block_pool_kernel launch");
}

} // namespace sparsa
