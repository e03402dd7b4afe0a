// Block-sparse attention forward kernels, kept side by side as they evolve (STYLE.md item 3).
// Each walks only the kept key blocks of its query block (CSR of a BlockMask), full blocks
// without masking, partial blocks with their bitmask; O and lse out, empty rows give 0 / -inf.
//
//   1: simple and obviously correct: one warp per query row, float32 math, one key at a time
//      (online softmax per key). Any head dim up to 256, any mask block, float32 / bf16 / fp16.
//   2: tensor cores, FlashAttention-2 style: one thread block per 64-query tile, 4 warps of 16
//      rows, S = Q K^T and O += P V with mma.sync m16n8k16 (bf16 / fp16 in, float32 accumulate),
//      ldmatrix loads, cp.async copies; one shared-memory stage (load, wait, compute).
//   3: as 2, with the next key tile's K and V copied (cp.async) while the current one computes:
//      two shared-memory stages.
//   4: as 2, with the (head, query tile) pairs launched in order of work from a table: rows that
//      keep many more blocks (global tokens) start first instead of running alone at the end;
//      work is compared by its power of two, so similar tiles keep their head-major order (and
//      their K, V in L2).
//   5: as 4, with 32 query rows a warp (two 16-row m-tiles) instead of 16, so every K and V
//      fragment read from shared memory with ldmatrix feeds two MMAs instead of one (half the
//      shared-memory reads per MMA, which bound kernels 2 to 4); Q read from shared memory at
//      each step (no room in registers); K and V in separate buffers with staggered copies
//      (V's copy overlaps S = Q K^T, the next K's copy overlaps O += P V), exp2 with the scale
//      folded into one FMA. 64-query tiles: 2 warps, 64 threads.
//   6: as 5 with 128-query tiles (4 warps): K and V tiles are shared by twice the rows (half
//      the L2 traffic). With 64-token mask blocks a tile spans two mask rows: it walks the union
//      of their kept blocks, and a warp whose mask row lacks the block skips that step.
//   7: as 6, with long rows split (flash-decoding style): a tile that visits many more key
//      tiles than the average (global tokens) is cut into chunks of at most a host-chosen
//      number of steps, each chunk its own thread block writing an unnormalised float32 O and
//      its running max and sum; attn_combine then merges a tile's chunks into O and lse.
//   8: as 7 with kernel 5's 64-query tiles (2 warps): one mask row per tile even with 64-token
//      blocks, so no step is spent on the other row's blocks.
//   9: as 8, with the first step's V copied together with Q and the first K, so a short row
//      (a few kept blocks) waits for one copy at its start instead of two. The host's choice
//      for bf16 and fp16 (kernel 0) is 7 or 9, whichever its count of key-tile steps predicts
//      faster; on compute capability 9.0 it is 10.
//  10: as 8 on Hopper's wgmma (sm_90a): one warpgroup of 64 query rows, Q, K, V in 128-byte-
//      swizzled shared memory, P from registers.
//  11: as 10 with 128-query tiles (two warpgroups sharing K and V, kernel 7's walk of two mask
//      rows) and two K / V stages.
//  12: as 11 with mbarriers on a ring of three K / V stages instead of the block's barrier, so
//      the two warpgroups drift apart (one's softmax beside the other's products).
//  13: 10 made persistent (as many blocks as fit, each taking work items from a counter; the
//      next tile's Q and first K copied during a tile's last step).
//  14: 10 with later steps' K and V tiles prefetched into L2.
//  15: 10 with the mask metadata of each step read a step ahead.
//  16: 15 with the next step's S = Q K^T in flight during this step's softmax (two K and two V
//      buffers, one barrier a step, two blocks an SM).
//  17: 12's tiles with a producer warpgroup issuing every copy and two consumer warpgroups
//      (setmaxnreg), each with 16's O += P V in flight during its softmax, taking turns to issue
//      their products (ping-pong); the producer also walks the mask, writing each step's mask
//      records beside its stage for the consumers.
//  18: 17 with 128 keys a step (two 64-key tiles, one softmax, rescale and turn for both).
//  19: 18 made persistent (a block an SM, each taking work item blockIdx.x, then the ones it claims
//      from a counter; the producer loads the next item's Q and first K / V while the consumers
//      finish the item before).
//  10 to 16 are in attn_fwd_wgmma.cuh, 17 to 19 in attn_fwd_ws.cuh, built in translation units of
//  their own (attn_fwd_wgmma.cu, attn_fwd_ws.cu) for sm_90a; declared at the end of this file.
//
// Index: [SECTION] masks on the device, [SECTION] kernel 1, [SECTION] tensor-core helpers,
// [SECTION] kernels 2 to 4, [SECTION] kernels 5 to 9, [SECTION] kernels 10 to 19.
#pragma once

#include "engine/cuda/ptx_sm80.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace sparsa::cuda {

// [SECTION] masks on the device

// Kernel 7's work: one thread block each. A chunk starts at a KeyCursor state (below) and
// visits `steps` key tiles; slot < 0: the tile's whole row, O written directly; else its
// partial results go to slot `slot` of the workspace.
struct WorkItem {
    int64_t ea, eb;   // the cursor's list entries at the start
    int32_t pair;     // head * q_tiles + tile
    int32_t sub;      // the cursor's key tile within the block at the start
    int32_t steps;
    int32_t slot;
};
// A split tile: its chunks are slots [slot_begin, slot_begin + slots).
struct SplitTile {
    int32_t pair;
    int32_t slot_begin;
    int32_t slots;
};

