// Block-sparse attention backward kernels, kept side by side as they evolve (STYLE.md item 3),
// as the forward's are (attn_fwd_kernels.cuh, whose helpers they use). Each computes, for one
// layer's masks, the gradients of sum(dO * O) from the forward's O and lse:
//   S = scale Q K^T, P = exp(S - lse) (0 where the mask drops a pair and in empty rows),
//   D = rowsum(dO * O), dP = dO V^T, dS = P * (dP - D),
//   dV = P^T dO, dK = scale dS^T Q, dQ = scale dS K.
// dK and dV come from one pass over the mask transposed (a key tile walks the query blocks that
// keep its block), dQ from a second pass over the mask (a query tile walks its kept key blocks),
// as the CPU engine does: every sum is taken by one thread block in a fixed order, with no atomic
// adds, so results are the same from run to run. The dQ pass also writes each row's sum of P,
// which the host checks against 1 (the lse is the forward's), as the CPU engine does.
//
//   1: simple and obviously correct: one warp per key row (dK, dV) or query row (dQ), float32
//      math, one pair at a time with warp reductions. Any head dim up to 256, any mask block,
//      float32 / bf16 / fp16 storage.
//   2: tensor cores, FlashAttention-2 style on mma.sync m16n8k16 (bf16 / fp16 in, float32
//      accumulate): 64 x 64 tiles, 4 warps of 16 rows; a warp's P^T and dS^T feed dV and dK
//      straight from the accumulators; Q, K, V, dO tiles read with ldmatrix from shared memory
//      filled by cp.async, one stage. d = 64 or 128, mask blocks 64, 128, 256.
//   3: as 2, with long rows and columns split (as forward kernels 7 to 16 split theirs): a tile
//      that walks many more steps than the average (the query rows and key columns of global
//      tokens) is cut into chunks of at most a host-chosen number of steps, each chunk its own
//      thread block writing float32 partial sums (dK and dV, or dQ and the sums of P) to a slot
//      of a workspace; attn_bwd_combine adds a tile's chunks in their order (so results stay the
//      same from run to run) and writes the gradients. Launch order: longest work first.
//   4: as 3 with dQ taken in the dK / dV pass (FlashAttention-2's way): each step writes its dS^T
//      to shared memory, the block computes dS K for the step's 64 queries and adds it to a
//      float32 dQ in global memory with atomic adds; no second pass, so five products of the
//      forward's size instead of seven. dK and dV stay atomic-free; dQ's sums come in the order
//      the blocks run, so its last bits may differ from run to run.
//   5: as 3 on Hopper's wgmma (sm_90a): one warpgroup per 64-row tile, Q, K, V, dO in 128-byte-
//      swizzled shared memory, P^T, dS^T and dS from registers (the forward's wgmma pieces);
//      in attn_bwd_wgmma.cuh, built in its own translation unit (attn_bwd_wgmma.cu), declared
//      at the end of this file.
//   6: as 5 with its products issued in pairs: S^T and dP^T (S and dP) together, P^T computed
//      while dP^T is in flight, then dV += P^T dO and dK += dS^T Q together with one wait.
//   7: as 6 with two stages of the walked tiles: the next step's Q and dO (K and V in the dQ
//      pass) are copied during this step (six tiles of shared memory a block).
//   8: as 6 with its results stored through shared memory: dK, dV (dQ) written as T to the
//      block's free tiles, then to global memory 16 bytes a thread, whole rows a warp (6 stores
//      4 bytes a thread, half of each 32-byte sector); split chunks' float32 sums in pairs.
//   9: as 8 with the dK / dV pass on two stages (7's copies of the next step's Q and dO during
//      this step), the step's rows of lse and D copied with cp.async beside its tiles (6 to 8 load
//      them with plain loads that the step's first product waits for); the dQ pass is 8's.
//
// Index: [SECTION] parameters, [SECTION] D = rowsum(dO * O), [SECTION] kernel 1,
// [SECTION] kernels 2 and 3
#pragma once

#include "engine/cuda/attn_fwd_kernels.cuh"

