// Backward kernel 5 (attn_bwd_kernels.cuh lists the versions): kernel 3 on Hopper's wgmma
// (sm_90a), from the forward's wgmma pieces (wgmma_steps.cuh). One warpgroup (128 threads) per
// 64-row tile, every operand in 128-byte-swizzled shared memory, P^T and dS^T (dK / dV pass) or
// dS (dQ pass) fed to the tensor cores from registers:
//   dK / dV pass, per step (64 queries): S^T = K Q^T and dP^T = V dO^T (wgmma_scores),
//     P^T = exp(S^T - lse), dS^T = P^T (dP^T - D), dV += P^T dO and dK += dS^T Q (wgmma_pv);
//   dQ pass, per step (64 keys): S = Q K^T, dP = dO V^T, P, dS, dQ += dS K.
// Long rows and columns are split into chunks as in kernel 3 (the same work items, workspace
// and attn_bwd_combine). Built for sm_90a alone in attn_bwd_wgmma.cu.
#pragma once

#include "engine/cuda/attn_bwd_kernels.cuh"
#include "engine/cuda/wgmma_steps.cuh"

namespace sparsa::cuda {

// Four swizzled [64, D] tiles (the block's own two, the step's two), aligned to 1024 bytes, then
// lse (base 2) and D of the step's rows (dK / dV pass).
template <int D> struct BwdWgmmaTraits {
    static constexpr int kTileBytes = D / 64 * 64 * 128;
    static constexpr int kSmemBytes = 4 * kTileBytes + 2 * 64 * 4 + 1024;
};

// The warpgroup's [64, D] accumulator in wgmma's layout (acc[4 t + 2 half + c]: row 16 warp +
// group + 8 half, column 8 t + 2 quad + c), times `factor`, to rows [row0, row0 + 64) of a
// [rows, D] matrix (rows at or past `limit` left out): a thread's two adjacent columns as two
// stores (kernels 5 to 7), or with Pairs (kernel 8, float32) as one 8-byte store.
template <typename T, int D, bool Pairs = false>
__device__ inline void wg_store_rows(T* out, int64_t row0, int64_t limit, const float (&acc)[D / 2], float factor) {
    static_assert(!Pairs || sizeof(T) == 4, "paired stores are float2");
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int64_t r = row0 + warp * 16 + group + 8 * half;
        if (r >= limit) continue;
#pragma unroll
        for (int t = 0; t < D / 8; ++t) {
            T* o = out + r * D + t * 8 + 2 * quad;
            if constexpr (Pairs) {
                *reinterpret_cast<float2*>(o) = make_float2(acc[4 * t + 2 * half] * factor, acc[4 * t + 2 * half + 1] * factor);
            } else {
                o[0] = from_float<T>(acc[4 * t + 2 * half] * factor);
                o[1] = from_float<T>(acc[4 * t + 2 * half + 1] * factor);
            }
        }
    }
}

// Kernel 8's stores of T. wg_store_rows writes 2 elements (4 bytes of bf16) a thread at a time: a
// warp's store covers 8 rows x 16 bytes, half of each 32-byte sector, and the dK / dV pass of a
// short column spends a large share of its time there (bench/cuda-notes.md, "The profile of
// backward kernel 6"). wg_store_rows_staged writes the tile as T to shared memory first (rows of
// D + 8 elements, so that the 4-byte writes of a warp fall in 32 different banks), then 16 bytes a
// thread, a warp two whole rows, to rows [row0, row0 + 64) of out (16-byte aligned, as the tile
// loads ask). `staging` holds 64 * (D + 8) elements of T and is free (every warp is past its last
// use); the caller waits for the block before reusing it.
template <typename T, int D> struct StagedRows {
    static constexpr int kStride = D + 8;                                   // elements a staged row
    static constexpr int kBytes = 64 * kStride * static_cast<int>(sizeof(T));
    static constexpr int kChunks = D * static_cast<int>(sizeof(T)) / 16;   // 16-byte pieces a row
};