// The unique masks of one MaskSet layer, concatenated as in the .npz file (docs/formats.md):
// row_ptr is absolute into col_idx, partial_idx indexes `bits` globally.
struct DeviceMasks {
    const int64_t* row_ptr;      // [unique, q_blocks + 1]
    const int32_t* col_idx;      // [total kept]
    const int32_t* partial_idx;  // [total kept] -1 full, else the bitmask
    const uint64_t* bits;        // [total partials, B * B / 64]
    const int32_t* head_mask;    // [heads] unique mask of each head
    const int32_t* tile_order;   // [heads * q_tiles] launch order of (head, query tile) as head * q_tiles + tile (kernels 4 to 6)
    int32_t block;               // B
    int64_t q_blocks;            // ceil(n / B)
    const WorkItem* work;        // [work items] kernel 7, in launch order
    const SplitTile* splits;     // [split tiles] kernel 7's attn_combine
};

// The keys of the 64-key tile from k0 that lie before n: bit j for key k0 + j (the short last
// block's keys past n are never allowed).
__device__ inline uint64_t keys_before_n(int64_t k0, int64_t n) {
    const int64_t valid = n - k0;
    return valid <= 0 ? 0 : valid >= 64 ? ~uint64_t{0} : (uint64_t{1} << valid) - 1;
}

// Row i (within its mask block) of partial block `part` over the 64-key tile from k0: bit j for
// key k0 + j.
template <int MaskBlock> __device__ inline uint64_t partial_bits(const DeviceMasks& m, int32_t part, int i, int64_t k0) {
    return m.bits[int64_t{part} * (MaskBlock * MaskBlock / 64) + int64_t{i} * (MaskBlock / 64) + (k0 % MaskBlock) / 64];
}

// Where one attention call's tensors are; all [batch, heads, n, d] except lse [batch, heads, n].
template <typename T> struct AttnParams {
    const T* q;
    const T* k;
    const T* v;
    T* o;
    float* lse;
    int64_t batch, heads, n;
    int32_t d;
    float scale_log2;   // softmax scale * log2(e): scores are taken in base 2
    DeviceMasks masks;
    float* partial_o;    // kernels 7 to 16: [batch, slots, query tile, d] unnormalised O of each chunk
    float* partial_ml;   // kernels 7 to 16: [batch, slots, query tile, 2] each row's max (base 2) and sum
    int32_t slots;       // kernels 7 to 15: chunks of split tiles, per batch
    int64_t work_items;  // kernels 7 to 15: entries of masks.work (per batch)
    int* work_counter;   // kernels 13 and 19: work items claimed so far past the first of each block (zeroed at
                         // launch; 19: one counter a batch index)
    cudaStream_t stream; // the stream every launch of the call goes to (host side only; nullptr: the default stream)
};

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ inline float to_float(__half x) { return __half2float(x); }
template <typename T> __device__ inline T from_float(float x);
template <> __device__ inline float from_float<float>(float x) { return x; }
template <> __device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ inline __half from_float<__half>(float x) { return __float2half(x); }

// [SECTION] kernel 1

constexpr int kKernel1Warps = 4;       // query rows per thread block
constexpr int kKernel1MaxChunks = 8;   // d <= 32 * 8

// 1: one warp per query row; lane j holds elements j, j + 32, ... of q and of the output.
// grid: (ceil(n / 4), heads, batch), block: 128 threads.
template <typename T> __global__ void __launch_bounds__(32 * kKernel1Warps) attn_fwd_kernel1(AttnParams<T> p) {
    const int lane = threadIdx.x % 32;
    const int64_t row = int64_t{blockIdx.x} * kKernel1Warps + threadIdx.x / 32;
    const int64_t h = blockIdx.y, b = blockIdx.z;
    if (row >= p.n) return;
    const int64_t head_offset = ((b * p.heads + h) * p.n) * p.d;
    const T* q = p.q + head_offset + row * p.d;
    const T* k = p.k + head_offset;
    const T* v = p.v + head_offset;

    float qr[kKernel1MaxChunks], acc[kKernel1MaxChunks];
#pragma unroll
    for (int c = 0; c < kKernel1MaxChunks; ++c) {
        const int j = lane + 32 * c;
        qr[c] = j < p.d ? to_float(q[j]) : 0.f;
        acc[c] = 0.f;
    }

    const DeviceMasks& m = p.masks;
    const int32_t B = m.block;
    const int64_t qb = row / B, i = row % B;
    const int64_t* row_ptr = m.row_ptr + int64_t{m.head_mask[h]} * (m.q_blocks + 1);
    float row_max = -INFINITY, row_sum = 0.f;   // running max (base 2) and sum of exp2
    for (int64_t e = row_ptr[qb]; e < row_ptr[qb + 1]; ++e) {
        const int64_t k0 = int64_t{m.col_idx[e]} * B;
        const int32_t part = m.partial_idx[e];
        const uint64_t* bits = part >= 0 ? m.bits + int64_t{part} * (int64_t{B} * B / 64) : nullptr;
        for (int64_t j = 0; j < B && k0 + j < p.n; ++j) {
            if (bits != nullptr) {   // partial block: bit i*B + j
                const int64_t t = i * B + j;
                if (((bits[t / 64] >> (t % 64)) & 1) == 0) continue;
            }
            // S = q . k_j (warp reduction)
            float s = 0.f;
#pragma unroll
            for (int c = 0; c < kKernel1MaxChunks; ++c) {
                const int jj = lane + 32 * c;
                if (jj < p.d) s += qr[c] * to_float(k[(k0 + j) * p.d + jj]);
            }
#pragma unroll
            for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
            s *= p.scale_log2;
            // online softmax: rescale what came before to the new max
            const float new_max = fmaxf(row_max, s);
            const float correction = exp2f(row_max - new_max);   // 0 for the first key
            const float weight = exp2f(s - new_max);
            row_sum = row_sum * correction + weight;
            row_max = new_max;
            // O += p_j v_j
#pragma unroll
            for (int c = 0; c < kKernel1MaxChunks; ++c) {
                const int jj = lane + 32 * c;
                if (jj < p.d) acc[c] = acc[c] * correction + weight * to_float(v[(k0 + j) * p.d + jj]);
            }
        }
    }

    T* o = p.o + head_offset + row * p.d;
    const float inv = row_sum > 0.f ? 1.f / row_sum : 0.f;   // empty row: zeros
#pragma unroll
    for (int c = 0; c < kKernel1MaxChunks; ++c) {
        const int j = lane + 32 * c;
        if (j < p.d) o[j] = from_float<T>(acc[c] * inv);
    }
    if (lane == 0) {
        p.lse[(b * p.heads + h) * p.n + row] =
            row_sum > 0.f ? (row_max + log2f(row_sum)) * 0.6931471805599453f : -INFINITY;
    }
}

