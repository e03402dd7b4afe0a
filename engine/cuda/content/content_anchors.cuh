// anchors' balanced assignment on the GPU (content_cuda.cu runs it), identical to the CPU
// engine's anchors_assign (engine/content/buckets.cpp) bit for bit: the first content-cuda run on
// the H100 (bench/results/content-cuda-nvidia-h100-80gb-hbm3.md) spent 97% of anchors' 63 ms in
// the host's assignment, from float cosines that could differ from the CPU's.
//
//   anchors_cosines: per (segment, token) |x| and x . a in double, each sum over i = 0 .. d - 1
//     in order, as the CPU sums them (a product of two floats is exact in double, so the fused
//     multiply-add nvcc emits rounds as the CPU's multiply then add); cos = dot / |x| (0 for a
//     zero row), and the token's best cosine. IEEE double division and sqrt on both sides.
//   (CUB's segmented radix sort, stable: each segment's tokens by best cosine descending, ties by
//     position, as the CPU's std::stable_sort.)
//   anchors_balance: the spec's greedy (tokens in that order, each to its best anchor with room,
//     capacity ceil(n / k), ties to the lowest index) in windows of 256 tokens: every token of a
//     window picks against the room left at the window's start, in parallel; the picks are then
//     ranked in order per anchor, and the window is kept up to its first token whose anchor
//     filled before it (the rest is picked again from there). A token that picked another anchor
//     needs no second look: its pick was the best of a larger set and still has room, so it is
//     the best of the true set too. An anchor fills once, so a segment takes at most
//     n / 256 + k windows. One block a segment.
#pragma once

#include "engine/cuda/content/content_kernels.cuh"

#include <cstdint>

namespace sparsa::cuda::content {

// [SECTION] cosines in double

constexpr int kCosineTokens = 8;   // tokens a block of anchors_cosines (a warp each)

// x: [bh, n, d] rows of the side hashed; mats: [heads, rounds, d, k] float32 anchors transposed
// (content_cuda's upload); cos: [segs, n, k], best: [segs, n], token: [segs, n] (the sort's
// values: each token's position). Segment seg_base + r * bh + bhi holds round r of (batch, head)
// bhi. grid (ceil(n / 8), bh), block 256, smem 8 * d floats.
template <typename T>
__global__ void __launch_bounds__(256) anchors_cosines(const T* x, int64_t heads, int64_t bh, int64_t n, int32_t d,
                                                       const float* mats, int32_t rounds, int32_t k, int64_t seg_base,
                                                       double* cos, double* best, int32_t* token) {
    extern __shared__ float xs_all[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t t = int64_t{blockIdx.x} * kCosineTokens + warp, bhi = blockIdx.y, h = bhi % heads;
    if (t >= n) return;   // no block-wide barrier below: a warp a token
    float* xs = xs_all + warp * d;
    for (int i = lane; i < d; i += 32) xs[i] = to_float(x[(bhi * n + t) * d + i]);
    __syncwarp();
    double norm2 = 0;   // |x|^2, summed in order (every lane the same)
    for (int i = 0; i < d; ++i) norm2 += double(xs[i]) * double(xs[i]);
    const double norm = sqrt(norm2);
    for (int r = 0; r < rounds; ++r) {
        const float* m = mats + (h * rounds + r) * int64_t{d} * k;
        const int64_t seg = seg_base + r * bh + bhi;
        double top = -INFINITY;
        for (int a = lane; a < k; a += 32) {
            double dot = 0;   // x . a, summed in order
            for (int i = 0; i < d; ++i) dot += double(xs[i]) * double(m[int64_t{i} * k + a]);
            const double c = norm > 0 ? dot / norm : 0.0;
            cos[(seg * n + t) * k + a] = c;
            top = fmax(top, c);
        }
        for (int off = 16; off > 0; off /= 2) top = fmax(top, __shfl_xor_sync(0xffffffffu, top, off));
        if (lane == 0) {
            best[seg * n + t] = top + 0.0;   // -0.0 as +0.0: the radix sort would order them apart
            token[seg * n + t] = static_cast<int32_t>(t);
        }
    }
}

// [SECTION] the balanced greedy

constexpr int kBalanceThreads = 256;

// cos: [segs, n, k] (anchors_cosines); by: [segs, n] the tokens of each segment in the greedy's
// order (the sort's output); keys: [segs, n] <- seg << bucket_bits | anchor, what the bucket sort
// of content_cuda.cu reads. grid segs, block 256, smem 2 * k ints.
__global__ void __launch_bounds__(kBalanceThreads) anchors_balance(const double* cos, const int32_t* by, int64_t n, int32_t k,
                                                                   int32_t capacity, int32_t bucket_bits, uint64_t* keys) {
    extern __shared__ int32_t room_all[];
    int32_t* room = room_all;       // [k] places left
    int32_t* taken = room_all + k;  // [k] picks of the window so far, in order
    __shared__ int32_t first_bad;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int64_t seg = blockIdx.x;
    for (int a = tid; a < k; a += kBalanceThreads) room[a] = capacity, taken[a] = 0;
    __syncthreads();
    for (int64_t p0 = 0; p0 < n;) {
        // every token of the window: its best anchor with room at the window's start (ties lowest)
        const int64_t p = p0 + tid;
        int32_t t = -1, pick = -1;
        if (p < n) {
            t = by[seg * n + p];
            const double* row = cos + (seg * n + t) * k;
            double value = 0;
            for (int a = 0; a < k; ++a) {
                if (room[a] > 0 && (pick < 0 || row[a] > value)) pick = a, value = row[a];
            }
        }
        if (tid == 0) first_bad = kBalanceThreads;
        // the picks ranked in order, a warp at a time: bad when its anchor filled before it
        const unsigned live = __ballot_sync(0xffffffffu, p < n);
        bool bad = false;
        for (int w = 0; w < kBalanceThreads / 32; ++w) {
            __syncthreads();
            if (warp == w && p < n) {
                const unsigned peers = __match_any_sync(live, pick);
                const int rank = __popc(peers & ((1u << lane) - 1u));
                const int32_t before = taken[pick];
                bad = before + rank >= room[pick];
                __syncwarp(live);
                if (rank == 0) taken[pick] = before + __popc(peers);
            }
        }
        if (bad) atomicMin(&first_bad, tid);
        __syncthreads();
        const int keep = first_bad;
        if (p < n && tid < keep) {
            keys[seg * n + t] = (static_cast<uint64_t>(seg) << bucket_bits) | static_cast<uint64_t>(pick);
            atomicSub(&room[pick], 1);
        }
        __syncthreads();
        if (p < n) taken[pick] = 0;
        p0 += keep;
        __syncthreads();
    }
}

} // namespace sparsa::cuda::content