namespace sparsa::cuda {

// [SECTION] parameters

// One backward call's tensors, all [batch, heads, n, d] except lse, delta, p_sum [batch, heads, n].
template <typename T> struct BwdParams {
    const T *q, *k, *v, *d_o;
    const T* o;             // the forward's output (D = rowsum(dO * O))
    const float* lse;       // the forward's lse (natural log; -inf for an empty row)
    float* delta;           // D, written by attn_bwd_delta
    float* p_sum;           // each row's sum of P, written by the dQ pass; nullptr: not wanted
    T *dq, *dk, *dv;
    int64_t batch, heads, n;
    int32_t d;
    float scale;            // the softmax scale, any sign
    DeviceMasks rows;       // the mask by query block (as the forward reads it); kernel 3: work, splits of the dQ pass
    DeviceMasks cols;       // the mask transposed: row r lists the query blocks that keep key block r,
                            // bit (j * B + i) of a bitmask for key j, query i of the block; kernel 3:
                            // work, splits of the dK / dV pass
    // kernel 3's workspace: dK / dV pass: part_a [batch, slots_k, 64, d] dK, part_b the same for
    // dV; dQ pass: part_a [batch, slots_q, 64, d] dQ, part_b [batch, slots_q, 64] sums of P
    float *part_a, *part_b;
    float* dq_accum;            // kernel 4: [batch, heads, n, d] dQ / scale, float32, zeroed before the pass
    int32_t slots_q, slots_k;
    int64_t items_q, items_k;   // work items of each pass (per batch)
};

constexpr float kLog2e = 1.4426950408889634f;

// [SECTION] D = rowsum(dO * O)

// One warp per row, float32 sums. grid: ceil(batch * heads * n / 4), block: 128.
template <typename T> __global__ void __launch_bounds__(128) attn_bwd_delta(BwdParams<T> p) {
    const int64_t row = int64_t{blockIdx.x} * 4 + threadIdx.x / 32, rows = p.batch * p.heads * p.n;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const T* o = p.o + row * p.d;
    const T* d_o = p.d_o + row * p.d;
    float sum = 0.f;
    for (int j = lane; j < p.d; j += 32) sum += to_float(o[j]) * to_float(d_o[j]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) p.delta[row] = sum;
}

// [SECTION] kernel 1

constexpr int kBwd1Warps = 4;   // rows per thread block

// Whether pair (row i, column j) of block entry e of `m` is allowed: full blocks allow every
// pair, partial ones bit i * B + j of their bitmask (i, j within the block).
__device__ inline bool pair_allowed(const DeviceMasks& m, int64_t e, int64_t i, int64_t j) {
    const int32_t part = m.partial_idx[e];
    if (part < 0) return true;
    const int64_t t = i * m.block + j;
    return ((m.bits[int64_t{part} * (int64_t{m.block} * m.block / 64) + t / 64] >> (t % 64)) & 1) != 0;
}

// The row of `m` (one of the layer's unique masks, chosen by head h) from block r: entries
// [*begin, *end).
__device__ inline void mask_row(const DeviceMasks& m, int64_t h, int64_t r, int64_t* begin, int64_t* end) {
    const int64_t* row_ptr = m.row_ptr + int64_t{m.head_mask[h]} * (m.q_blocks + 1);
    *begin = row_ptr[r];
    *end = row_ptr[r + 1];
}

// 1, dK and dV: one warp per key row j; lane l holds elements l, l + 32, ... of k_j, v_j and of
// the gradients. grid: (ceil(n / 4), heads, batch), block: 128 threads.
// A lane's two rows in the tensor-core dQ passes (group and group + 8 of its warp's 16, from row0):
// the log-sum-exp in log2 units (+inf for a row past n or with no allowed key, so its P is 0) and
// D = rowsum(dO * O) (0 past n).
template <typename T>
__device__ inline void lane_row_stats(const BwdParams<T>& p, int64_t head, int64_t row0, int64_t n, float (&lse_log2)[2],
                                      float (&delta)[2]) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int64_t r = row0 + 8 * half;
        const float l = r < n ? p.lse[head + r] : -INFINITY;
        lse_log2[half] = l == -INFINITY ? INFINITY : l * kLog2e;
        delta[half] = r < n ? p.delta[head + r] : 0.f;
    }
}