// [SECTION] tensor-core helpers (the PTX wrappers, mma.sync, ldmatrix and cp.async, are in
// ptx_sm80.cuh)

// Tiling of kernels 2 and 3 for head dim D and mask block B (flash-attention's kernel_traits).
template <int D, int MaskBlock, int Stages> struct AttnTraits {
    static constexpr int kWarps = 4;
    static constexpr int kThreads = 32 * kWarps;
    static constexpr int kTileQ = 16 * kWarps;      // 64 query rows per thread block
    static constexpr int kTileK = 64;               // keys per step: one 64-bit word of a bitmask row
    static constexpr int kStride = D + 8;           // shared row stride in elements: +16 bytes, no ldmatrix bank conflicts
    static constexpr int kStages = Stages;          // K/V shared-memory buffers
    static constexpr int kTileElems = kTileK * kStride;
    static constexpr int kSmemBytes = (kTileQ + 2 * kStages * kTileK) * kStride * 2;
    static_assert(D % 16 == 0 && D >= 16 && D <= 256, "head dim: a multiple of 16 up to 256");
    static_assert(MaskBlock % kTileK == 0 && MaskBlock % kTileQ == 0, "mask block: a multiple of 64");
    static_assert(kTileQ == kTileK, "a query tile and a key tile share the bitmask word layout");
    static_assert(Stages == 1 || Stages == 2, "one or two K/V stages");
};

// tile = rows [row0, row0 + Rows) of a head's [n, D] matrix into shared memory (stride Traits::kStride),
// rows past n zero-filled. Every thread of the block takes part.
template <typename Traits, int D, int Rows, typename T>
__device__ inline void tile_load_async(T* tile, const T* head, int64_t row0, int64_t n) {
    constexpr int kChunksPerRow = D * 2 / 16;   // 16-byte chunks
    for (int c = threadIdx.x; c < Rows * kChunksPerRow; c += Traits::kThreads) {
        const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
        const bool valid = row0 + r < n;
        const T* src = head + (valid ? (row0 + r) * D + col : 0);
        cp_async_16(tile + r * Traits::kStride + col, src, valid);
    }
}

// [SECTION] kernels 2 to 4

