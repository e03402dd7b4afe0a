// Version 4 of lsh's hashing: content_hash_tc, u = x R on tensor cores (bf16 / fp16), written after
// the H100 call of 2026-12-06 23:11 UTC: lsh(64, rounds = 2, chunk 64) at n = 65,536, d = 128 spent
// 0.655 ms of its 2.009 in bucketing (32.6%; issue 14 asks under 30%), about 0.52 of it in
// content_hash3, which runs the 8.6 G float32 multiply-adds at about half the FMA rate whatever its
// thread layout (8 x 4 or 16 x 4 products a thread timed the same).
//
// The hash must stay a float32 hash (its buckets are checked against the spec's in double, and a
// bucket may move only where two of the 2b values nearly tie). x is already 16-bit, so each
// product x_i R_ij is exact in float32 if R_ij is 16-bit too: R is split on the host into three
// 16-bit pieces, R = hi + mid + lo (hi = R rounded, mid = the rest rounded, lo = the rest of that;
// bf16: within 2^-27 |R|, finer than R's own float32), and u = x lo + x mid + x hi, each a
// tensor-core product with float32 accumulation, in that order (smallest first). Three products
// on the tensor cores cost less than one on the float32 cores.
//
// Layout: the pieces as 64 "keys" of D values each, [heads][slices][3][64][D] in T (slice s holds
// the columns g = 64 s .. 64 s + 63 of the rounds side by side, g = r * cols + c; zeros past
// rounds * cols), so warp_scores (S = Q K^T of the content passes) computes a warp's 16 tokens
// against a slice's 64 columns. cols (buckets / 2) a multiple of 8 from 8 to 64: a thread's two
// columns of an 8-column tile are in one round.
#pragma once

#include "engine/cuda/content/content_fast.cuh"

namespace sparsa::cuda::content {

// pieces [3][64][D + 8] and two x tiles [2][64][D + 8], in T.
template <int D> constexpr int hash_tc_smem() { return (3 + 2) * 64 * (D + 8) * 2; }

// grid: (blocks a head, bh, slices), block 128 (a warp's 16 tokens of a 64-token tile), dynamic
// shared memory hash_tc_smem<D>(); block x walks tiles x, x + gridDim.x, ... of its head with the
// next tile's copy in flight. keys[seg * n + t] = seg << bucket_bits | argmax([u, -u]) (ties: the
// lowest index, as content_hash3), seg = seg_base + r * bh + (b * heads + h).
template <typename T, int D, typename Key>
__global__ void __launch_bounds__(128) content_hash_tc(const T* x, int64_t heads, int64_t bh, int64_t n, const T* pieces,
                                                       int32_t rounds, int32_t cols, int64_t seg_base, int32_t bucket_bits, Key* keys) {
    constexpr int kS = D + 8, kTile = 64;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* ps = reinterpret_cast<T*>(smem_raw);   // [3][64][kS]: hi, mid, lo
    T* xs = ps + 3 * 64 * kS;                 // [2][64][kS]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int64_t bhi = blockIdx.y, h = bhi % heads, tiles = (n + kTile - 1) / kTile;
    const int32_t cc = static_cast<int32_t>(blockIdx.z) * 64, cols_log2 = __ffs(cols) - 1;
    const T* xh = x + bhi * n * D;

    int64_t tile = blockIdx.x;
    if (tile >= tiles) return;
    const T* src = pieces + ((h * gridDim.z + blockIdx.z) * 3) * int64_t{64} * D;
    for (int c = threadIdx.x; c < 3 * 64 * (D / 8); c += 128) {
        const int row = c / (D / 8), col = c % (D / 8) * 8;
        cp_async_16(ps + row * kS + col, src + int64_t{row} * D + col, true);
    }
    const auto load = [&](int64_t t0, T* dst) {
        for (int c = threadIdx.x; c < 64 * (D / 8); c += 128) {
            const int row = c / (D / 8), col = c % (D / 8) * 8;
            const int64_t t = t0 + row;
            cp_async_16(dst + row * kS + col, xh + (t < n ? t : 0) * D + col, t < n);
        }
    };
    load(tile * kTile, xs);
    cp_async_commit();

#pragma unroll 1
    for (int slot = 0; tile < tiles; slot ^= 1) {
        const int64_t next = tile + gridDim.x;
        if (next < tiles) load(next * kTile, xs + (slot ^ 1) * 64 * kS);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();   // this tile's x (and the pieces) landed for every warp

        uint32_t q_frag[D / 16][4];
        warp_q_frags<D>(q_frag, xs + slot * 64 * kS);
        float s[8][4];
#pragma unroll
        for (int t = 0; t < 8; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
        warp_scores<T, D>(s, q_frag, ps + 2 * 64 * kS);   // x lo
        warp_scores<T, D>(s, q_frag, ps + 1 * 64 * kS);   // + x mid
        warp_scores<T, D>(s, q_frag, ps);                 // + x hi

#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int64_t t = tile * kTile + warp * 16 + group + 8 * half;
            float best = -INFINITY;
            int32_t best_index = INT32_MAX;
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                const int32_t g0 = cc + nt * 8;
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const float u = s[nt][2 * half + c];
                    const int32_t col = (g0 & (cols - 1)) + 2 * quad + c;
                    if (u > best || (u == best && col < best_index)) best = u, best_index = col;
                    if (-u > best || (-u == best && cols + col < best_index)) best = -u, best_index = cols + col;
                }
                if (((g0 + 8) & (cols - 1)) == 0) {   // the round's last 8 columns: its 4 threads agree, one writes
#pragma unroll
                    for (int off = 1; off < 4; off *= 2) {
                        const float ob = __shfl_xor_sync(0xffffffffu, best, off);
                        const int32_t oi = __shfl_xor_sync(0xffffffffu, best_index, off);
                        if (ob > best || (ob == best && oi < best_index)) best = ob, best_index = oi;
                    }
                    const int32_t r = g0 >> cols_log2;
                    const int64_t seg = seg_base + int64_t{r} * bh + bhi;
                    if (quad == 0 && r < rounds && t < n) keys[seg * n + t] = (static_cast<Key>(seg) << bucket_bits) | static_cast<Key>(best_index);
                    best = -INFINITY;
                    best_index = INT32_MAX;
                }
            }
        }
        __syncthreads();   // every warp is done with this tile's x before the slot is refilled
        tile = next;
    }
}

} // namespace sparsa::cuda::content