template <typename T> __global__ void __launch_bounds__(32 * kBwd1Warps) attn_bwd_kernel1_dkdv(BwdParams<T> p) {
    const int lane = threadIdx.x % 32;
    const int64_t j = int64_t{blockIdx.x} * kBwd1Warps + threadIdx.x / 32;
    const int64_t h = blockIdx.y, b = blockIdx.z;
    if (j >= p.n) return;
    const int64_t head = (b * p.heads + h) * p.n;   // first row of this head
    const T* q = p.q + head * p.d;
    const T* d_o = p.d_o + head * p.d;
    float kr[kKernel1MaxChunks], vr[kKernel1MaxChunks], dk[kKernel1MaxChunks], dv[kKernel1MaxChunks];
#pragma unroll
    for (int c = 0; c < kKernel1MaxChunks; ++c) {
        const int x = lane + 32 * c;
        kr[c] = x < p.d ? to_float(p.k[(head + j) * p.d + x]) : 0.f;
        vr[c] = x < p.d ? to_float(p.v[(head + j) * p.d + x]) : 0.f;
        dk[c] = dv[c] = 0.f;
    }
    const int64_t B = p.cols.block, kb = j / B;
    int64_t begin, end;
    mask_row(p.cols, h, kb, &begin, &end);
    for (int64_t e = begin; e < end; ++e) {
        const int64_t q0 = int64_t{p.cols.col_idx[e]} * B;
        for (int64_t i = 0; i < B && q0 + i < p.n; ++i) {
            const float lse = p.lse[head + q0 + i];
            if (lse == -INFINITY || !pair_allowed(p.cols, e, j % B, i)) continue;
            const T* qi = q + (q0 + i) * p.d;
            const T* doi = d_o + (q0 + i) * p.d;
            float s = 0.f, dp = 0.f;
#pragma unroll
            for (int c = 0; c < kKernel1MaxChunks; ++c) {
                const int x = lane + 32 * c;
                if (x < p.d) {
                    s += to_float(qi[x]) * kr[c];
                    dp += to_float(doi[x]) * vr[c];
                }
            }
#pragma unroll
            for (int off = 16; off > 0; off /= 2) {
                s += __shfl_xor_sync(0xffffffffu, s, off);
                dp += __shfl_xor_sync(0xffffffffu, dp, off);
            }
            const float pr = expf(p.scale * s - lse);
            const float ds = pr * (dp - p.delta[head + q0 + i]);
#pragma unroll
            for (int c = 0; c < kKernel1MaxChunks; ++c) {
                const int x = lane + 32 * c;
                if (x < p.d) {
                    dv[c] += pr * to_float(doi[x]);
                    dk[c] += ds * to_float(qi[x]);
                }
            }
        }
    }
#pragma unroll
    for (int c = 0; c < kKernel1MaxChunks; ++c) {
        const int x = lane + 32 * c;
        if (x < p.d) {
            p.dk[(head + j) * p.d + x] = from_float<T>(p.scale * dk[c]);
            p.dv[(head + j) * p.d + x] = from_float<T>(dv[c]);
        }
    }
}

// 1, dQ: one warp per query row i, as attn_bwd_kernel1_dkdv. Also each row's sum of P.
template <typename T> __global__ void __launch_bounds__(32 * kBwd1Warps) attn_bwd_kernel1_dq(BwdParams<T> p) {
    const int lane = threadIdx.x % 32;
    const int64_t i = int64_t{blockIdx.x} * kBwd1Warps + threadIdx.x / 32;
    const int64_t h = blockIdx.y, b = blockIdx.z;
    if (i >= p.n) return;
    const int64_t head = (b * p.heads + h) * p.n;
    const T* k = p.k + head * p.d;
    const T* v = p.v + head * p.d;
    float qr[kKernel1MaxChunks], dor[kKernel1MaxChunks], dq[kKernel1MaxChunks];
#pragma unroll
    for (int c = 0; c < kKernel1MaxChunks; ++c) {
        const int x = lane + 32 * c;
        qr[c] = x < p.d ? to_float(p.q[(head + i) * p.d + x]) : 0.f;
        dor[c] = x < p.d ? to_float(p.d_o[(head + i) * p.d + x]) : 0.f;
        dq[c] = 0.f;
    }
    const float lse = p.lse[head + i], delta = p.delta[head + i];
    float p_sum = 0.f;
    if (lse != -INFINITY) {
        const int64_t B = p.rows.block, qb = i / B;
        int64_t begin, end;
        mask_row(p.rows, h, qb, &begin, &end);
        for (int64_t e = begin; e < end; ++e) {
            const int64_t k0 = int64_t{p.rows.col_idx[e]} * B;
            for (int64_t j = 0; j < B && k0 + j < p.n; ++j) {
                if (!pair_allowed(p.rows, e, i % B, j)) continue;
                const T* kj = k + (k0 + j) * p.d;
                const T* vj = v + (k0 + j) * p.d;
                float s = 0.f, dp = 0.f;
#pragma unroll
                for (int c = 0; c < kKernel1MaxChunks; ++c) {
                    const int x = lane + 32 * c;
                    if (x < p.d) {
                        s += qr[c] * to_float(kj[x]);
                        dp += dor[c] * to_float(vj[x]);
                    }
                }
#pragma unroll
                for (int off = 16; off > 0; off /= 2) {
                    s += __shfl_xor_sync(0xffffffffu, s, off);
                    dp += __shfl_xor_sync(0xffffffffu, dp, off);
                }
                const float pr = expf(p.scale * s - lse);
                const float ds = pr * (dp - delta);
                p_sum += pr;
#pragma unroll
                for (int c = 0; c < kKernel1MaxChunks; ++c) {
                    const int x = lane + 32 * c;
                    if (x < p.d) dq[c] += ds * to_float(kj[x]);
                }
            }
        }
    }
#pragma unroll
    for (int c = 0; c < kKernel1MaxChunks; ++c) {
        const int x = lane + 32 * c;
        if (x < p.d) p.dq[(head + i) * p.d + x] = from_float<T>(p.scale * dq[c]);
    }
    if (lane == 0 && p.p_sum != nullptr) p.p_sum[head + i] = p_sum;
}