template <typename T, int D>
__device__ inline void wg_store_rows_staged(T* out, int64_t row0, int64_t limit, const float (&acc)[D / 2], float factor, T* staging) {
    static_assert(sizeof(T) == 2, "staged stores pack 16-bit pairs");
    using Rows = StagedRows<T, D>;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        T* row = staging + (warp * 16 + group + 8 * half) * Rows::kStride;
#pragma unroll
        for (int t = 0; t < D / 8; ++t) {
            T pair[2] = {from_float<T>(acc[4 * t + 2 * half] * factor), from_float<T>(acc[4 * t + 2 * half + 1] * factor)};
            *reinterpret_cast<uint32_t*>(row + t * 8 + 2 * quad) = *reinterpret_cast<const uint32_t*>(pair);
        }
    }
    __syncthreads();
#pragma unroll
    for (int i = threadIdx.x; i < 64 * Rows::kChunks; i += 128) {
        const int r = i / Rows::kChunks, c = i % Rows::kChunks;
        if (row0 + r >= limit) continue;
        *reinterpret_cast<uint4*>(out + (row0 + r) * D + c * 8) = *reinterpret_cast<const uint4*>(staging + r * Rows::kStride + c * 8);
    }
}

// The dQ pass's end (kernels 5 to 9): dQ (times the scale) and the rows' sums of P of the tile at
// q0, or for a chunk of a split tile (slot >= 0) its float32 sums to the workspace. Kernel 8
// (Staged) stores through `staging` (wg_store_rows_staged) and in float pairs (wg_store_rows' Pairs).
template <typename T, int D, bool Staged = false>
__device__ inline void wg_dq_write(const BwdParams<T>& p, int32_t slot, int64_t b, int64_t head, int64_t q0, const float (&dq)[D / 2],
                                   const float (&p_sum)[2], T* staging = nullptr) {
    constexpr int kTile = 64;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    if constexpr (Staged) {
        if (slot >= 0) wg_store_rows<float, D, true>(p.part_a + (b * p.slots_q + slot) * kTile * D, 0, kTile, dq, 1.f);
        else wg_store_rows_staged<T, D>(p.dq + head * D, q0, p.n, dq, p.scale, staging);
    } else {
        if (slot >= 0) wg_store_rows<float, D>(p.part_a + (b * p.slots_q + slot) * kTile * D, 0, kTile, dq, 1.f);
        else wg_store_rows<T, D>(p.dq + head * D, q0, p.n, dq, p.scale);
    }
    if (p.p_sum == nullptr && slot < 0) return;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float sum = p_sum[half];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int r = warp * 16 + group + 8 * half;
        if (quad != 0) continue;
        if (slot >= 0) p.part_b[(b * p.slots_q + slot) * kTile + r] = sum;
        else if (q0 + r < p.n) p.p_sum[head + q0 + r] = sum;
    }
}