// One thread block per (64-query tile, head, batch); warp w owns query rows 16w .. 16w + 15.
// grid: (ceil(n / 64), heads, batch), or (heads * ceil(n / 64), 1, batch) with WorkOrder; block: 128
// threads, dynamic shared memory Traits::kSmemBytes.
template <typename T, int D, int MaskBlock, int Stages, bool WorkOrder>
__device__ inline void attn_fwd_tensor_core(const AttnParams<T>& p) {
    using Traits = AttnTraits<D, MaskBlock, Stages>;
    using Mma = MmaType<T>;
    constexpr int kTileQ = Traits::kTileQ, kTileK = Traits::kTileK, kStride = Traits::kStride;
    constexpr int kSubTiles = MaskBlock / kTileK;   // key tiles per mask block
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* q_tile = reinterpret_cast<T*>(smem_raw);                  // [64, D]
    T* k_tiles = q_tile + kTileQ * kStride;                      // [Stages, 64, D]
    T* v_tiles = k_tiles + Stages * Traits::kTileElems;          // [Stages, 64, D]

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int group = lane / 4, quad = lane % 4;
    int64_t tile, h;
    if constexpr (WorkOrder) {   // grid (heads * tiles, 1, batch): the pair comes from the table
        const int64_t tiles = (p.n + kTileQ - 1) / kTileQ, pair = p.masks.tile_order[blockIdx.x];
        h = pair / tiles;
        tile = pair % tiles;
    } else {                     // grid (tiles, heads, batch): late (causal: heavy) tiles first
        tile = gridDim.x - 1 - blockIdx.x;
        h = blockIdx.y;
    }
    const int64_t b = blockIdx.z, n = p.n;
    const int64_t q0 = tile * kTileQ;
    const int64_t head_offset = ((b * p.heads + h) * n) * D;
    const T* k_head = p.k + head_offset;
    const T* v_head = p.v + head_offset;

    // The row of the mask: query block qb, this tile's rows start at row i0 of it.
    const DeviceMasks& m = p.masks;
    const int64_t qb = q0 / MaskBlock;
    const int i0 = static_cast<int>(q0 % MaskBlock);
    const int64_t* row_ptr = m.row_ptr + int64_t{m.head_mask[h]} * (m.q_blocks + 1);
    const int64_t e_begin = row_ptr[qb];
    const int64_t steps = (row_ptr[qb + 1] - e_begin) * kSubTiles;   // key tiles to visit

    auto key_tile_start = [&](int64_t step) {
        return int64_t{m.col_idx[e_begin + step / kSubTiles]} * MaskBlock + (step % kSubTiles) * kTileK;
    };
    auto load_kv = [&](int64_t step, int stage) {
        const int64_t k0 = key_tile_start(step);
        tile_load_async<Traits, D, kTileK>(k_tiles + stage * Traits::kTileElems, k_head, k0, n);
        tile_load_async<Traits, D, kTileK>(v_tiles + stage * Traits::kTileElems, v_head, k0, n);
    };

    tile_load_async<Traits, D, kTileQ>(q_tile, p.q + head_offset, q0, n);
    if (steps > 0) load_kv(0, 0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    // This warp's Q rows as A fragments, kept in registers: [D / 16] k-chunks.
    uint32_t q_frag[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const int r = warp * 16 + lane % 8 + 8 * ((lane / 8) % 2), c = kk * 16 + 8 * (lane / 16);
        ldmatrix_x4(q_frag[kk], q_tile + r * kStride + c);
    }

    float o_acc[D / 8][4];   // O [16, D] of this warp: D / 8 n-tiles of 16 x 8
#pragma unroll
    for (int t = 0; t < D / 8; ++t) o_acc[t][0] = o_acc[t][1] = o_acc[t][2] = o_acc[t][3] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY};   // rows group and group + 8, base 2
    float row_sum[2] = {0.f, 0.f};               // this lane's partial sums (reduced at the end)

    for (int64_t step = 0; step < steps; ++step) {
        const int stage = Stages == 2 ? static_cast<int>(step % 2) : 0;
        if constexpr (Stages == 2) {
            // K, V of `step` are in `stage`; start copying the next tile into the other stage.
            if (step + 1 < steps) load_kv(step + 1, stage ^ 1);
            cp_async_commit();
        }
        const T* k_tile = k_tiles + stage * Traits::kTileElems;
        const T* v_tile = v_tiles + stage * Traits::kTileElems;
        const int64_t e = e_begin + step / kSubTiles;
        const int64_t k0 = key_tile_start(step);
        const int32_t part = m.partial_idx[e];

        // S = Q K^T: [16, 64] per warp, 8 n-tiles of 16 x 8
        float s[kTileK / 8][4];
#pragma unroll
        for (int t = 0; t < kTileK / 8; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int np = 0; np < kTileK / 16; ++np) {
                uint32_t kf[4];   // b0, b1 of key n-tiles 2np and 2np + 1
                const int r = np * 16 + lane % 8 + 8 * (lane / 16), c = kk * 16 + 8 * ((lane / 8) % 2);
                ldmatrix_x4(kf, k_tile + r * kStride + c);
                Mma::mma(s[2 * np], q_frag[kk], kf[0], kf[1]);
                Mma::mma(s[2 * np + 1], q_frag[kk], kf[2], kf[3]);
            }
        }

        // mask: partial blocks by their bitmask (one 64-bit word per query row and key tile),
        // full blocks only where the tile runs past n
        const bool partial = part >= 0, past_n = k0 + kTileK > n;
        if (partial || past_n) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int i = i0 + warp * 16 + group + 8 * half;   // row within the mask block
                uint64_t word = ~uint64_t{0};
                if (partial) word = partial_bits<MaskBlock>(m, part, i, k0);
                if (past_n) word &= keys_before_n(k0, n);
#pragma unroll
                for (int t = 0; t < kTileK / 8; ++t) {
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const int j = t * 8 + 2 * quad + c;
                        if (((word >> j) & 1) == 0) s[t][2 * half + c] = -INFINITY;
                    }
                }
            }
        }

        // online softmax: new row max (over the 4 lanes of a row), rescale O and the sums
        float scale_old[2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float mx = row_max[half];
#pragma unroll
            for (int t = 0; t < kTileK / 8; ++t) mx = fmaxf(mx, fmaxf(s[t][2 * half], s[t][2 * half + 1]) * p.scale_log2);
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float base = mx == -INFINITY ? 0.f : mx;   // a row with nothing allowed yet: no NaN
            scale_old[half] = exp2f(row_max[half] - base);
            row_max[half] = mx;
            float sum = 0.f;
#pragma unroll
            for (int t = 0; t < kTileK / 8; ++t) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    float& x = s[t][2 * half + c];
                    x = exp2f(x * p.scale_log2 - base);   // P, unnormalised; -inf -> 0
                    sum += x;
                }
            }
            row_sum[half] = row_sum[half] * scale_old[half] + sum;
        }
#pragma unroll
        for (int t = 0; t < D / 8; ++t) {
            o_acc[t][0] *= scale_old[0];
            o_acc[t][1] *= scale_old[0];
            o_acc[t][2] *= scale_old[1];
            o_acc[t][3] *= scale_old[1];
        }

        // O += P V: P [16, 64] as A fragments straight from S's accumulators, V via ldmatrix.trans