// [SECTION] kernels 2 and 3

// Tiling of kernel 2 (both passes): 64 rows a thread block (4 warps of 16), 64-row steps; four
// [64, D] tiles in shared memory (the block's own rows twice, the step's rows twice), with
// kernel 2's padded stride, and two float rows of 64 (lse and D of the step's or the block's rows).
template <int D, int MaskBlock> struct BwdTraits {
    static constexpr int kWarps = 4;
    static constexpr int kThreads = 32 * kWarps;
    static constexpr int kTile = 64;
    static constexpr int kStride = D + 8;
    static constexpr int kTileElems = kTile * kStride;
    static constexpr int kSmemBytes = 4 * kTileElems * 2 + 2 * kTile * 4;
    static constexpr int kDsStride = kTile + 8;                           // kernel 4's dS^T tile [64 keys, 64 queries]
    static constexpr int kSmemBytesAtomicDq = kSmemBytes + kTile * kDsStride * 2;
    static_assert(D == 64 || D == 128, "kernel 2: head dim 64 or 128");
    static_assert(MaskBlock % kTile == 0, "kernel 2: mask blocks of 64 or more");
};

// acc [16, N] (N / 8 n-tiles) += A B, for a warp: A [16, K] row-major at `a` (the warp's rows,
// stride kStride), B given as rows [N][K] at `b` (non-transposed: B^T row-major, as K for S = Q K^T).
template <typename T, int K, int N, int Stride>
__device__ inline void warp_mma_abt(float (&acc)[N / 8][4], const T* a, const T* b) {
    using Mma = MmaType<T>;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
        uint32_t af[4];
        ldmatrix_x4(af, a + (lane % 8 + 8 * ((lane / 8) % 2)) * Stride + kk * 16 + 8 * (lane / 16));
#pragma unroll
        for (int np = 0; np < N / 16; ++np) {
            uint32_t bf[4];
            ldmatrix_x4(bf, b + (np * 16 + lane % 8 + 8 * (lane / 16)) * Stride + kk * 16 + 8 * ((lane / 8) % 2));
            Mma::mma(acc[2 * np], af, bf[0], bf[1]);
            Mma::mma(acc[2 * np + 1], af, bf[2], bf[3]);
        }
    }
}

// acc [16, D] += X B for a warp: X [16, 64] in C-fragment registers (8 n-tiles, float, rounded
// to T here), B [64, D] row-major at `b` (rows are X's columns: ldmatrix.trans, as V in O += P V).
template <typename T, int D, int Stride>
__device__ inline void warp_mma_regs_b(float (&acc)[D / 8][4], const float (&x)[8][4], const T* b) {
    using Mma = MmaType<T>;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        const uint32_t xf[4] = {Mma::pack(x[2 * kk][0], x[2 * kk][1]), Mma::pack(x[2 * kk][2], x[2 * kk][3]),
                                Mma::pack(x[2 * kk + 1][0], x[2 * kk + 1][1]),
                                Mma::pack(x[2 * kk + 1][2], x[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
            uint32_t bf[4];
            ldmatrix_x4_trans(bf, b + (kk * 16 + lane % 8 + 8 * ((lane / 8) % 2)) * Stride + dp * 16 + 8 * (lane / 16));
            Mma::mma(acc[2 * dp], xf, bf[0], bf[1]);
            Mma::mma(acc[2 * dp + 1], xf, bf[2], bf[3]);
        }
    }
}

// The warp's [16, D] accumulator, times `factor`, to rows [row0 + 16 w, ...) of a head's [n, D]
// matrix (rows past n are not written).
template <typename T, int D>
__device__ inline void warp_store_rows(T* head, int64_t row0, int64_t n, const float (&acc)[D / 8][4], float factor) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int64_t r = row0 + warp * 16 + group + 8 * half;
        if (r >= n) continue;
#pragma unroll
        for (int t = 0; t < D / 8; ++t) {
            T* out = head + r * D + t * 8 + 2 * quad;
            out[0] = from_float<T>(acc[t][2 * half] * factor);
            out[1] = from_float<T>(acc[t][2 * half + 1] * factor);
        }
    }
}

