// Version 3 of FAVOR+'s dense walk (content_band_tc2's kDense mode, content_fast.cuh, stays for
// version 2, float32 and widths other than 64 and 128). Written from Nsight Compute on the H100
// (n = 65,536, d = 128, m = 256, causal, version 3 otherwise): the key pass took 1.54 ms and the
// query pass 1.28 ms for about 0.14 TFLOP between them. content_band_tc2 runs one block a (tile,
// split) and waits for each step's copies before its products; the causal key pass's splits are
// one 128-key chunk each, so nothing in a block overlaps a copy with work.
//
//   content_dense3: one block walks a run of work items of one head, item = (query tile, key
//     split), tile-major (a block's items share Q while their tile does); keys in 64-key steps
//     through two slots: step s + 1's K, V and key biases (and Q, when s + 1 starts an item of
//     another tile) are copied (cp.async) while step s computes. Products, softmax and outputs
//     are content_band_tc2's kDense mode's, so every part is the same to the rounding.
//
//   favor_prefix8: causal FAVOR+'s exclusive prefix over key chunks with 8 columns a thread
//     (16-byte loads and stores, one set of log-sum-exp weights for 8 columns): favor_prefix took
//     0.79 ms at n = 65,536, m = 256, d = 128 on the H100 (21:20 call), computing two exp, a log and
//     a division per element for weights that every column of a feature shares.
//
// Index: [SECTION] the walk, [SECTION] the causal prefix.
#pragma once

#include "engine/cuda/content/content_fast.cuh"

