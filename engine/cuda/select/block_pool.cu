// cuda_block_pool (block_pool.hpp): one thread block per (batch, head, block of rows), in two ways.
//
// - Rows in 16-byte pieces (block_pool_rows_kernel), where d is a power-of-two number of 16-byte
//   pieces of at most 128 and every row starts 16-byte aligned (the pooled gate's q and k: d = 128
//   in bf16 is 16 pieces): a row is `pieces` threads, so 128 threads read 128 / pieces rows at once,
//   each thread every (128 / pieces)-th row of the block; the partial sums and bounds of those row
//   groups then meet in shared memory, added in group order.
// - Otherwise (block_pool_channels_kernel) each thread takes channels tid, tid + threads, ... and
//   walks the block's rows in order, a warp reading consecutive channels of one row at a time (2
//   bytes a thread in bf16: what the first kind replaces, at about a third of the bandwidth on an
//   H100: bench/results/learn-ruler-gpu-nvidia-h100, "Seventh run").
//
// With a projection the pooled row is kept in shared memory and its products with each output
// column are split over the block's threads in slices of the input, the slices added in order.
#include "engine/cuda/select/block_pool.hpp"

#include "engine/cuda/cuda_host.hpp"
#include "engine/error.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

namespace sparsa {

namespace {

constexpr int kThreads = 128;
constexpr int kPieceBytes = 16;

__device__ float to_float(float x) { return x; }
__device__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ float to_float(__half x) { return __half2float(x); }

// The running bounds: a NaN wins and stays, as torch.amax / amin keep it.
__device__ inline float bound_hi(float hi, float v) { return (v > hi || v != v) ? v : hi; }
__device__ inline float bound_lo(float lo, float v) { return (v < lo || v != v) ? v : lo; }

// The 16 bytes at p (16-byte aligned) as floats.
template <typename T> __device__ inline void load_piece(const T* p, float (&f)[kPieceBytes / sizeof(T)]) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        if constexpr (sizeof(T) == 4) {
            f[k] = __uint_as_float(w[k]);
        } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {   // a bf16 is a float's top half
            f[2 * k] = __uint_as_float(w[k] << 16);
            f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
        } else {
            f[2 * k] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[k] & 0xffffu)));
            f[2 * k + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[k] >> 16)));
        }
    }
}

// out[j] = sum_i pooled[i] map[i * width + j] for j < width, over the block's threads: output j's
// sum is split into `slices` slices of the input (threads j, j + width, ...), each summed in input
// order, then the slices added in order (scratch: at least blockDim.x floats).
__device__ inline void project_pooled(const float* pooled, int64_t in_dim, const float* __restrict__ map, int64_t width,
                                      float* __restrict__ out, float* scratch) {
    const int threads = static_cast<int>(blockDim.x), tid = static_cast<int>(threadIdx.x);
    if (width >= threads) {   // one thread a column, the whole input each
        for (int64_t j = tid; j < width; j += threads) {
            float acc = 0.0f;
            for (int64_t i = 0; i < in_dim; ++i) acc += pooled[i] * map[i * width + j];
            out[j] = acc;
        }
        return;
    }
    const int slices = static_cast<int>(min(threads / width, in_dim));
    const int64_t chunk = (in_dim + slices - 1) / slices;
    const int64_t j = tid % width, slice = tid / width;
    if (slice < slices) {
        float acc = 0.0f;
        const int64_t end = min(in_dim, (slice + 1) * chunk);
        for (int64_t i = slice * chunk; i < end; ++i) acc += pooled[i] * map[i * width + j];
        scratch[slice * width + j] = acc;
    }
    __syncthreads();
    if (tid < width) {
        float acc = scratch[tid];
        for (int s = 1; s < slices; ++s) acc += scratch[s * width + tid];
        out[tid] = acc;
    }
}

struct PoolShape {
    int64_t heads, n, d, stride_batch, stride_head, stride_row, block, blocks;
    bool bounds;
    __device__ int64_t in_dim() const { return bounds ? 3 * d : d; }   // a pooled row's floats
};