// 2, dK and dV: one thread block per (64-key tile, head, batch); warp w owns keys 16w .. 16w + 15
// and computes S^T = K Q^T, P^T, dP^T = V dO^T and dS^T for them over the step's 64 queries, then
// dV += P^T dO and dK += dS^T Q. grid: (ceil(n / 64), heads, batch), block: 128, smem: kSmemBytes.
// Kernel 4 (AtomicDq): also dQ += dS K, added to p.dq_accum with atomic adds (smem: kSmemBytesAtomicDq).
template <typename T, int D, int MaskBlock, bool Split, bool AtomicDq>
__global__ void __launch_bounds__(128) attn_bwd_kernel2_dkdv(BwdParams<T> p) {
    using Traits = BwdTraits<D, MaskBlock>;
    constexpr int kStride = Traits::kStride, kTile = Traits::kTile, kSub = MaskBlock / kTile;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* k_tile = reinterpret_cast<T*>(smem_raw);
    T* v_tile = k_tile + Traits::kTileElems;
    T* q_tile = v_tile + Traits::kTileElems;
    T* do_tile = q_tile + Traits::kTileElems;
    float* lse_log2 = reinterpret_cast<float*>(do_tile + Traits::kTileElems);   // [64]: +inf: P = 0
    float* delta = lse_log2 + kTile;                                            // [64]
    T* ds_tile = reinterpret_cast<T*>(delta + kTile);                           // kernel 4: [64 keys, kDsStride]

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int64_t b = blockIdx.z, n = p.n, tiles = (n + kTile - 1) / kTile;
    int64_t tile, h, e_begin, steps, sub0 = 0;
    int32_t slot = -1;
    if constexpr (Split) {   // grid (work items, 1, batch)
        const WorkItem item = p.cols.work[blockIdx.x];
        h = item.pair / tiles;
        tile = item.pair % tiles;
        e_begin = item.ea;
        sub0 = item.sub;
        steps = item.steps;
        slot = item.slot;
    } else {                 // grid (tiles, heads, batch)
        tile = gridDim.x - 1 - blockIdx.x;
        h = blockIdx.y;
        int64_t e_end;
        mask_row(p.cols, h, tile * kTile / MaskBlock, &e_begin, &e_end);
        steps = (e_end - e_begin) * kSub;
    }
    const int64_t k0 = tile * kTile, head = (b * p.heads + h) * n;
    const T* q_head = p.q + head * D;
    const T* do_head = p.d_o + head * D;
    const int j0 = static_cast<int>(k0 % MaskBlock);   // this tile's first key within its block
    const float scale_log2 = p.scale * kLog2e;

    tile_load_async<Traits, D, kTile>(k_tile, p.k + head * D, k0, n);
    tile_load_async<Traits, D, kTile>(v_tile, p.v + head * D, k0, n);
    cp_async_commit();

    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int t = 0; t < D / 8; ++t) {
#pragma unroll
        for (int c = 0; c < 4; ++c) dk[t][c] = dv[t][c] = 0.f;
    }

    for (int64_t step = 0; step < steps; ++step) {
        const int64_t e = e_begin + (sub0 + step) / kSub;
        const int64_t q0 = int64_t{p.cols.col_idx[e]} * MaskBlock + ((sub0 + step) % kSub) * kTile;
        const int32_t part = p.cols.partial_idx[e];
        tile_load_async<Traits, D, kTile>(q_tile, q_head, q0, n);
        tile_load_async<Traits, D, kTile>(do_tile, do_head, q0, n);
        cp_async_commit();
        if (threadIdx.x < kTile) {
            const int64_t r = q0 + threadIdx.x;
            const float l = r < n ? p.lse[head + r] : -INFINITY;
            lse_log2[threadIdx.x] = l == -INFINITY ? INFINITY : l * kLog2e;
            delta[threadIdx.x] = r < n ? p.delta[head + r] : 0.f;
        }
        cp_async_wait<0>();
        __syncthreads();

        // S^T = K Q^T and dP^T = V dO^T: [16, 64] for the warp's keys
        float st[8][4], dpt[8][4];
#pragma unroll
        for (int t = 0; t < 8; ++t) {
#pragma unroll
            for (int c = 0; c < 4; ++c) st[t][c] = dpt[t][c] = 0.f;
        }
        warp_mma_abt<T, D, kTile, kStride>(st, k_tile + warp * 16 * kStride, q_tile);
        warp_mma_abt<T, D, kTile, kStride>(dpt, v_tile + warp * 16 * kStride, do_tile);

        // P^T and dS^T; masked pairs (the transposed bitmask row of each key), keys past n, and
        // queries past n or in empty rows (lse_log2 = +inf) give 0
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            uint64_t word = k0 + warp * 16 + group + 8 * half < n ? ~uint64_t{0} : 0;
            if (part >= 0) word &= partial_bits<MaskBlock>(p.cols, part, j0 + warp * 16 + group + 8 * half, q0);
#pragma unroll
            for (int t = 0; t < 8; ++t) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int col = t * 8 + 2 * quad + c;
                    const float pr = ((word >> col) & 1) != 0 ? exp2f(st[t][2 * half + c] * scale_log2 - lse_log2[col]) : 0.f;
                    st[t][2 * half + c] = pr;
                    dpt[t][2 * half + c] = pr * (dpt[t][2 * half + c] - delta[col]);
                }
            }
        }
        if constexpr (AtomicDq) {
            using Mma = MmaType<T>;
            constexpr int kDs = Traits::kDsStride;
#pragma unroll
            for (int half = 0; half < 2; ++half) {   // dS^T to shared memory, for dQ below
                T* row = ds_tile + (warp * 16 + group + 8 * half) * kDs + 2 * quad;
#pragma unroll
                for (int t = 0; t < 8; ++t) {
                    *reinterpret_cast<uint32_t*>(row + t * 8) = Mma::pack(dpt[t][2 * half], dpt[t][2 * half + 1]);
                }
            }
            if (p.p_sum != nullptr) {   // each query's sum of P over this step's keys (the lse check)
#pragma unroll
                for (int t = 0; t < 8; ++t) {
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        float sum = st[t][c] + st[t][2 + c];
                        sum += __shfl_xor_sync(0xffffffffu, sum, 4);
                        sum += __shfl_xor_sync(0xffffffffu, sum, 8);
                        sum += __shfl_xor_sync(0xffffffffu, sum, 16);
                        const int64_t r = q0 + t * 8 + 2 * quad + c;
                        if (group == 0 && r < n) atomicAdd(p.p_sum + head + r, sum);
                    }
                }
            }
        }
        warp_mma_regs_b<T, D, kStride>(dv, st, do_tile);    // dV += P^T dO
        warp_mma_regs_b<T, D, kStride>(dk, dpt, q_tile);    // dK += dS^T Q
        __syncthreads();   // every warp is done with this step's Q and dO (and has written its dS^T)
        if constexpr (AtomicDq) {
            // dQ [64, D] += dS [64 queries, 64 keys] K: warp w takes queries 16w .. 16w + 15, A from
            // dS^T by ldmatrix.trans, 32 columns of D at a time, each added to dq_accum
            using Mma = MmaType<T>;
            constexpr int kDs = Traits::kDsStride;
            uint32_t af[4][4];
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                ldmatrix_x4_trans(af[kk], ds_tile + (kk * 16 + lane % 8 + 8 * (lane / 16)) * kDs + warp * 16 + 8 * ((lane / 8) % 2));
            }
            float* dq_head = p.dq_accum + head * D;