namespace sparsa::cuda::content {

// [SECTION] the walk

constexpr int kDense3Slots = 2;

// Q [16 * Warps, D + 8], K and V slots [2][64, D + 8] in T, the slots' raw key biases [2][64]
// float: 87.5 KB at D = 128 and 4 warps, 105 KB with 8.
template <int D, int Warps> constexpr int dense3_smem() { return (16 * Warps + 2 * kDense3Slots * 64) * (D + 8) * 2 + kDense3Slots * 64 * 4; }

// rows [row0, row0 + Rows) of a [rows, D] matrix into `tile` (stride D + 8), rows >= end
// zero-filled, by the block's Threads threads.
template <int D, int Rows, int Threads, typename T> __device__ inline void dense3_rows(T* tile, const T* head, int64_t row0, int64_t end) {
    constexpr int kChunksPerRow = D * 2 / 16, kStride = D + 8;
    for (int c = threadIdx.x; c < Rows * kChunksPerRow; c += Threads) {
        const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
        const bool valid = row0 + r < end;
        cp_async_16(tile + r * kStride + col, head + (valid ? (row0 + r) * D + col : 0), valid);
    }
}

// One 64-key step of a warp's 16 query rows: S = Q K^T scaled plus the key's bias (log2 units;
// keys k0 + j >= kend: -inf), the online softmax, O += P V.
template <typename T, int D>
__device__ inline void dense3_step(const uint32_t (&q_frag)[D / 16][4], const T* ks, const T* vs, const float* bias, bool has_bias,
                                   int valid_keys, float scale_log2, float (&o_acc)[D / 8][4], float (&row_max)[2], float (&row_sum)[2]) {
    const int quad = threadIdx.x % 4;
    float s[8][4];
#pragma unroll
    for (int t = 0; t < 8; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
    warp_scores<T, D>(s, q_frag, ks);
    const auto logit = [&](int t, int e, float x) {   // e = 2 * half + column
        const int j = t * 8 + 2 * quad + e % 2;
        return j >= valid_keys ? -INFINITY : fmaf(x, scale_log2, has_bias ? bias[j] * kLog2e : 0.f);
    };
    warp_softmax_pv<T, D>(s, logit, vs, o_acc, row_max, row_sum);
}

// FAVOR+'s dense walk (the fields content_band_tc2's kDense mode reads: q_rows, k_rows, key_split,
// key_bias, v_tile_stride, tile_shift, bias strides; outputs o_final, o_part16 or o_part, and
// lse_part, part = split), DK = DV = D. A block walks items [blockIdx.x * items_per_block, ...)
// of head blockIdx.y, item = tile * splits + split. Per step: wait and barrier (step s's copies
// landed, every warp done with step s - 1's slot); at an item's start Q's fragments into
// registers and the accumulators cleared; when step s + 1 needs another Q, a barrier (every warp
// has read Q); step s + 1's copies; step s's products; at an item's end its output.
// Warps warps a block, 16 query rows each: a tile is 16 * Warps rows (the values of p.tile_shift
// and p.v_tile_stride count 64-row tiles, as content_band_tc2's do; a tile must not straddle two
// of their groups). Eight warps share each K / V copy among twice the rows of four.
// grid: (ceil(tiles * splits / items_per_block), bh), block 32 * Warps, dynamic shared memory dense3_smem<D, Warps>().
template <typename T, int D, int Warps>
__global__ void __launch_bounds__(32 * Warps) content_dense3(ContentParams<T> p, int32_t items_per_block) {
    constexpr int kRows = 16 * Warps, kThreads = 32 * Warps;
    static_assert(Warps % 4 == 0, "content_dense3: a tile of 64 rows or a multiple");
    using Mma = MmaType<T>;
    constexpr int kS = D + 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* q_tile = reinterpret_cast<T*>(smem_raw);
    T* k_ring = q_tile + kRows * kS;
    T* v_ring = k_ring + kDense3Slots * 64 * kS;
    float* bias_ring = reinterpret_cast<float*>(v_ring + kDense3Slots * 64 * kS);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int64_t bhi = blockIdx.y, b = bhi / p.heads, h = bhi % p.heads, n_q = p.q_rows;
    const int64_t splits = (p.k_rows + p.key_split - 1) / p.key_split, items = (n_q + kRows - 1) / kRows * splits;
    const int64_t it_begin = int64_t{blockIdx.x} * items_per_block;
    const int64_t it_end = it_begin + items_per_block < items ? it_begin + items_per_block : items;
    const T* q_head = p.q + b * p.q_bstride + h * p.q_hstride;
    const T* k_head = p.k + b * p.k_bstride + h * p.k_hstride;
    const bool has_bias = p.key_bias != nullptr;

    // item it: tile it / splits, keys [kbeg, kend) of split it % splits
    const auto kbeg_of = [&](int64_t it) { return it % splits * p.key_split; };
    const auto kend_of = [&](int64_t it) {
        const int64_t e = kbeg_of(it) + p.key_split;
        return e < p.k_rows ? e : p.k_rows;
    };
    // step (it, k0)'s K, V, biases into `slot`, and Q when asked
    const auto copy_step = [&](int64_t it, int64_t k0, int slot, bool with_q) {
        const int64_t tile = it / splits, kend = kend_of(it);
        const int64_t group64 = tile * (kRows / 64) >> p.tile_shift;   // the tile's values and biases
        if (with_q) dense3_rows<D, kRows, kThreads>(q_tile, q_head, tile * kRows, n_q);
        const T* v_head = p.v + b * p.v_bstride + h * p.v_hstride + group64 * p.v_tile_stride;
        dense3_rows<D, 64, kThreads>(k_ring + slot * 64 * kS, k_head, k0, kend);
        dense3_rows<D, 64, kThreads>(v_ring + slot * 64 * kS, v_head, k0, kend);
        if (has_bias && threadIdx.x < 64) {
            const float* kb = p.key_bias + bhi * p.bias_bh_stride + group64 * p.bias_tile_stride;
            const bool valid = k0 + threadIdx.x < kend;
            cp_async_4(bias_ring + slot * 64 + threadIdx.x, kb + (valid ? k0 + threadIdx.x : 0), valid);
        }
        cp_async_commit();
    };

    if (it_begin >= it_end) return;
    int64_t it = it_begin, k0 = kbeg_of(it);
    copy_step(it, k0, 0, true);

    uint32_t q_frag[D / 16][4];
    float o_acc[D / 8][4];
    float row_max[2], row_sum[2];
    bool item_start = true;
#pragma unroll 1
    for (int slot = 0; it < it_end; slot ^= 1) {
        cp_async_wait<0>();
        __syncthreads();
        const int64_t kend = kend_of(it);
        // the next step: this item's next 64 keys, or the next item's first
        const bool last = k0 + 64 >= kend;
        const int64_t next_it = last ? it + 1 : it, next_k0 = last ? (it + 1 < it_end ? kbeg_of(it + 1) : 0) : k0 + 64;
        const bool next_q = last && next_it < it_end && next_it / splits != it / splits;
        if (item_start) {
            if (it == it_begin || it / splits != (it - 1) / splits) warp_q_frags<D>(q_frag, q_tile);
#pragma unroll
            for (int t = 0; t < D / 8; ++t) o_acc[t][0] = o_acc[t][1] = o_acc[t][2] = o_acc[t][3] = 0.f;
            row_max[0] = row_max[1] = -INFINITY;
            row_sum[0] = row_sum[1] = 0.f;
        }
        if (next_q) __syncthreads();   // every warp has this tile's Q in registers
        if (next_it < it_end) copy_step(next_it, next_k0, slot ^ 1, next_q);
        dense3_step<T, D>(q_frag, k_ring + slot * 64 * kS, v_ring + slot * 64 * kS, bias_ring + slot * 64, has_bias,
                          static_cast<int>(kend - k0), p.scale_log2, o_acc, row_max, row_sum);
        if (last) {
            const int64_t tile = it / splits, part = it % splits;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                float sum = row_sum[half];
                sum += __shfl_xor_sync(0xffffffffu, sum, 1);
                sum += __shfl_xor_sync(0xffffffffu, sum, 2);
                const int64_t s = tile * kRows + warp * 16 + group + 8 * half;
                if (s >= n_q) continue;
                const float inv = sum > 0.f ? 1.f / sum : 0.f;
                const int64_t row = bhi * n_q + s;
                if (p.o_final != nullptr || p.o_part16 != nullptr) {
                    T* o = p.o_final != nullptr ? p.o_final + row * D : p.o_part16 + (part * p.bh * n_q + row) * D;
#pragma unroll
                    for (int t = 0; t < D / 8; ++t) {
                        *reinterpret_cast<uint32_t*>(o + t * 8 + 2 * quad) = Mma::pack(o_acc[t][2 * half] * inv, o_acc[t][2 * half + 1] * inv);
                    }
                } else {
                    float* o = p.o_part + (part * p.bh * n_q + row) * D;
#pragma unroll
                    for (int t = 0; t < D / 8; ++t) {
                        *reinterpret_cast<float2*>(o + t * 8 + 2 * quad) = make_float2(o_acc[t][2 * half] * inv, o_acc[t][2 * half + 1] * inv);
                    }
                }
                if (quad == 0 && p.lse_part != nullptr) {
                    p.lse_part[part * p.bh * n_q + row] = sum > 0.f ? (row_max[half] + __log2f(sum)) * kLn2 : -INFINITY;
                }
            }
        }
        item_start = last;
        it = next_it;
        k0 = next_k0;
    }
    cp_async_wait<0>();
}

// [SECTION] the causal prefix

// favor_prefix (content_kernels.cuh) for parts in T, d % 8 == 0: per (bh, feature j, 8 columns),
// state of chunk i = the log-sum-exp merge of chunks 0 .. i - 1 (-inf and 0 for i = 0), the same
// merges in the same order. part_o [chunks, bh, m, d] in T, part_lse [chunks, bh, m];
// out_v [bh, chunks, m, d] in T, out_lse [bh, chunks, m]. grid: ceil(bh * m * d / 8 / 128), block 128.
template <typename T>
__global__ void __launch_bounds__(128) favor_prefix8(const T* __restrict__ part_o, const float* __restrict__ part_lse, int64_t chunks,
                                                     int64_t bh, int64_t m, int32_t d, T* __restrict__ out_v, float* __restrict__ out_lse) {
    const int64_t i = int64_t{blockIdx.x} * 128 + threadIdx.x, groups = d / 8;
    if (i >= bh * m * groups) return;
    const int64_t c = i % groups * 8, j = (i / groups) % m, bhi = i / (groups * m);
    constexpr int kAhead = 8;   // chunks whose loads are in flight before their merges
    float L = -INFINITY, acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int64_t ch0 = 0; ch0 < chunks; ch0 += kAhead) {
        float l[kAhead];
        uint4 x[kAhead];
#pragma unroll
        for (int u = 0; u < kAhead; ++u) {
            const int64_t ch = ch0 + u < chunks ? ch0 + u : chunks - 1;
            l[u] = part_lse[(ch * bh + bhi) * m + j];
            x[u] = *reinterpret_cast<const uint4*>(part_o + ((ch * bh + bhi) * m + j) * d + c);
        }
#pragma unroll
        for (int u = 0; u < kAhead; ++u) {
            if (ch0 + u >= chunks) break;
            const int64_t out_row = (bhi * chunks + ch0 + u) * m + j;
            T o[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) o[e] = from_float<T>(acc[e]);
            *reinterpret_cast<uint4*>(out_v + out_row * d + c) = *reinterpret_cast<const uint4*>(o);
            if (c == 0) out_lse[out_row] = L;
            if (l[u] == -INFINITY) continue;
            T xv[8];
            memcpy(xv, &x[u], sizeof xv);
            if (L == -INFINITY) {
                L = l[u];
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[e] = to_float(xv[e]);
                continue;
            }
            const float mx = fmaxf(L, l[u]), wa = __expf(L - mx), wb = __expf(l[u] - mx);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[e] = __fdividef(acc[e] * wa + to_float(xv[e]) * wb, wa + wb);
            L = mx + __logf(wa + wb);
        }
    }
}

} // namespace sparsa::cuda::content