// 5, dK and dV: grid (work items of the transposed mask, 1, batch), block 128, smem kSmemBytes.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(128) attn_bwd_kernel5_dkdv(BwdParams<T> p) {
    constexpr int kTile = 64, kSub = MaskBlock / kTile, kTileBytes = BwdWgmmaTraits<D>::kTileBytes;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t base = smem_aligned_1024(smem_raw);
    const uint32_t k_tile = base, v_tile = base + kTileBytes, q_tile = base + 2 * kTileBytes, do_tile = base + 3 * kTileBytes;
    float* lse_log2 = reinterpret_cast<float*>(smem_raw + (base + 4 * kTileBytes - static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw))));
    float* delta = lse_log2 + kTile;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int64_t b = blockIdx.z, n = p.n, tiles = (n + kTile - 1) / kTile;
    const WorkItem item = p.cols.work[blockIdx.x];
    const int64_t h = item.pair / tiles, tile = item.pair % tiles, e_begin = item.ea, sub0 = item.sub, steps = item.steps;
    const int64_t k0 = tile * kTile, head = (b * p.heads + h) * n;
    const T* q_head = p.q + head * D;
    const T* do_head = p.d_o + head * D;
    const int j0 = static_cast<int>(k0 % MaskBlock);
    const float scale_log2 = p.scale * kLog2e;

    tile_load_swizzled<D, 128>(k_tile, p.k + head * D, k0, n);
    tile_load_swizzled<D, 128>(v_tile, p.v + head * D, k0, n);
    cp_async_commit();

    float dk[D / 2], dv[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

    for (int64_t step = 0; step < steps; ++step) {
        const int64_t e = e_begin + (sub0 + step) / kSub;
        const int64_t q0 = int64_t{p.cols.col_idx[e]} * MaskBlock + ((sub0 + step) % kSub) * kTile;
        const int32_t part = p.cols.partial_idx[e];
        tile_load_swizzled<D, 128>(q_tile, q_head, q0, n);
        tile_load_swizzled<D, 128>(do_tile, do_head, q0, n);
        cp_async_commit();
        if (threadIdx.x < kTile) {
            const int64_t r = q0 + threadIdx.x;
            const float l = r < n ? p.lse[head + r] : -INFINITY;
            lse_log2[threadIdx.x] = l == -INFINITY ? INFINITY : l * kLog2e;
            delta[threadIdx.x] = r < n ? p.delta[head + r] : 0.f;
        }
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();

        float st[32], dpt[32];
        wgmma_scores<T, D>(st, k_tile, q_tile);    // S^T = K Q^T
        wgmma_scores<T, D>(dpt, v_tile, do_tile);  // dP^T = V dO^T
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            uint64_t word = k0 + warp * 16 + group + 8 * half < n ? ~uint64_t{0} : 0;
            if (part >= 0) word &= partial_bits<MaskBlock>(p.cols, part, j0 + warp * 16 + group + 8 * half, q0);
#pragma unroll
            for (int t = 0; t < 8; ++t) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int col = t * 8 + 2 * quad + c, x = 4 * t + 2 * half + c;
                    const float pr = ((word >> col) & 1) != 0 ? exp2f(st[x] * scale_log2 - lse_log2[col]) : 0.f;
                    st[x] = pr;
                    dpt[x] = pr * (dpt[x] - delta[col]);
                }
            }
        }
        wgmma_pv<T, D>(dv, st, do_tile);    // dV += P^T dO
        wgmma_pv<T, D>(dk, dpt, q_tile);    // dK += dS^T Q
        __syncthreads();   // every warp is done with this step's Q and dO
    }
    if (steps == 0) cp_async_wait<0>();
    if (item.slot >= 0) {
        const int64_t row = (b * p.slots_k + item.slot) * kTile;
        wg_store_rows<float, D>(p.part_a + row * D, 0, kTile, dk, 1.f);
        wg_store_rows<float, D>(p.part_b + row * D, 0, kTile, dv, 1.f);
        return;
    }
    wg_store_rows<T, D>(p.dk + head * D, k0, n, dk, p.scale);
    wg_store_rows<T, D>(p.dv + head * D, k0, n, dv, 1.f);
}