#pragma unroll
            for (int dc = 0; dc < D / 32; ++dc) {
                float acc[4][4] = {};
#pragma unroll
                for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
                    for (int dp = 0; dp < 2; ++dp) {
                        uint32_t bf[4];
                        ldmatrix_x4_trans(bf, k_tile + (kk * 16 + lane % 8 + 8 * ((lane / 8) % 2)) * kStride + dc * 32 +
                                                  dp * 16 + 8 * (lane / 16));
                        Mma::mma(acc[2 * dp], af[kk], bf[0], bf[1]);
                        Mma::mma(acc[2 * dp + 1], af[kk], bf[2], bf[3]);
                    }
                }
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int64_t r = q0 + warp * 16 + group + 8 * half;
                    if (r >= n) continue;
#pragma unroll
                    for (int t = 0; t < 4; ++t) {
                        float* out = dq_head + r * D + dc * 32 + t * 8 + 2 * quad;
                        atomicAdd(out, acc[t][2 * half]);
                        atomicAdd(out + 1, acc[t][2 * half + 1]);
                    }
                }
            }
        }
    }
    if (steps == 0) cp_async_wait<0>();   // K and V were never waited for
    if (slot >= 0) {   // a chunk: its sums to the workspace, attn_bwd_combine adds them up
        const int64_t base = (b * p.slots_k + slot) * kTile;
        warp_store_rows<float, D>(p.part_a + base * D, 0, kTile, dk, 1.f);
        warp_store_rows<float, D>(p.part_b + base * D, 0, kTile, dv, 1.f);
        return;
    }
    warp_store_rows<T, D>(p.dk + head * D, k0, n, dk, p.scale);
    warp_store_rows<T, D>(p.dv + head * D, k0, n, dv, 1.f);
}

