// cuda_top_k_columns (top_k_columns.hpp): one thread block per (grid, row). A row r that keeps
// every block c <= r writes 0..r. Otherwise each candidate c < r gets a 48-bit key, its score's
// order-preserving 32 bits above 16 bits of (65,535 - c), so that keys are distinct and order the
// candidates as a stable descending sort does; the (keep - 1)-th largest key is found bit by bit
// from the top (48 block-wide counts of keys at or above a trial value, no sort); the candidates at
// or above it are exactly the kept ones, written in ascending order by a ballot and a prefix over
// the block's warps, then the row's own block. The rows entry computes each candidate's score from
// the pooled gate's two sides where the row is ranked instead of reading a score grid: each query
// row of the block against the key block, pooled by log-sum-exp. (An entry scoring one pooled
// query a block the same way was slower on an H100 than a matmul and the grid: removed.)
#include "engine/cuda/select/top_k_columns.hpp"

#include "engine/cuda/cuda_host.hpp"
#include "engine/error.hpp"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

namespace sparsa {

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kIndexBits = 16;   // kTopKColumnsMaxBlocks <= 65,536
static_assert(kTopKColumnsMaxBlocks <= (int64_t{1} << kIndexBits));

// Ascending in the score: NaN above +inf (one key for every NaN), -0 and +0 equal.
__device__ uint32_t score_order(float x) {
    if (isnan(x)) return 0xffffffffu;
    if (x == 0.0f) x = 0.0f;
    const uint32_t u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Row r's first entry among its grid's columns: rows before it keep min(keep, r' + 1) each.
__device__ int64_t row_offset(int64_t r, int64_t keep) {
    return r < keep ? r * (r + 1) / 2 : keep * (keep + 1) / 2 + (r - keep) * keep;
}

// The sum of every thread's `value` (all threads call it; it synchronises twice).
__device__ int block_sum(int value, int* warp_sums) {
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
    __syncthreads();
    int total = 0;
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
    __syncthreads();   // warp_sums is written again by the next call
    return total;
}

// scores, or (a, b, width, divisor, n, row_block) when scores is null: see the entry points.
__global__ void __launch_bounds__(kThreads) top_k_columns_kernel(const float* __restrict__ scores, const float* __restrict__ a,
                                                                 const float* __restrict__ b, int32_t width, float divisor,
                                                                 int64_t n, int32_t row_block, int32_t blocks, int32_t keep,
                                                                 int64_t per_grid, int32_t* __restrict__ columns) {
    extern __shared__ uint64_t keys[];   // [blocks], then (rows) a's rows of block r: [rows, width] floats
    __shared__ int warp_sums[kWarps];
    const int64_t item = blockIdx.x;
    const int32_t r = static_cast<int32_t>(item % blocks);
    const int64_t grid = item / blocks;
    int32_t* out = columns + grid * per_grid + row_offset(r, keep);
    const int32_t take = keep - 1;   // blocks kept besides r, when the row has more candidates than that
    if (take >= r) {                  // the row keeps every causal block
        for (int32_t c = threadIdx.x; c <= r; c += kThreads) out[c] = c;
        return;
    }
    if (take == 0) {
        if (threadIdx.x == 0) out[0] = r;
        return;
    }
    const auto key = [](float score, int32_t c) {
        return (uint64_t{score_order(score)} << kIndexBits) | static_cast<uint64_t>((1 << kIndexBits) - 1 - c);
    };
    if (scores != nullptr) {
        const float* row = scores + (grid * blocks + r) * static_cast<int64_t>(blocks);
        for (int32_t c = threadIdx.x; c < r; c += kThreads) keys[c] = key(row[c], c);
    } else {   // the block's rows, each scored against c, pooled by an online log-sum-exp
        auto* a_rows = reinterpret_cast<float*>(keys + blocks);
        const int64_t first = static_cast<int64_t>(r) * row_block;
        const int32_t rows = static_cast<int32_t>(min(static_cast<int64_t>(row_block), n - first));
        const float* src = a + (grid * n + first) * width;
        for (int32_t e = threadIdx.x; e < rows * width; e += kThreads) a_rows[e] = src[e];
        __syncthreads();
        // kRowGroup rows at a time, their dot products in registers: each b value is read once a
        // group (not once a row: the first version read b[c] from memory for every row, 64 times a
        // candidate at 64-token blocks, and took 11 ms at 16 heads x 16,384 on an H100). Each
        // row's dot is still summed over j in order, as before.
        constexpr int kRowGroup = 32;
        for (int32_t c = threadIdx.x; c < r; c += kThreads) {
            const float* b_row = b + (grid * blocks + c) * width;
            float top = -INFINITY, sum = 0.0f;
            for (int32_t g = 0; g < rows; g += kRowGroup) {
                const int32_t in_group = min(kRowGroup, rows - g);
                float dot[kRowGroup];
#pragma unroll
                for (int i = 0; i < kRowGroup; ++i) dot[i] = 0.0f;
                for (int32_t j = 0; j < width; ++j) {
                    const float bj = b_row[j];
                    const float* a_col = a_rows + g * width + j;
#pragma unroll
                    for (int i = 0; i < kRowGroup; ++i)
                        if (i < in_group) dot[i] += a_col[i * width] * bj;
                }
#pragma unroll
                for (int i = 0; i < kRowGroup; ++i) {
                    if (i >= in_group) continue;
                    const float x = dot[i] / divisor;
                    if (x > top) {
                        sum = sum * expf(top - x) + 1.0f;
                        top = x;
                    } else {
                        sum += expf(x - top);
                    }
                }
            }
            keys[c] = key(top + logf(sum), c);
        }
    }
    __syncthreads();

    // The take-th largest key: the largest value with at least `take` keys at or above it.
    uint64_t threshold = 0;
    for (int bit = 32 + kIndexBits - 1; bit >= 0; --bit) {
        const uint64_t trial = threshold | (uint64_t{1} << bit);
        int count = 0;
        for (int32_t c = threadIdx.x; c < r; c += kThreads) count += keys[c] >= trial;
        if (block_sum(count, warp_sums) >= take) threshold = trial;
    }

    // The kept candidates (exactly `take`: keys are distinct) in ascending order, then r.
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int written = 0;
    for (int32_t base = 0; base < r; base += kThreads) {
        const int32_t c = base + threadIdx.x;
        const bool kept = c < r && keys[c] >= threshold;
        const uint32_t ballot = __ballot_sync(0xffffffffu, kept);
        if (lane == 0) warp_sums[warp] = __popc(ballot);
        __syncthreads();
        int before = written, round = 0;
        for (int w = 0; w < kWarps; ++w) {
            if (w < warp) before += warp_sums[w];
            round += warp_sums[w];
        }
        if (kept) out[before + __popc(ballot & ((1u << lane) - 1u))] = c;
        written += round;
        __syncthreads();
    }
    if (threadIdx.x == 0) out[take] = r;
}

void launch(const float* scores, const float* a, const float* b, int64_t width, float divisor, int64_t n, int64_t row_block,
            int64_t grids, int64_t blocks, int64_t keep, int32_t* columns, void* stream) {
    if (grids < 1) throw Error("cuda_top_k_columns: grids must be >= 1, got " + std::to_string(grids));
    if (blocks < 1 || blocks > kTopKColumnsMaxBlocks)
        throw Error("cuda_top_k_columns: blocks must be 1 to " + std::to_string(kTopKColumnsMaxBlocks) + ", got " +
                    std::to_string(blocks));
    if (keep < 1 || keep > blocks)
        throw Error("cuda_top_k_columns: keep must be 1 to blocks = " + std::to_string(blocks) + ", got " + std::to_string(keep));
    if ((scores == nullptr && (a == nullptr || b == nullptr)) || columns == nullptr)
        throw Error("cuda_top_k_columns: the scores (or a and b) and columns must not be null");
    if (scores == nullptr && (width < 1 || width > 1024))
        throw Error("cuda_top_k_columns: width must be 1 to 1024, got " + std::to_string(width));
    if (scores == nullptr && !(divisor > 0.0f && divisor < INFINITY))
        throw Error("cuda_top_k_columns: the divisor must be finite and positive, got " + std::to_string(divisor));
    if (grids * blocks > int64_t{0x7fffffff}) throw Error("cuda_top_k_columns: grids x blocks is over 2^31 - 1 thread blocks");
    const size_t a_floats = scores != nullptr ? 0 : static_cast<size_t>(width) * static_cast<size_t>(row_block);
    const size_t smem = static_cast<size_t>(blocks) * sizeof(uint64_t) + a_floats * sizeof(float);
    top_k_columns_kernel<<<static_cast<unsigned>(grids * blocks), kThreads, smem, static_cast<cudaStream_t>(stream)>>>(
        scores, a, b, static_cast<int32_t>(width), divisor, n, static_cast<int32_t>(row_block), static_cast<int32_t>(blocks),
        static_cast<int32_t>(keep), top_k_columns_per_head(blocks, keep), columns);
    cuda_host::cuda_check(cudaGetLastError(), "top_k_columns_kernel launch");
}

} // namespace

void cuda_top_k_columns(const float* scores, int64_t grids, int64_t blocks, int64_t keep, int32_t* columns, void* stream) {
    launch(scores, nullptr, nullptr, 0, 1.0f, 0, 0, grids, blocks, keep, columns, stream);
}

void cuda_top_k_columns_rows(const float* a, const float* b, int64_t width, float divisor, int64_t grids, int64_t n,
                             int64_t row_block, int64_t keep, int32_t* columns, void* stream) {
    if (n < 1 || row_block < 1 || row_block * width > kTopKRowsMaxFloats)
        throw Error("cuda_top_k_columns_rows: n and the block must be >= 1 and block x width at most " +
                    std::to_string(kTopKRowsMaxFloats) + "; got n " + std::to_string(n) + ", block " + std::to_string(row_block) +
                    ", width " + std::to_string(width));
    launch(nullptr, a, b, width, divisor, n, row_block, grids, (n + row_block - 1) / row_block, keep, columns, stream);
}

} // namespace sparsa