// 5, dQ: grid (work items of the mask, 1, batch), block 128, smem kSmemBytes.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(128) attn_bwd_kernel5_dq(BwdParams<T> p) {
    constexpr int kTile = 64, kSub = MaskBlock / kTile, kTileBytes = BwdWgmmaTraits<D>::kTileBytes;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t base = smem_aligned_1024(smem_raw);
    const uint32_t q_tile = base, do_tile = base + kTileBytes, k_tile = base + 2 * kTileBytes, v_tile = base + 3 * kTileBytes;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int64_t b = blockIdx.z, n = p.n, tiles = (n + kTile - 1) / kTile;
    const WorkItem item = p.rows.work[blockIdx.x];
    const int64_t h = item.pair / tiles, tile = item.pair % tiles, e_begin = item.ea, sub0 = item.sub, steps = item.steps;
    const int64_t q0 = tile * kTile, head = (b * p.heads + h) * n;
    const T* k_head = p.k + head * D;
    const T* v_head = p.v + head * D;
    const int i0 = static_cast<int>(q0 % MaskBlock);
    const float scale_log2 = p.scale * kLog2e;

    tile_load_swizzled<D, 128>(q_tile, p.q + head * D, q0, n);
    tile_load_swizzled<D, 128>(do_tile, p.d_o + head * D, q0, n);
    cp_async_commit();

    float lse_log2[2], delta[2], p_sum[2] = {0.f, 0.f};
    lane_row_stats(p, head, q0 + warp * 16 + group, n, lse_log2, delta);
    float dq[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dq[i] = 0.f;

    for (int64_t step = 0; step < steps; ++step) {
        const int64_t e = e_begin + (sub0 + step) / kSub;
        const int64_t k0 = int64_t{p.rows.col_idx[e]} * MaskBlock + ((sub0 + step) % kSub) * kTile;
        const int32_t part = p.rows.partial_idx[e];
        tile_load_swizzled<D, 128>(k_tile, k_head, k0, n);
        tile_load_swizzled<D, 128>(v_tile, v_head, k0, n);
        cp_async_commit();
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();

        float s[32], dps[32];
        wgmma_scores<T, D>(s, q_tile, k_tile);      // S = Q K^T
        wgmma_scores<T, D>(dps, do_tile, v_tile);   // dP = dO V^T
        const uint64_t before_n = keys_before_n(k0, n);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            uint64_t word = before_n;
            if (part >= 0) word &= partial_bits<MaskBlock>(p.rows, part, i0 + warp * 16 + group + 8 * half, k0);
#pragma unroll
            for (int t = 0; t < 8; ++t) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int col = t * 8 + 2 * quad + c, x = 4 * t + 2 * half + c;
                    const float pr = ((word >> col) & 1) != 0 ? exp2f(s[x] * scale_log2 - lse_log2[half]) : 0.f;
                    p_sum[half] += pr;
                    dps[x] = pr * (dps[x] - delta[half]);
                }
            }
        }
        wgmma_pv<T, D>(dq, dps, k_tile);   // dQ += dS K
        __syncthreads();   // every warp is done with this step's K and V
    }
    if (steps == 0) cp_async_wait<0>();
    wg_dq_write<T, D>(p, item.slot, b, head, q0, dq, p_sum);
}

// [SECTION] kernels 6 to 9: kernel 5 with its products issued in pairs (kernel 6), with two
// stages of the walked tiles (kernel 7), kernel 6 with its results stored through shared
// memory, 16 bytes a thread (kernel 8), and 8 with its dK / dV pass on two stages, its lse and D
// rows copied like the tiles (kernel 9)
//
// Kernel 5 waits for each of its four wgmma batches a step before going on (S^T, dP^T, then
// dV, then dK), so the warpgroup's exponentials, its dS and the next issue each wait for the
// tensor cores, and the step's Q and dO copies (K and V in the dQ pass) start only once the
// step before is done. Kernel 6 issues S^T and dP^T together, computes P^T while dP^T is still
// in flight, and issues dV += P^T dO and dK += dS^T Q together (one wait for both). Kernel 7
// adds a second stage: the next step's tiles (and its lse and D rows) are copied during this
// step. Kernel 8 is kernel 6 with its epilogue through shared memory (wg_store_rows_staged).
// Kernel 7's rows of lse and D were plain loads by the first 64 threads, which wait for them
// before storing them to shared memory, so the warpgroup's first product of the step waited for
// a global load even with two stages; kernel 9 copies them with cp.async in the step's group
// (AsyncRows), runs its dK / dV pass on two stages and keeps 8's one-stage dQ pass (7's second
// stage cost that pass a block an SM). The shared memory per block: kernels 6 and 8 as kernel 5
// (four tiles), kernel 7 and 9's dK / dV pass six tiles.

template <int D, int Stages> struct BwdPairTraits {
    static constexpr int kTileBytes = BwdWgmmaTraits<D>::kTileBytes;
    static constexpr int kSmemBytes = (2 + 2 * Stages) * kTileBytes + Stages * 2 * 64 * 4 + 1024;
};