// 2, dQ: one thread block per (64-query tile, head, batch); warp w owns queries 16w .. 16w + 15
// and computes S = Q K^T, P, dP = dO V^T, dS over the step's 64 keys, then dQ += dS K; and its
// rows' sums of P. grid, block, smem as attn_bwd_kernel2_dkdv.
template <typename T, int D, int MaskBlock, bool Split>
__global__ void __launch_bounds__(128) attn_bwd_kernel2_dq(BwdParams<T> p) {
    using Traits = BwdTraits<D, MaskBlock>;
    constexpr int kStride = Traits::kStride, kTile = Traits::kTile, kSub = MaskBlock / kTile;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* q_tile = reinterpret_cast<T*>(smem_raw);
    T* do_tile = q_tile + Traits::kTileElems;
    T* k_tile = do_tile + Traits::kTileElems;
    T* v_tile = k_tile + Traits::kTileElems;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int64_t b = blockIdx.z, n = p.n, tiles = (n + kTile - 1) / kTile;
    int64_t tile, h, e_begin, steps, sub0 = 0;
    int32_t slot = -1;
    if constexpr (Split) {   // grid (work items, 1, batch)
        const WorkItem item = p.rows.work[blockIdx.x];
        h = item.pair / tiles;
        tile = item.pair % tiles;
        e_begin = item.ea;
        sub0 = item.sub;
        steps = item.steps;
        slot = item.slot;
    } else {                 // grid (tiles, heads, batch)
        tile = gridDim.x - 1 - blockIdx.x;
        h = blockIdx.y;
        int64_t e_end;
        mask_row(p.rows, h, tile * kTile / MaskBlock, &e_begin, &e_end);
        steps = (e_end - e_begin) * kSub;
    }
    const int64_t q0 = tile * kTile, head = (b * p.heads + h) * n;
    const T* k_head = p.k + head * D;
    const T* v_head = p.v + head * D;
    const int i0 = static_cast<int>(q0 % MaskBlock);
    const float scale_log2 = p.scale * kLog2e;

    tile_load_async<Traits, D, kTile>(q_tile, p.q + head * D, q0, n);
    tile_load_async<Traits, D, kTile>(do_tile, p.d_o + head * D, q0, n);
    cp_async_commit();

    // this lane's rows: group and group + 8 of the warp's 16
    float lse_log2[2], delta[2], p_sum[2] = {0.f, 0.f};
    lane_row_stats(p, head, q0 + warp * 16 + group, n, lse_log2, delta);
    float dq[D / 8][4];
#pragma unroll
    for (int t = 0; t < D / 8; ++t) {
#pragma unroll
        for (int c = 0; c < 4; ++c) dq[t][c] = 0.f;
    }

    for (int64_t step = 0; step < steps; ++step) {
        const int64_t e = e_begin + (sub0 + step) / kSub;
        const int64_t k0 = int64_t{p.rows.col_idx[e]} * MaskBlock + ((sub0 + step) % kSub) * kTile;
        const int32_t part = p.rows.partial_idx[e];
        tile_load_async<Traits, D, kTile>(k_tile, k_head, k0, n);
        tile_load_async<Traits, D, kTile>(v_tile, v_head, k0, n);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();

        float s[8][4], dps[8][4];
#pragma unroll
        for (int t = 0; t < 8; ++t) {
#pragma unroll
            for (int c = 0; c < 4; ++c) s[t][c] = dps[t][c] = 0.f;
        }
        warp_mma_abt<T, D, kTile, kStride>(s, q_tile + warp * 16 * kStride, k_tile);     // S = Q K^T
        warp_mma_abt<T, D, kTile, kStride>(dps, do_tile + warp * 16 * kStride, v_tile);  // dP = dO V^T

        const uint64_t before_n = keys_before_n(k0, n);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            uint64_t word = before_n;
            if (part >= 0) word &= partial_bits<MaskBlock>(p.rows, part, i0 + warp * 16 + group + 8 * half, k0);
#pragma unroll
            for (int t = 0; t < 8; ++t) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int col = t * 8 + 2 * quad + c;
                    const float pr = ((word >> col) & 1) != 0 ? exp2f(s[t][2 * half + c] * scale_log2 - lse_log2[half]) : 0.f;
                    p_sum[half] += pr;
                    dps[t][2 * half + c] = pr * (dps[t][2 * half + c] - delta[half]);
                }
            }
        }
        warp_mma_regs_b<T, D, kStride>(dq, dps, k_tile);   // dQ += dS K
        __syncthreads();   // every warp is done with this step's K and V
    }
    if (steps == 0) cp_async_wait<0>();
    if (slot >= 0) warp_store_rows<float, D>(p.part_a + (b * p.slots_q + slot) * kTile * D, 0, kTile, dq, 1.f);
    else warp_store_rows<T, D>(p.dq + head * D, q0, n, dq, p.scale);
    if (p.p_sum != nullptr || slot >= 0) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float sum = p_sum[half];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const int r = warp * 16 + group + 8 * half;
            if (quad != 0) continue;
            if (slot >= 0) p.part_b[(b * p.slots_q + slot) * kTile + r] = sum;
            else if (q0 + r < n) p.p_sum[head + q0 + r] = sum;
        }
    }
}