// Channel c's mean, and with the bounds its largest and smallest element, into the pooled row o.
__device__ inline void store_channel(float* o, const PoolShape& s, int64_t c, float mean, float hi, float lo) {
    o[c] = mean;
    if (s.bounds) {
        o[s.d + c] = hi;
        o[2 * s.d + c] = lo;
    }
}

// With a projection, block `item`'s pooled row o (in shared memory, scratch after it) through its
// head's map into out, once every thread has stored its channels; without one, nothing.
__device__ inline void project_block(const float* o, float* scratch, const PoolShape& s, int64_t item,
                                     const float* __restrict__ projection, int64_t width, float* __restrict__ out) {
    if (projection == nullptr) return;
    __syncthreads();
    const int64_t in_dim = s.in_dim(), head = item / s.blocks % s.heads;
    project_pooled(o, in_dim, projection + head * in_dim * width, width, out + item * width, scratch);
}

// The block's first row and its rows (item: (batch, head, block) row-major).
template <typename T>
__device__ inline const T* block_rows(const T* x, const PoolShape& s, int64_t item, int64_t& rows) {
    const int64_t r = item % s.blocks, grid = item / s.blocks;
    const int64_t b = grid / s.heads, h = grid % s.heads, first = r * s.block;
    rows = min(s.block, s.n - first);
    return x + b * s.stride_batch + h * s.stride_head + first * s.stride_row;
}

// Dynamic shared memory: the pooled row ([d or 3 d], with a projection), then the projection's
// slices (kThreads floats).
template <typename T>
__global__ void __launch_bounds__(kThreads) block_pool_channels_kernel(const T* __restrict__ x, PoolShape s,
                                                                       const float* __restrict__ projection, int64_t width,
                                                                       float* __restrict__ out) {
    extern __shared__ float smem[];
    const int64_t item = blockIdx.x;
    int64_t rows = 0;
    const T* base = block_rows(x, s, item, rows);
    const int64_t d = s.d, in_dim = s.in_dim();
    float* o = projection != nullptr ? smem : out + item * in_dim;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        const T* p = base + c;
        float sum = 0.0f;
        float hi = to_float(p[0]), lo = hi;
#pragma unroll 8
        for (int64_t i = 0; i < rows; ++i) {
            const float v = to_float(p[i * s.stride_row]);
            sum += v;
            hi = bound_hi(hi, v);
            lo = bound_lo(lo, v);
        }
        store_channel(o, s, c, sum / static_cast<float>(rows), hi, lo);
    }
    project_block(o, o + in_dim, s, item, projection, width, out);
}

// Dynamic shared memory: the row groups' partials ([groups, d or 3 d]), the pooled row ([d or 3 d],
// with a projection), then the projection's slices (kThreads floats). pieces: d / (16 / sizeof(T)),
// a power of two <= kThreads; blockDim.x == kThreads.
template <typename T>
__global__ void __launch_bounds__(kThreads) block_pool_rows_kernel(const T* __restrict__ x, PoolShape s, int pieces,
                                                                   const float* __restrict__ projection, int64_t width,
                                                                   float* __restrict__ out) {
    constexpr int kVec = kPieceBytes / sizeof(T);
    extern __shared__ float smem[];
    const int64_t item = blockIdx.x;
    int64_t rows = 0;
    const T* base = block_rows(x, s, item, rows);
    const int64_t d = s.d, in_dim = s.in_dim();
    const int groups = kThreads / pieces, tid = static_cast<int>(threadIdx.x);
    const int piece = tid % pieces, group = tid / pieces;

    float sum[kVec], hi[kVec], lo[kVec];
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
        sum[v] = 0.0f;
        hi[v] = -INFINITY;
        lo[v] = INFINITY;
    }
    const T* p = base + static_cast<int64_t>(piece) * kVec;