// A step of a kernel 6 / 7 work item over mask m (cols: the dK / dV pass; rows: the dQ pass):
// the first row (query or key) of its 64-row tile and its mask entry's partial-block index.
struct PairStep {
    int64_t first = 0;
    int32_t part = -1;
};
template <int MaskBlock>
__device__ inline PairStep pair_step_at(const DeviceMasks& m, int64_t e_begin, int64_t sub0, int64_t step) {
    constexpr int kSub = MaskBlock / 64;
    const int64_t e = e_begin + (sub0 + step) / kSub;
    return {int64_t{m.col_idx[e]} * MaskBlock + ((sub0 + step) % kSub) * 64, m.partial_idx[e]};
}

// The walked tiles of `step` (Q and dO, or K and V; load_step(first, stage) copies them) in
// kernels 6 to 9, returning the stage that holds them. One stage: cur becomes the step, its tiles
// are copied now and waited for. Two: next becomes step + 1, copied into the other stage (which
// every warp left in the step before), and this step's tiles, copied a step earlier, are waited
// for (the caller moves next to cur after the step). Then settle(stage) (a thread may finish what
// its own copies brought: they are complete for it now; kernel 9) and the block's barrier.
template <int Stages, int MaskBlock, typename Load, typename Settle>
__device__ inline int pair_step_copies(const DeviceMasks& m, int64_t e_begin, int64_t sub0, int64_t step, int64_t steps,
                                       PairStep& cur, PairStep& next, const Load& load_step, const Settle& settle) {
    const int stage = Stages == 2 ? static_cast<int>(step & 1) : 0;
    if constexpr (Stages == 1) {
        cur = pair_step_at<MaskBlock>(m, e_begin, sub0, step);
        load_step(cur.first, 0);
        cp_async_commit();
        cp_async_wait<0>();
    } else if (step + 1 < steps) {
        next = pair_step_at<MaskBlock>(m, e_begin, sub0, step + 1);
        load_step(next.first, 1 - stage);
        cp_async_commit();
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
    settle(stage);
    fence_proxy_async();
    __syncthreads();
    return stage;
}

// 6 to 9, dK and dV: grid (work items of the transposed mask, 1, batch), block 128. AsyncRows
// (kernel 9): a step's lse and D rows copied with cp.async like its tiles, instead of loaded by
// the first 64 threads, whose wait for the load held the warpgroup's first product of the step.
template <typename T, int D, int MaskBlock, int Stages, bool Staged, bool AsyncRows>
__global__ void __launch_bounds__(128) attn_bwd_kernel6_dkdv(BwdParams<T> p) {
    static_assert(Stages == 1 || Stages == 2);
    constexpr int kTile = 64, kTileBytes = BwdWgmmaTraits<D>::kTileBytes;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t base = smem_aligned_1024(smem_raw);
    // K, V, then per stage Q and dO, then per stage lse (base 2) and D of the stage's 64 rows
    const uint32_t k_tile = base, v_tile = base + kTileBytes;
    float* rows_f = reinterpret_cast<float*>(smem_raw + (base + (2 + 2 * Stages) * kTileBytes -
                                                         static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw))));

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int64_t b = blockIdx.z, n = p.n, tiles = (n + kTile - 1) / kTile;
    const WorkItem item = p.cols.work[blockIdx.x];
    const int64_t h = item.pair / tiles, tile = item.pair % tiles, e_begin = item.ea, sub0 = item.sub, steps = item.steps;
    const int64_t k0 = tile * kTile, head = (b * p.heads + h) * n;
    const T* q_head = p.q + head * D;
    const T* do_head = p.d_o + head * D;
    const int j0 = static_cast<int>(k0 % MaskBlock);
    const float scale_log2 = p.scale * kLog2e;

    // a step's copies into stage `stage`: Q, dO, and the rows' lse (base 2, an empty row's -inf
    // as +inf: P = 0) and D; rows past n get +inf and 0. With AsyncRows, lse and D are copied as
    // they are and settle_rows turns lse to base 2 once the copying thread's wait is over.
    const auto load_step = [&](int64_t q0, int stage) {
        tile_load_swizzled<D, 128>(base + (2 + 2 * stage) * kTileBytes, q_head, q0, n);
        tile_load_swizzled<D, 128>(base + (3 + 2 * stage) * kTileBytes, do_head, q0, n);
        if (threadIdx.x < kTile) {
            const int64_t r = q0 + threadIdx.x;
            if constexpr (AsyncRows) {
                float* row = rows_f + stage * 2 * kTile + threadIdx.x;
                if (r < n) {
                    cp_async_4(row, p.lse + head + r, true);
                    cp_async_4(row + kTile, p.delta + head + r, true);
                } else {
                    row[0] = INFINITY;
                    row[kTile] = 0.f;
                }
            } else {
                const float l = r < n ? p.lse[head + r] : -INFINITY;
                rows_f[stage * 2 * kTile + threadIdx.x] = l == -INFINITY ? INFINITY : l * kLog2e;
                rows_f[stage * 2 * kTile + kTile + threadIdx.x] = r < n ? p.delta[head + r] : 0.f;
            }
        }
    };
    const auto settle_rows = [&](int stage) {
        if constexpr (AsyncRows) {
            if (threadIdx.x < kTile) {
                float& l = rows_f[stage * 2 * kTile + threadIdx.x];
                l = l == -INFINITY ? INFINITY : l * kLog2e;
            }
        }
    };

    tile_load_swizzled<D, 128>(k_tile, p.k + head * D, k0, n);
    tile_load_swizzled<D, 128>(v_tile, p.v + head * D, k0, n);
    PairStep cur;   // the step's first query row and partial-block index
    if (Stages == 2 && steps > 0) {
        cur = pair_step_at<MaskBlock>(p.cols, e_begin, sub0, 0);
        load_step(cur.first, 0);
    }
    cp_async_commit();

    float dk[D / 2], dv[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

    for (int64_t step = 0; step < steps; ++step) {
        PairStep next;
        const int stage = pair_step_copies<Stages, MaskBlock>(p.cols, e_begin, sub0, step, steps, cur, next, load_step, settle_rows);
        const int64_t q0 = cur.first;
        const int32_t part = cur.part;

        const uint32_t q_tile = base + (2 + 2 * stage) * kTileBytes, do_tile = base + (3 + 2 * stage) * kTileBytes;
        const float* lse_log2 = rows_f + stage * 2 * kTile;
        const float* delta = lse_log2 + kTile;
        float st[32], dpt[32];
        wgmma_fence();
        wgmma_scores_async<T, D>(st, k_tile, q_tile);    // S^T = K Q^T
        wgmma_scores_async<T, D>(dpt, v_tile, do_tile);  // dP^T = V dO^T
        wgmma_wait<1>();
        wgmma_fence_operands(st);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            uint64_t word = k0 + warp * 16 + group + 8 * half < n ? ~uint64_t{0} : 0;
            if (part >= 0) word &= partial_bits<MaskBlock>(p.cols, part, j0 + warp * 16 + group + 8 * half, q0);
#pragma unroll
            for (int t = 0; t < 8; ++t) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int col = t * 8 + 2 * quad + c, x = 4 * t + 2 * half + c;
                    st[x] = ((word >> col) & 1) != 0 ? exp2f(st[x] * scale_log2 - lse_log2[col]) : 0.f;   // P^T
                }
            }
        }
        wgmma_wait<0>();   // dP^T, computed while the exponentials ran
        wgmma_fence_operands(dpt);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