#pragma unroll
        for (int kk = 0; kk < kTileK / 16; ++kk) {
            const uint32_t pf[4] = {Mma::pack(s[2 * kk][0], s[2 * kk][1]), Mma::pack(s[2 * kk][2], s[2 * kk][3]),
                                    Mma::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    Mma::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t vf[4];   // b0, b1 of d n-tiles 2dp and 2dp + 1
                const int r = kk * 16 + lane % 8 + 8 * ((lane / 8) % 2), c = dp * 16 + 8 * (lane / 16);
                ldmatrix_x4_trans(vf, v_tile + r * kStride + c);
                Mma::mma(o_acc[2 * dp], pf, vf[0], vf[1]);
                Mma::mma(o_acc[2 * dp + 1], pf, vf[2], vf[3]);
            }
        }

        if constexpr (Stages == 2) {
            cp_async_wait<0>();   // the next tile has landed ...
            __syncthreads();      // ... for every thread, and nobody still reads this stage
        } else {
            __syncthreads();      // every warp is done with this K, V before they are overwritten
            if (step + 1 < steps) {
                load_kv(step + 1, 0);
                cp_async_commit();
                cp_async_wait<0>();
                __syncthreads();
            }
        }
    }

    // O /= rowsum, lse = (max + log2 sum) ln 2; empty rows: zeros and -inf
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float sum = row_sum[half];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int64_t row = q0 + warp * 16 + group + 8 * half;
        if (row >= n) continue;
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        T* o = p.o + head_offset + row * D;
#pragma unroll
        for (int t = 0; t < D / 8; ++t) {
            const uint32_t packed = Mma::pack(o_acc[t][2 * half] * inv, o_acc[t][2 * half + 1] * inv);
            *reinterpret_cast<uint32_t*>(o + t * 8 + 2 * quad) = packed;
        }
        if (quad == 0) {
            p.lse[(b * p.heads + h) * n + row] =
                sum > 0.f ? (row_max[half] + log2f(sum)) * 0.6931471805599453f : -INFINITY;
        }
    }
}

// 2: tensor cores, one K/V stage.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(128) attn_fwd_kernel2(AttnParams<T> p) {
    attn_fwd_tensor_core<T, D, MaskBlock, 1, false>(p);
}

// 3: tensor cores, two K/V stages (the next tile's copy overlaps this tile's math).
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(128) attn_fwd_kernel3(AttnParams<T> p) {
    attn_fwd_tensor_core<T, D, MaskBlock, 2, false>(p);
}

// 4: as 2, (head, query tile) pairs in order of work. grid: (heads * ceil(n / 64), 1, batch).
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(128) attn_fwd_kernel4(AttnParams<T> p) {
    attn_fwd_tensor_core<T, D, MaskBlock, 1, true>(p);
}

// [SECTION] kernels 5 and 6