#pragma unroll 8
    for (int64_t i = group; i < rows; i += groups) {
        float f[kVec];
        load_piece(p + i * s.stride_row, f);
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
            sum[v] += f[v];
            hi[v] = bound_hi(hi[v], f[v]);
            lo[v] = bound_lo(lo[v], f[v]);
        }
    }
    float* part = smem + static_cast<int64_t>(group) * in_dim + static_cast<int64_t>(piece) * kVec;
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
        part[v] = sum[v];
        if (s.bounds) {
            part[d + v] = hi[v];
            part[2 * d + v] = lo[v];
        }
    }
    __syncthreads();

    float* o = projection != nullptr ? smem + groups * in_dim : out + item * in_dim;
    const int used = static_cast<int>(min(int64_t{groups}, rows));   // groups past the rows hold nothing (and -0.0 stays -0.0)
    for (int64_t c = tid; c < d; c += kThreads) {
        float total = 0.0f, h = -INFINITY, l = INFINITY;
        for (int g = 0; g < used; ++g) {
            const float* q = smem + g * in_dim;
            total += q[c];
            if (s.bounds) {
                h = bound_hi(h, q[d + c]);
                l = bound_lo(l, q[2 * d + c]);
            }
        }
        store_channel(o, s, c, total / static_cast<float>(rows), h, l);
    }
    project_block(o, o + in_dim, s, item, projection, width, out);
}

// d's 16-byte pieces when block_pool_rows_kernel can read x: a power of two up to kThreads, every
// row's start 16-byte aligned; else 0.
int64_t row_pieces(const CudaBlockPoolCall& call, int64_t element_bytes) {
    const int64_t vec = kPieceBytes / element_bytes;
    if (call.d % vec != 0) return 0;
    const int64_t pieces = call.d / vec;
    const bool power_of_two = (pieces & (pieces - 1)) == 0;
    const bool aligned = reinterpret_cast<uintptr_t>(call.x) % kPieceBytes == 0 && call.stride_row % vec == 0 &&
                         call.stride_head % vec == 0 && call.stride_batch % vec == 0;
    return power_of_two && pieces <= kThreads && aligned ? pieces : 0;
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
    const PoolShape shape{call.heads,     call.n,     call.d, call.stride_batch, call.stride_head, call.stride_row,
                          call.block,     blocks,     call.bounds};
    const int64_t in_dim = call.bounds ? 3 * call.d : call.d;
    const bool projected = call.projection != nullptr;
    const auto grid = static_cast<unsigned>(call.batch * call.heads * blocks);
    auto* stream = static_cast<cudaStream_t>(call.stream);
    const auto launch = [&](const auto* x) {
        using T = std::remove_cv_t<std::remove_pointer_t<decltype(x)>>;
        const int64_t pieces = row_pieces(call, sizeof(T));
        if (pieces > 0) {
            // groups x in_dim = 3 x kThreads x 16 / sizeof(T) floats at most, so under 48 KB with the rest
            const int64_t groups = kThreads / pieces;
            const size_t smem = static_cast<size_t>(groups * in_dim + (projected ? in_dim + kThreads : 0)) * sizeof(float);
            block_pool_rows_kernel<T><<<grid, kThreads, smem, stream>>>(x, shape, static_cast<int>(pieces), call.projection,
                                                                       call.width, call.out);
        } else {
            const int threads = static_cast<int>(std::min<int64_t>(kThreads, (call.d + 31) / 32 * 32));
            const size_t smem = projected ? static_cast<size_t>(in_dim + kThreads) * sizeof(float) : 0;
            block_pool_channels_kernel<T><<<grid, threads, smem, stream>>>(x, shape, call.projection, call.width, call.out);
        }
    };
    switch (call.dtype) {
        case CudaDtype::bfloat16: launch(static_cast<const __nv_bfloat16*>(call.x)); break;
        case CudaDtype::float16: launch(static_cast<const __half*>(call.x)); break;
        case CudaDtype::float32: launch(static_cast<const float*>(call.x)); break;
    }
    cuda_host::cuda_check(cudaGetLastError(), "block_pool launch");
}

} // namespace sparsa