// Kernel 4's last step: dQ = scale * dq_accum in the dtype. grid-stride over every element.
template <typename T> __global__ void __launch_bounds__(256) attn_bwd_dq_convert(BwdParams<T> p) {
    const int64_t count = p.batch * p.heads * p.n * p.d;
    for (int64_t x = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; x < count; x += int64_t{gridDim.x} * blockDim.x) {
        p.dq[x] = from_float<T>(p.dq_accum[x] * p.scale);
    }
}

// Kernels 3 and up: the merge of one pass's split tiles. Adds each tile's chunks (slots
// [slot_begin, slot_begin + slots)) in order and writes the gradients, times `factor` (dK, dQ: the
// scale), rows past n left out. dq_pass: part_a is dQ and part_b the sums of P (to p.p_sum when
// wanted); else part_a is dK and part_b dV. grid: (split tiles, blocks a tile, batch), block 128:
// block y of a tile takes its elements y * 128 + thread, every gridDim.y * 128 (each element's sum
// in the same order for any gridDim.y, so the same bits). Each element waits on its chunks' loads
// one after another, so a tile's elements go to several blocks, as the forward's attn_combine
// does for its rows.
template <typename T, int D> __global__ void __launch_bounds__(128) attn_bwd_combine(BwdParams<T> p, bool dq_pass) {
    constexpr int kTile = 64;
    const SplitTile split = (dq_pass ? p.rows : p.cols).splits[blockIdx.x];
    const int64_t b = blockIdx.z, n = p.n, tiles = (n + kTile - 1) / kTile;
    const int64_t h = split.pair / tiles, row0 = split.pair % tiles * kTile, head = (b * p.heads + h) * n;
    const int32_t slots = dq_pass ? p.slots_q : p.slots_k;
    const int64_t first = b * slots + split.slot_begin;
    for (int x = static_cast<int>(blockIdx.y * blockDim.x + threadIdx.x); x < kTile * D; x += static_cast<int>(gridDim.y * blockDim.x)) {
        const int64_t r = x / D;
        if (row0 + r >= n) break;
        float a = 0.f, c = 0.f;
        for (int32_t s = 0; s < split.slots; ++s) {
            a += p.part_a[(first + s) * kTile * D + x];
            if (!dq_pass) c += p.part_b[(first + s) * kTile * D + x];
        }
        if (dq_pass) {
            p.dq[(head + row0) * D + x] = from_float<T>(a * p.scale);
        } else {
            p.dk[(head + row0) * D + x] = from_float<T>(a * p.scale);
            p.dv[(head + row0) * D + x] = from_float<T>(c);
        }
    }
    if (dq_pass && p.p_sum != nullptr && blockIdx.y == 0 && threadIdx.x < kTile && row0 + threadIdx.x < n) {
        float sum = 0.f;
        for (int32_t s = 0; s < split.slots; ++s) sum += p.part_b[(first + s) * kTile + threadIdx.x];
        p.p_sum[head + row0 + threadIdx.x] = sum;
    }
}

// Kernels 5 to 9 (`kernel`), in attn_bwd_wgmma.cuh, compiled for sm_90a alone in attn_bwd_wgmma.cu: the dK / dV
// pass over p.cols.work (p.items_k), or with dq_pass the dQ pass over p.rows.work (p.items_q);
// the caller launches attn_bwd_delta before and attn_bwd_combine for the split tiles after each
// pass (the two passes share the workspace).
// Declared here so the host code calls it without compiling wgmma.
template <typename T, int D, int MaskBlock> cudaError_t attn_bwd_wgmma_launch(const BwdParams<T>& p, bool dq_pass, int kernel, cudaStream_t stream);

} // namespace sparsa::cuda