// 2^x on the special-function unit (flush to zero; ex2.approx(-inf) = 0).
__device__ inline float exp2_fast(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Tiling of kernels 5 and 6: Warps warps of 32 query rows, 64-key tiles.
template <int D, int MaskBlock, int Warps> struct AttnTraits32 {
    static constexpr int kWarps = Warps;
    static constexpr int kThreads = 32 * kWarps;
    static constexpr int kTileQ = 32 * kWarps;      // 64 (kernel 5) or 128 (kernel 6) query rows
    static constexpr int kTileK = 64;               // keys per step: one 64-bit word of a bitmask row
    static constexpr int kStride = D + 8;           // +16 bytes a row: no ldmatrix bank conflicts
    static constexpr int kTileElems = kTileK * kStride;
    static constexpr int kSmemBytes = (kTileQ + 2 * kTileK) * kStride * 2;   // Q, K, V
    static_assert(D % 16 == 0 && D >= 16 && D <= 128, "head dim: a multiple of 16 up to 128");
    static_assert(MaskBlock % kTileK == 0, "mask block: a multiple of 64");
    static_assert(Warps == 2 || Warps == 4, "64- or 128-query tiles");
};

// Where a query tile is in the key blocks it visits. A tile's warps of 32 rows lie in one or
// two mask rows (two when the tile is 128 rows and the mask block 64): list a is the first
// row's kept blocks, list b the second's (empty when there is no second row). The tile visits
// the union of the two lists in column order, each block as MaskBlock / 64 key tiles.
struct KeyCursor {
    int64_t ea, eb;            // next entry of list a, b (absolute into col_idx)
    int64_t a_end, b_end;
    int sub;                   // key tile within the block

    __device__ int32_t col_a(const int32_t* col_idx) const { return ea < a_end ? col_idx[ea] : INT32_MAX; }
    __device__ int32_t col_b(const int32_t* col_idx) const { return eb < b_end ? col_idx[eb] : INT32_MAX; }
    __device__ bool valid() const { return ea < a_end || eb < b_end; }
    template <int SubTiles> __device__ void advance(const int32_t* col_idx) {
        if (++sub < SubTiles) return;
        sub = 0;
        const int32_t a = col_a(col_idx), b = col_b(col_idx), c = min(a, b);
        if (a == c) ++ea;
        if (b == c) ++eb;
    }
};

// One thread block per (query tile, head, batch) in the order of the work table; warp w owns
// query rows 32w .. 32w + 31 of the tile as two 16-row m-tiles.
// grid: (heads * ceil(n / kTileQ), 1, batch); block: 32 * Warps threads, dynamic shared memory
// AttnTraits32::kSmemBytes.
template <typename T, int D, int MaskBlock, int Warps, bool Split, bool EarlyV = false>
__device__ inline void attn_fwd_tensor_core32(const AttnParams<T>& p) {
    using Traits = AttnTraits32<D, MaskBlock, Warps>;
    using Mma = MmaType<T>;
    constexpr int kTileQ = Traits::kTileQ, kTileK = Traits::kTileK, kStride = Traits::kStride;
    constexpr int kSubTiles = MaskBlock / kTileK;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* q_tile = reinterpret_cast<T*>(smem_raw);       // [kTileQ, D]
    T* k_tile = q_tile + kTileQ * kStride;            // [64, D]
    T* v_tile = k_tile + Traits::kTileElems;          // [64, D]

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int group = lane / 4, quad = lane % 4;
    const int64_t tiles = (p.n + kTileQ - 1) / kTileQ;
    WorkItem item{0, 0, 0, 0, 0, -1};
    if constexpr (Split) item = p.masks.work[blockIdx.x];
    const int64_t pair = Split ? item.pair : p.masks.tile_order[blockIdx.x];
    const int64_t h = pair / tiles, tile = pair % tiles;
    const int64_t b = blockIdx.z, n = p.n;
    const int64_t q0 = tile * kTileQ;
    const int64_t head_offset = ((b * p.heads + h) * n) * D;
    const T* k_head = p.k + head_offset;
    const T* v_head = p.v + head_offset;

    // The mask rows: qa holds the tile's first row; qb_2 the row of its second 64 rows when that
    // is another mask row (MaskBlock 64, 128-row tiles) that exists (rows before n).
    const DeviceMasks& m = p.masks;
    const int64_t* row_ptr = m.row_ptr + int64_t{m.head_mask[h]} * (m.q_blocks + 1);
    const int64_t qa = q0 / MaskBlock, qb_2 = (q0 + 64) / MaskBlock;
    const bool two_rows = kTileQ > 64 && qb_2 != qa && qb_2 < m.q_blocks;
    KeyCursor cur{row_ptr[qa], two_rows ? row_ptr[qb_2] : 0, row_ptr[qa + 1], two_rows ? row_ptr[qb_2 + 1] : 0, 0};
    int64_t left = INT64_MAX;   // key tiles left to visit (kernel 7: this chunk's)
    if constexpr (Split) {
        cur.ea = item.ea;
        cur.eb = item.eb;
        cur.sub = item.sub;
        left = item.steps;
    }
    // This warp's list: b when its rows are in the second mask row; none when past the last row.
    const int64_t warp_row0 = q0 + 32 * warp;
    const bool warp_in_b = two_rows && warp_row0 / MaskBlock == qb_2;
    const bool warp_has_rows = warp_row0 / MaskBlock < m.q_blocks;
    const int i_warp = static_cast<int>(warp_row0 % MaskBlock);   // first row of this warp within its mask block

    auto key_start = [&](const KeyCursor& c) {
        return int64_t{min(c.col_a(m.col_idx), c.col_b(m.col_idx))} * MaskBlock + c.sub * kTileK;
    };

    tile_load_async<Traits, D, kTileQ>(q_tile, p.q + head_offset, q0, n);
    if (left > 0 && cur.valid()) tile_load_async<Traits, D, kTileK>(k_tile, k_head, key_start(cur), n);
    cp_async_commit();
    if constexpr (EarlyV) {   // kernel 9: the first V in a second group, waited for after S
        if (left > 0 && cur.valid()) tile_load_async<Traits, D, kTileK>(v_tile, v_head, key_start(cur), n);
        cp_async_commit();
    }
    bool first = true;

    float o_acc[2][D / 8][4];   // O [32, D] of this warp: 2 m-tiles x D / 8 n-tiles of 16 x 8
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int t = 0; t < D / 8; ++t) o_acc[mt][t][0] = o_acc[mt][t][1] = o_acc[mt][t][2] = o_acc[mt][t][3] = 0.f;
    }
    float row_max[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}};   // [m-tile][rows group, group + 8], base 2
    float row_sum[2][2] = {{0.f, 0.f}, {0.f, 0.f}};                           // this lane's partial sums

    while (left > 0 && cur.valid()) {
        const int32_t ca = cur.col_a(m.col_idx), cb = cur.col_b(m.col_idx), c = min(ca, cb);
        const int64_t k0 = int64_t{c} * MaskBlock + cur.sub * kTileK;
        // this warp's entry of the block: -1 when its mask row does not keep it
        const int64_t e = !warp_has_rows ? -1 : warp_in_b ? (cb == c ? cur.eb : -1) : (ca == c ? cur.ea : -1);
        KeyCursor next = cur;
        next.template advance<kSubTiles>(m.col_idx);

        if (EarlyV && first) cp_async_wait<1>();   // K of this step (and Q) landed (V may not have) ...
        else cp_async_wait<0>();
        __syncthreads();      // ... for every thread, and every warp is done with the last step's V
        if (!(EarlyV && first)) {
            tile_load_async<Traits, D, kTileK>(v_tile, v_head, k0, n);   // V's copy overlaps S = Q K^T
            cp_async_commit();
        }
        first = false;

        float s[2][kTileK / 8][4];   // S [32, 64] of this warp
        float scale_old[2][2];
        if (e >= 0) {
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
                for (int t = 0; t < kTileK / 8; ++t) s[mt][t][0] = s[mt][t][1] = s[mt][t][2] = s[mt][t][3] = 0.f;
            }
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                uint32_t qf[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    const int r = warp * 32 + mt * 16 + lane % 8 + 8 * ((lane / 8) % 2), col = kk * 16 + 8 * (lane / 16);
                    ldmatrix_x4(qf[mt], q_tile + r * kStride + col);
                }
#pragma unroll
                for (int np = 0; np < kTileK / 16; ++np) {
                    uint32_t kf[4];   // b0, b1 of key n-tiles 2np and 2np + 1
                    const int r = np * 16 + lane % 8 + 8 * (lane / 16), col = kk * 16 + 8 * ((lane / 8) % 2);
                    ldmatrix_x4(kf, k_tile + r * kStride + col);
#pragma unroll
                    for (int mt = 0; mt < 2; ++mt) {
                        Mma::mma(s[mt][2 * np], qf[mt], kf[0], kf[1]);
                        Mma::mma(s[mt][2 * np + 1], qf[mt], kf[2], kf[3]);
                    }
                }
            }

            // mask: partial blocks by their bitmask, full blocks only where the tile runs past n
            const int32_t part = m.partial_idx[e];
            const bool partial = part >= 0, past_n = k0 + kTileK > n;
            if (partial || past_n) {
                const uint64_t valid_word = past_n ? keys_before_n(k0, n) : ~uint64_t{0};
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        const int i = i_warp + mt * 16 + group + 8 * half;   // row within the mask block
                        uint64_t word = valid_word;
                        if (partial) word &= partial_bits<MaskBlock>(m, part, i, k0);
#pragma unroll
                        for (int t = 0; t < kTileK / 8; ++t) {
#pragma unroll
                            for (int cc = 0; cc < 2; ++cc) {
                                if (((word >> (t * 8 + 2 * quad + cc)) & 1) == 0) s[mt][t][2 * half + cc] = -INFINITY;
                            }
                        }
                    }
                }
            }

            // online softmax in base 2: p = 2^(s * scale_log2 - max), one FMA and one ex2
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    float mx = -INFINITY;
#pragma unroll
                    for (int t = 0; t < kTileK / 8; ++t) mx = fmaxf(mx, fmaxf(s[mt][t][2 * half], s[mt][t][2 * half + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    const float new_max = fmaxf(row_max[mt][half], mx * p.scale_log2);
                    const float base = new_max == -INFINITY ? 0.f : new_max;   // nothing allowed yet: no NaN
                    scale_old[mt][half] = exp2_fast(row_max[mt][half] - base);
                    row_max[mt][half] = new_max;
                    float sum = 0.f;
#pragma unroll
                    for (int t = 0; t < kTileK / 8; ++t) {
#pragma unroll
                        for (int cc = 0; cc < 2; ++cc) {
                            float& x = s[mt][t][2 * half + cc];
                            x = exp2_fast(fmaf(x, p.scale_log2, -base));   // -inf -> 0
                            sum += x;
                        }
                    }
                    row_sum[mt][half] = row_sum[mt][half] * scale_old[mt][half] + sum;
                }
#pragma unroll
                for (int t = 0; t < D / 8; ++t) {
                    o_acc[mt][t][0] *= scale_old[mt][0];
                    o_acc[mt][t][1] *= scale_old[mt][0];
                    o_acc[mt][t][2] *= scale_old[mt][1];
                    o_acc[mt][t][3] *= scale_old[mt][1];
                }
            }
        }

        cp_async_wait<0>();   // V of this step landed ...
        __syncthreads();      // ... for every thread, and every warp is done with K
        if (left > 1 && next.valid()) {   // the next K's copy overlaps O += P V
            tile_load_async<Traits, D, kTileK>(k_tile, k_head, key_start(next), n);
            cp_async_commit();
        }

        if (e >= 0) {
            // O += P V: P as A fragments straight from S's accumulators, V via ldmatrix.trans
#pragma unroll
            for (int kk = 0; kk < kTileK / 16; ++kk) {
                uint32_t pf[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    pf[mt][0] = Mma::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                    pf[mt][1] = Mma::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                    pf[mt][2] = Mma::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                    pf[mt][3] = Mma::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
                }
#pragma unroll
                for (int dp = 0; dp < D / 16; ++dp) {
                    uint32_t vf[4];   // b0, b1 of d n-tiles 2dp and 2dp + 1
                    const int r = kk * 16 + lane % 8 + 8 * ((lane / 8) % 2), col = dp * 16 + 8 * (lane / 16);
                    ldmatrix_x4_trans(vf, v_tile + r * kStride + col);
#pragma unroll
                    for (int mt = 0; mt < 2; ++mt) {
                        Mma::mma(o_acc[mt][2 * dp], pf[mt], vf[0], vf[1]);
                        Mma::mma(o_acc[mt][2 * dp + 1], pf[mt], vf[2], vf[3]);
                    }
                }
            }
        }
        cur = next;
        --left;
    }
    cp_async_wait<0>();   // no copy left in flight (a tile with no kept block still loaded Q)

    // O /= rowsum, lse = (max + log2 sum) ln 2; empty rows: zeros and -inf. A chunk of a split
    // tile writes O, max and sum unnormalised to its slot instead.
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float sum = row_sum[mt][half];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const int64_t row = warp_row0 + mt * 16 + group + 8 * half;
            if (row >= n) continue;
            if (Split && item.slot >= 0) {
                const int64_t r = (b * p.slots + item.slot) * kTileQ + (row - q0);
                float* o = p.partial_o + r * D;
#pragma unroll
                for (int t = 0; t < D / 8; ++t) {
                    *reinterpret_cast<float2*>(o + t * 8 + 2 * quad) = make_float2(o_acc[mt][t][2 * half], o_acc[mt][t][2 * half + 1]);
                }
                if (quad == 0) *reinterpret_cast<float2*>(p.partial_ml + 2 * r) = make_float2(row_max[mt][half], sum);
                continue;
            }
            const float inv = sum > 0.f ? 1.f / sum : 0.f;
            T* o = p.o + head_offset + row * D;