#pragma unroll
            for (int t = 0; t < 8; ++t) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int col = t * 8 + 2 * quad + c, x = 4 * t + 2 * half + c;
                    dpt[x] = st[x] * (dpt[x] - delta[col]);   // dS^T
                }
            }
        }
        uint32_t pf_p[4][4], pf_ds[4][4];
        pack_p<T>(st, pf_p);
        pack_p<T>(dpt, pf_ds);
        wgmma_fence();
        wgmma_pv_async<T, D>(dv, pf_p, do_tile);   // dV += P^T dO
        wgmma_pv_async<T, D>(dk, pf_ds, q_tile);   // dK += dS^T Q
        wgmma_wait<0>();
        wgmma_fence_operands(dv);
        wgmma_fence_operands(dk);
        __syncthreads();   // every warp is done with this step's Q and dO
        if constexpr (Stages == 2) cur = next;
    }
    if (steps == 0) cp_async_wait<0>();
    if constexpr (Staged) {
        if (item.slot >= 0) {
            const int64_t row = (b * p.slots_k + item.slot) * kTile;
            wg_store_rows<float, D, true>(p.part_a + row * D, 0, kTile, dk, 1.f);
            wg_store_rows<float, D, true>(p.part_b + row * D, 0, kTile, dv, 1.f);
            return;
        }
        // the tiles are free: every warp passed the last step's barrier (or, with no step, this one)
        if (steps == 0) __syncthreads();
        T* staging = reinterpret_cast<T*>(smem_raw + (base - static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw))));
        wg_store_rows_staged<T, D>(p.dk + head * D, k0, n, dk, p.scale, staging);
        wg_store_rows_staged<T, D>(p.dv + head * D, k0, n, dv, 1.f, staging + 64 * StagedRows<T, D>::kStride);
        return;
    }
    if (item.slot >= 0) {
        const int64_t row = (b * p.slots_k + item.slot) * kTile;
        wg_store_rows<float, D>(p.part_a + row * D, 0, kTile, dk, 1.f);
        wg_store_rows<float, D>(p.part_b + row * D, 0, kTile, dv, 1.f);
        return;
    }
    wg_store_rows<T, D>(p.dk + head * D, k0, n, dk, p.scale);
    wg_store_rows<T, D>(p.dv + head * D, k0, n, dv, 1.f);
}