#pragma unroll
            for (int t = 0; t < D / 8; ++t) {
                const uint32_t packed = Mma::pack(o_acc[mt][t][2 * half] * inv, o_acc[mt][t][2 * half + 1] * inv);
                *reinterpret_cast<uint32_t*>(o + t * 8 + 2 * quad) = packed;
            }
            if (quad == 0) {
                p.lse[(b * p.heads + h) * n + row] =
                    sum > 0.f ? (row_max[mt][half] + log2f(sum)) * 0.6931471805599453f : -INFINITY;
            }
        }
    }
}

// 5: 32 query rows a warp, 64-query tiles (2 warps), staggered K / V copies; in order of work.
// grid: (heads * ceil(n / 64), 1, batch), block: 64 threads.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(64) attn_fwd_kernel5(AttnParams<T> p) {
    attn_fwd_tensor_core32<T, D, MaskBlock, 2, false>(p);
}

// 6: as 5 with 128-query tiles (4 warps). grid: (heads * ceil(n / 128), 1, batch), block: 128 threads.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(128) attn_fwd_kernel6(AttnParams<T> p) {
    attn_fwd_tensor_core32<T, D, MaskBlock, 4, false>(p);
}

// 7: as 6, long rows split into chunks (WorkItem); attn_combine then finishes the split tiles.
// grid: (work items, 1, batch), block: 128 threads.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(128) attn_fwd_kernel7(AttnParams<T> p) {
    attn_fwd_tensor_core32<T, D, MaskBlock, 4, true>(p);
}