// 6 to 9, dQ: grid (work items of the mask, 1, batch), block 128.
template <typename T, int D, int MaskBlock, int Stages, bool Staged>
__global__ void __launch_bounds__(128) attn_bwd_kernel6_dq(BwdParams<T> p) {
    static_assert(Stages == 1 || Stages == 2);
    constexpr int kTile = 64, kTileBytes = BwdWgmmaTraits<D>::kTileBytes;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t base = smem_aligned_1024(smem_raw);
    // Q, dO, then per stage K and V
    const uint32_t q_tile = base, do_tile = base + kTileBytes;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int64_t b = blockIdx.z, n = p.n, tiles = (n + kTile - 1) / kTile;
    const WorkItem item = p.rows.work[blockIdx.x];
    const int64_t h = item.pair / tiles, tile = item.pair % tiles, e_begin = item.ea, sub0 = item.sub, steps = item.steps;
    const int64_t q0 = tile * kTile, head = (b * p.heads + h) * n;
    const T* k_head = p.k + head * D;
    const T* v_head = p.v + head * D;
    const int i0 = static_cast<int>(q0 % MaskBlock);
    const float scale_log2 = p.scale * kLog2e;

    const auto load_step = [&](int64_t k0, int stage) {
        tile_load_swizzled<D, 128>(base + (2 + 2 * stage) * kTileBytes, k_head, k0, n);
        tile_load_swizzled<D, 128>(base + (3 + 2 * stage) * kTileBytes, v_head, k0, n);
    };

    tile_load_swizzled<D, 128>(q_tile, p.q + head * D, q0, n);
    tile_load_swizzled<D, 128>(do_tile, p.d_o + head * D, q0, n);
    PairStep cur;   // the step's first key and partial-block index
    if (Stages == 2 && steps > 0) {
        cur = pair_step_at<MaskBlock>(p.rows, e_begin, sub0, 0);
        load_step(cur.first, 0);
    }
    cp_async_commit();

    float lse_log2[2], delta[2], p_sum[2] = {0.f, 0.f};
    lane_row_stats(p, head, q0 + warp * 16 + group, n, lse_log2, delta);
    float dq[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dq[i] = 0.f;

    for (int64_t step = 0; step < steps; ++step) {
        PairStep next;
        const int stage = pair_step_copies<Stages, MaskBlock>(p.rows, e_begin, sub0, step, steps, cur, next, load_step, [](int) {});
        const int64_t k0 = cur.first;
        const int32_t part = cur.part;

        const uint32_t k_tile = base + (2 + 2 * stage) * kTileBytes, v_tile = base + (3 + 2 * stage) * kTileBytes;
        float s[32], dps[32];
        wgmma_fence();
        wgmma_scores_async<T, D>(s, q_tile, k_tile);      // S = Q K^T
        wgmma_scores_async<T, D>(dps, do_tile, v_tile);   // dP = dO V^T
        wgmma_wait<1>();
        wgmma_fence_operands(s);
        const uint64_t before_n = keys_before_n(k0, n);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            uint64_t word = before_n;
            if (part >= 0) word &= partial_bits<MaskBlock>(p.rows, part, i0 + warp * 16 + group + 8 * half, k0);
#pragma unroll
            for (int t = 0; t < 8; ++t) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int col = t * 8 + 2 * quad + c, x = 4 * t + 2 * half + c;
                    const float pr = ((word >> col) & 1) != 0 ? exp2f(s[x] * scale_log2 - lse_log2[half]) : 0.f;
                    p_sum[half] += pr;
                    s[x] = pr;
                }
            }
        }
        wgmma_wait<0>();   // dP, computed while the exponentials ran
        wgmma_fence_operands(dps);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