// 8: as 7 with 64-query tiles (2 warps). grid: (work items, 1, batch), block: 64 threads.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(64) attn_fwd_kernel8(AttnParams<T> p) {
    attn_fwd_tensor_core32<T, D, MaskBlock, 2, true>(p);
}

// 9: as 8, the first V copied with Q and K. grid: (work items, 1, batch), block: 64 threads.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(64) attn_fwd_kernel9(AttnParams<T> p) {
    attn_fwd_tensor_core32<T, D, MaskBlock, 2, true, true>(p);
}

// Kernels 7 to 15's second pass: the chunks of split tile blockIdx.x (of TileQ query rows)
// merged into O and lse:
// M = max m_i, L = sum 2^(m_i - M) l_i, O = sum 2^(m_i - M) O_i / L, lse = (M + log2 L) ln 2.
// grid: (split tiles, TileQ / (128 / D), batch), block: 128 threads (thread: one column of
// 128 / D rows; block y: rows y (128 / D) onwards, every gridDim.y (128 / D) rows). Each row
// waits on its chunks' loads one after another, so the rows go to separate blocks. (With one
// block a tile walking its 64 rows in turn, BigBird's call at n = 65,536 took 1.079 ms where
// kernel 15 alone took 0.916: the merge of its few split tiles, 2 rows of blocks a head, was
// most of the difference; dense, with no split tile, showed none.)
template <typename T, int D, int TileQ>
__global__ void __launch_bounds__(128) attn_combine(AttnParams<T> p) {
    constexpr int kTileQ = TileQ, kRowsAtOnce = 128 / D;
    const SplitTile st = p.masks.splits[blockIdx.x];
    const int64_t tiles = (p.n + kTileQ - 1) / kTileQ, h = st.pair / tiles, tile = st.pair % tiles;
    const int64_t b = blockIdx.z, n = p.n;
    const int col = threadIdx.x % D;
    for (int r = static_cast<int>(blockIdx.y) * kRowsAtOnce + threadIdx.x / D; r < kTileQ;
         r += kRowsAtOnce * static_cast<int>(gridDim.y)) {
        const int64_t row = tile * kTileQ + r;
        if (row >= n) break;
        float mx = -INFINITY;
        for (int c = 0; c < st.slots; ++c) mx = fmaxf(mx, p.partial_ml[2 * ((b * p.slots + st.slot_begin + c) * kTileQ + r)]);
        float sum = 0.f, acc = 0.f;
        if (mx != -INFINITY) {
            for (int c = 0; c < st.slots; ++c) {
                const int64_t pr = (b * p.slots + st.slot_begin + c) * kTileQ + r;
                const float w = exp2_fast(p.partial_ml[2 * pr] - mx);   // 0 for a chunk with nothing allowed
                sum += w * p.partial_ml[2 * pr + 1];
                acc += w * p.partial_o[pr * D + col];
            }
        }
        const int64_t out_row = ((b * p.heads + h) * n) + row;
        p.o[out_row * D + col] = from_float<T>(sum > 0.f ? acc / sum : 0.f);
        if (col == 0) p.lse[out_row] = sum > 0.f ? (mx + log2f(sum)) * 0.6931471805599453f : -INFINITY;
    }
}

// [SECTION] kernels 10 to 19

// Kernel 10, 13, 14, 15 or 16 (64-query tiles, kernel 8's work items), 11 or 12 (128-query tiles, kernel
// 7's), in attn_fwd_wgmma.cuh, compiled for sm_90a alone in attn_fwd_wgmma.cu; the split tiles'
// attn_combine<T, D, 64 or 128> is the caller's to launch. max_blocks: kernel 13's most thread
// blocks (0: as many as fit). Returns the first failed call's error.
// Declared here so the host code calls them without compiling wgmma.
template <typename T, int D, int MaskBlock, int Kernel>
cudaError_t attn_fwd_wgmma_launch(const AttnParams<T>& p, int64_t work_items, int64_t batch, int64_t max_blocks = 0);
// Kernel 17, 18 (128 keys a step) or 19 (18 persistent) (attn_fwd_ws.cuh: a producer warpgroup and
// two consumers on kernel 12's tiles), the same way; max_blocks: kernel 19's most thread blocks.
template <typename T, int D, int MaskBlock, int Kernel>
cudaError_t attn_fwd_ws_launch(const AttnParams<T>& p, int64_t work_items, int64_t batch, int64_t max_blocks = 0);

} // namespace sparsa::cuda