#pragma unroll
            for (int t = 0; t < 8; ++t) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int x = 4 * t + 2 * half + c;
                    dps[x] = s[x] * (dps[x] - delta[half]);   // dS
                }
            }
        }
        wgmma_pv<T, D>(dq, dps, k_tile);   // dQ += dS K
        __syncthreads();   // every warp is done with this step's K and V
        if constexpr (Stages == 2) cur = next;
    }
    if (steps == 0) cp_async_wait<0>();
    if constexpr (Staged) {
        if (steps == 0) __syncthreads();   // as in the dK / dV pass: the tiles are free once every warp is here
        T* staging = reinterpret_cast<T*>(smem_raw + (base - static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw))));
        wg_dq_write<T, D, true>(p, item.slot, b, head, q0, dq, p_sum, staging);
    } else {
        wg_dq_write<T, D>(p, item.slot, b, head, q0, dq, p_sum);
    }
}

template <typename T, int D, int MaskBlock>
cudaError_t attn_bwd_wgmma_launch(const BwdParams<T>& p, bool dq_pass, int kernel, cudaStream_t stream) {
    static_assert(2 * StagedRows<T, D>::kBytes <= 4 * BwdWgmmaTraits<D>::kTileBytes, "kernels 8 and 9 stage dK and dV in their four first tiles");
    const bool two_stages = kernel == 7 || (kernel == 9 && !dq_pass);   // 9: its dK / dV pass only
    const int smem = kernel == 5 ? BwdWgmmaTraits<D>::kSmemBytes
                     : two_stages ? BwdPairTraits<D, 2>::kSmemBytes
                                  : BwdPairTraits<D, 1>::kSmemBytes;
    auto* kernel_fn = kernel == 5   ? (dq_pass ? attn_bwd_kernel5_dq<T, D, MaskBlock> : attn_bwd_kernel5_dkdv<T, D, MaskBlock>)
                      : kernel == 6 ? (dq_pass ? attn_bwd_kernel6_dq<T, D, MaskBlock, 1, false> : attn_bwd_kernel6_dkdv<T, D, MaskBlock, 1, false, false>)
                      : kernel == 7 ? (dq_pass ? attn_bwd_kernel6_dq<T, D, MaskBlock, 2, false> : attn_bwd_kernel6_dkdv<T, D, MaskBlock, 2, false, false>)
                      : dq_pass     ? attn_bwd_kernel6_dq<T, D, MaskBlock, 1, true>   // 8 and 9 share 8's dQ pass
                      : kernel == 8 ? attn_bwd_kernel6_dkdv<T, D, MaskBlock, 1, true, false>
                                    : attn_bwd_kernel6_dkdv<T, D, MaskBlock, 2, true, true>;
    const int64_t items = dq_pass ? p.items_q : p.items_k;
    cudaError_t err = cudaFuncSetAttribute(kernel_fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess || items == 0) return err;
    kernel_fn<<<dim3(static_cast<unsigned>(items), 1, static_cast<unsigned>(p.batch)), 128, smem, stream>>>(p);
    return cudaGetLastError();
}

} // namespace sparsa::cuda
