// Version 3 of the content path's banded pass (lsh, anchors; content_fast.cuh holds version 2,
// which stays for chunks other than 64 and FAVOR+'s passes). Written from version 2's H100 run
// (bench/results/content-cuda-nvidia-h100-80gb-hbm3.md): lsh(64, rounds = 2) at n = 65,536,
// d = 128 spent 5.7 ms in its passes, about 24 TFLOP/s, where FAVOR+'s dense walk on the same
// tile code reached about 100. What only the band walk has: every tile starts with a chain of
// three dependent trips to memory (the tile's tokens, then the tokens' chunk ids in every round
// and the rows they name), with nothing of the same block to overlap them, and every key chunk
// is copied twice (as the chunk before one tile and as the own chunk of the next).
//
//   content_hash3: lsh's hashing with all rounds' columns in one slice (version 2 padded each
//     round's 32 columns of a 64-bucket hash to 64: half its work on zeros).
//   content_sorted_chunks: the chunk ids in sorted order, cid[r][r2][s] = the chunk in round r2
//     of the token at sorted index s of round r, so a tile reads its ids as one contiguous run
//     (no trip through its tokens).
//   content_band3: one block walks G consecutive query tiles of one (round, head) (chunk = 64:
//     tile i is chunk i, its keys chunks i - 1 and i). Chunk i's K and V stay in one of two slots
//     for tile i + 1; chunk i + 1's rows are copied (cp.async) while tile i works on its own
//     chunk, and the tokens and ids of chunk i + 2 a tile ahead. Each round keeps only pairs
//     that met in no earlier round (band3_keep_bits), so the rounds merge with no -log(count)
//     correction and the pair rule is one comparison per earlier round. Products and output are
//     version 2's. Without a fixed pattern the last round runs as its own launch and merges the
//     earlier rounds' parts into O in its epilogue (no merge kernel).
//   Machine code: the kernel was 240 KB (the pair rule inlined on each of a thread's 32 scores,
//     the fixed pattern's divisions in each, two inlined copies of the chunk step), far past the
//     instruction caches; the rule is now bit masks, the fixed test and the self rule out of
//     line, one call site of the chunk step: 56 KB (d = 128).
//
// Index: [SECTION] sorted chunk ids, [SECTION] hashing with the rounds side by side, [SECTION] the pass.
#pragma once

#include "engine/cuda/content/content_fast.cuh"

namespace sparsa::cuda::content {

// [SECTION] sorted chunk ids

// out[(r * rounds + r2) * bh * n + bhi * n + s] = chunk_of[(r2 * bh + bhi) * n + order[(r * bh + bhi) * n + s]]
// for every round r, sorted index s and round r2. grid: ceil(rounds * bh * n / 256), block 256.
__global__ void content_sorted_chunks(const int32_t* order, const int32_t* chunk_of, int32_t rounds, int64_t bh, int64_t n,
                                      int32_t* out) {
    const int64_t i = int64_t{blockIdx.x} * 256 + threadIdx.x, per_round = bh * n;
    if (i >= rounds * per_round) return;
    const int64_t r = i / per_round, rest = i % per_round, bhi = rest / n;
    const int32_t t = order[i];
    for (int32_t r2 = 0; r2 < rounds; ++r2) out[(r * rounds + r2) * per_round + rest] = chunk_of[(r2 * bh + bhi) * n + t];
}

// [SECTION] hashing with the rounds side by side

// lsh's hashing as content_project2 (kHash) computes it, bit for bit (each u is the same loop over
// i in the same order), with the rounds' columns side by side in one 64-column slice: with 64
// buckets (32 columns a round) version 2 padded each round's slice to 64 columns, half of its
// multiply-adds on zeros. And its copies in 16 bytes: version 2 read x 2 bytes and the matrix 4
// bytes a load, each with a division by the runtime d or cols (Nsight Compute on the H100: 1.68
// ms of lsh's 1.82 ms of bucketing at n = 65,536, d = 128, in a first version of this kernel that
// kept those loads). Needs cols a power of two from 4 to 64 (a thread's 4 columns within one round;
// a round's columns in cols / 4 neighbouring threads), D = 64 or 128. Column g = r * cols + c of
// head h is mats[((h * rounds + r) * D + i) * cols + c].
// A block holds its 64 columns of the matrix for all D dimensions in shared memory (32 KB at
// D = 128, read once) and walks token tiles of 128, x in slices of 32 dimensions: the next
// slice's 16-byte loads go to registers before the current slice's multiply-adds and to shared
// memory after them. Each thread: 16 tokens x 4 columns (64 multiply-adds for 5 shared-memory
// loads of 16 bytes). History on the H100 at n = 65,536, d = 128 (lsh(64, 2 rounds)): one 64-token
// tile a block, 8 tokens x 4 columns a thread, x and the matrix copied and waited for at every
// slice: 0.549 ms; the same with the walk and the matrix once: 0.519 ms (about half the float32
// multiply-add rate). Each u still sums over i = 0 .. D - 1 in order (the same bits).
// Key: uint64_t, or uint32_t where segment and bucket fit 32 bits (the caller checks).
// grid: (blocks, bh, ceil(rounds * cols / 64)), block 128, dynamic shared memory hash3_smem<D>();
// block x walks tiles x, x + gridDim.x, ...
constexpr int kHash3Dims = 32, kHash3Tokens = 128, kHash3Stride = kHash3Tokens + 4;
template <int D> constexpr int hash3_smem() { return (D * 64 + kHash3Dims * kHash3Stride) * 4; }

template <typename T, int D, typename Key>
__global__ void __launch_bounds__(128, 4) content_hash3(const T* x, int64_t heads, int64_t bh, int64_t n, const float* mats,
                                                        int32_t rounds, int32_t cols, int64_t seg_base, int32_t bucket_bits, Key* keys) {
    static_assert(D % kHash3Dims == 0, "content_hash3: D a multiple of 32");
    constexpr int kPer16 = 16 / static_cast<int>(sizeof(T));   // elements of x in 16 bytes
    constexpr int kSlices = D / kHash3Dims, kChunks = kHash3Dims / kPer16;   // a token's 16-byte chunks in a slice
    constexpr int kLoads = kHash3Tokens * kChunks / 128;                   // a thread's 16-byte loads of a slice
    constexpr int kRows = 16;                                              // tokens a thread
    extern __shared__ float smem[];
    float* ms = smem;               // [D, 64]: the block's columns
    float* xs = ms + D * 64;        // [kHash3Dims, kHash3Stride]: x[i0 + i][token]
    const int tid = threadIdx.x, tg = tid / 16, cg = tid % 16;
    const int64_t bhi = blockIdx.y, h = bhi % heads, tiles = (n + kHash3Tokens - 1) / kHash3Tokens;
    const int32_t total = rounds * cols, group = cols / 4, cols_log2 = __ffs(cols) - 1;   // group: threads a round spans
    const int32_t cc = static_cast<int32_t>(blockIdx.z) * 64;
    const T* xh = x + bhi * n * D;

#pragma unroll 4
    for (int e = tid; e < D * 16; e += 128) {   // 4 columns (one round's) a copy
        const int i = e / 16, c = e % 16 * 4, g = cc + c;
        float4 m4 = make_float4(0.f, 0.f, 0.f, 0.f);
        if (g < total) m4 = *reinterpret_cast<const float4*>(mats + ((h * rounds + (g >> cols_log2)) * int64_t{D} + i) * cols + (g & (cols - 1)));
        *reinterpret_cast<float4*>(ms + i * 64 + c) = m4;
    }
    // load e of a slice: token e % 128 (consecutive threads, consecutive banks), 16 bytes at e / 128 * kPer16
    uint4 xr[kLoads];
    const auto load = [&](int64_t tile, int slice) {
#pragma unroll
        for (int l = 0; l < kLoads; ++l) {
            const int e = tid + l * 128, tt = e % kHash3Tokens, i = e / kHash3Tokens * kPer16;
            const int64_t t = tile * kHash3Tokens + tt;
            xr[l] = t < n ? *reinterpret_cast<const uint4*>(xh + t * D + slice * kHash3Dims + i) : make_uint4(0u, 0u, 0u, 0u);
        }
    };
    int64_t tile = blockIdx.x;
    if (tile >= tiles) return;
    load(tile, 0);
    float acc[kRows][4];
#pragma unroll 1
    for (int slice = 0; tile < tiles;) {
        __syncthreads();   // every thread is done with xs (and, the first time, ms is written)
#pragma unroll
        for (int l = 0; l < kLoads; ++l) {
            const int e = tid + l * 128, tt = e % kHash3Tokens, i = e / kHash3Tokens * kPer16;
            T v[kPer16];
            memcpy(v, &xr[l], sizeof v);
#pragma unroll
            for (int j = 0; j < kPer16; ++j) xs[(i + j) * kHash3Stride + tt] = to_float(v[j]);
        }
        __syncthreads();
        const int64_t next_tile = slice + 1 < kSlices ? tile : tile + gridDim.x;
        const int next_slice = slice + 1 < kSlices ? slice + 1 : 0;
        if (next_tile < tiles) load(next_tile, next_slice);
        if (slice == 0) {
#pragma unroll
            for (int a = 0; a < kRows; ++a) acc[a][0] = acc[a][1] = acc[a][2] = acc[a][3] = 0.f;
        }
        const float* mslice = ms + slice * kHash3Dims * 64;
#pragma unroll 1
        for (int i = 0; i < kHash3Dims; ++i) {
            const float4 mv = *reinterpret_cast<const float4*>(mslice + i * 64 + cg * 4);
            const float mm[4] = {mv.x, mv.y, mv.z, mv.w};
#pragma unroll
            for (int q4 = 0; q4 < kRows / 4; ++q4) {
                const float4 xq = *reinterpret_cast<const float4*>(xs + i * kHash3Stride + tg * kRows + q4 * 4);
                const float xv[4] = {xq.x, xq.y, xq.z, xq.w};
#pragma unroll
                for (int a = 0; a < 4; ++a)
#pragma unroll
                    for (int c = 0; c < 4; ++c) acc[q4 * 4 + a][c] = fmaf(xv[a], mm[c], acc[q4 * 4 + a][c]);
            }
        }
        if (slice + 1 == kSlices) {
            const int32_t g0 = cc + cg * 4, r = g0 >> cols_log2, c0 = g0 & (cols - 1);   // this thread's round and first column
#pragma unroll
            for (int a = 0; a < kRows; ++a) {
                float best = -INFINITY;
                int32_t best_index = INT32_MAX;
#pragma unroll
                for (int c4 = 0; c4 < 4; ++c4) {   // as content_project2: u, then -u, each column in order
                    const float u = acc[a][c4];
                    const int32_t c = c0 + c4;
                    if (u > best || (u == best && c < best_index)) best = u, best_index = c;
                    if (-u > best || (-u == best && cols + c < best_index)) best = -u, best_index = cols + c;
                }
                for (int off = group / 2; off > 0; off /= 2) {   // the round's threads: aligned groups of `group`
                    const float ob = __shfl_xor_sync(0xffffffffu, best, off);
                    const int32_t oi = __shfl_xor_sync(0xffffffffu, best_index, off);
                    if (ob > best || (ob == best && oi < best_index)) best = ob, best_index = oi;
                }
                const int64_t t = tile * kHash3Tokens + tg * kRows + a, seg = seg_base + int64_t{r} * bh + bhi;
                if (cg % group == 0 && g0 < total && t < n) keys[seg * n + t] = (static_cast<Key>(seg) << bucket_bits) | static_cast<Key>(best_index);
            }
        }
        tile = next_tile;
        slice = next_slice;
    }
}

// [SECTION] the pass

constexpr int kBand3KvSlots = 2, kBand3MetaSlots = 4;

// Shared memory of content_band3: Q [64][D + 8], K and V [2][64][D + 8] (T), then the tokens of
// queries and keys [4][64] and their chunk ids [4][rounds][64] (int32). d = 128: 91 KB, two blocks
// an SM (a first version with two Q and three K / V slots, 145 KB, ran one block an SM, one warp a
// scheduler, and was slower than version 2: 9.9 ms against 5.8 on the H100).
template <int D> constexpr int band3_smem(int rounds) {
    return (1 + 2 * kBand3KvSlots) * 64 * (D + 8) * 2 + 2 * kBand3MetaSlots * 64 * (1 + rounds) * 4;
}

// The sorted run [c * 64, c * 64 + 64) of chunk c as this block's round and head see it: tokens
// (q_order, k_order) and chunk ids per round. Entries past n get token -1 (a plain store: the
// barrier before their first use orders it with the copies).
struct Band3Run {
    const int32_t *q_tok, *k_tok;   // [n] of this (round, head)
    const int32_t *q_cid, *k_cid;   // [rounds][bh * n] from this (round, head)'s first entry
    int64_t n, cid_round_stride;
    int32_t rounds;

    __device__ void copy_meta(int64_t c, int32_t* q_tok_s, int32_t* k_tok_s, int32_t* q_cid_s, int32_t* k_cid_s) const {
        const int64_t s0 = c * 64;
#pragma unroll 1
        for (int i = threadIdx.x; i < 2 * 64 * (1 + rounds); i += 128) {
            const int side = i % 2, e = i / 2, r = e / 64 - 1, j = e % 64;   // r = -1: the token
            int32_t* dst = r < 0 ? (side == 0 ? q_tok_s : k_tok_s) + j : (side == 0 ? q_cid_s : k_cid_s) + r * 64 + j;
            if (s0 + j >= n) {
                *dst = -1;
                continue;
            }
            const int32_t* src = r < 0 ? (side == 0 ? q_tok : k_tok) + s0 + j : (side == 0 ? q_cid : k_cid) + r * cid_round_stride + s0 + j;
            cp_async_4(dst, src, true);
        }
    }
};

// The 64 rows named by tok[0..63] (-1: zero-filled) of `head` (rows D wide) into `tile` (stride D + 8).
template <int D, typename T> __device__ inline void band3_rows(T* tile, const T* head, const int32_t* tok) {
    constexpr int kChunksPerRow = D * 2 / 16, kStride = D + 8;
#pragma unroll 1
    for (int c = threadIdx.x; c < 64 * kChunksPerRow; c += 128) {
        const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
        const int32_t t = tok[r];
        cp_async_16(tile + r * kStride + col, head + (t >= 0 ? int64_t{t} * D + col : 0), t >= 0);
    }
}

// Round `part`'s rule for query token tq and key token tk: kept unless one is past n, it is the
// self pair (content_merge2's, when it is all a row has), the key comes after the query under
// causal, the fixed pass holds it, or the two met in an earlier round (chunk gap 0 or 1 there).
// The last rule makes the rounds' pair sets disjoint, so the merge of their passes is the softmax
// over the union with no correction: the same function as version 2's -log(count) on every
// round's copy of a pair (Reformer's), for one comparison per earlier round instead of a loop over
// all rounds and a logarithm per pair.
// band3_keep_bits gives the rule for this thread's 32 scores of a key chunk as bits: bit
// t * 4 + half * 2 + e is row warp * 16 + group + 8 * half against key t * 8 + 2 * quad + e.
// Written as masks (the earlier rounds in a loop, the fixed pattern's test out of line) rather
// than the rule on each score: that, inlined 32 times, was 20 KB of content_band3's machine code
// and most of a chunk's instructions besides the products.
__device__ __noinline__ uint32_t band3_fixed_clear(uint32_t keep, const int32_t* fixed_state, const uint64_t* fixed_bits, int32_t B,
                                                   int64_t nb, int64_t table, const int32_t* q_tok, const int32_t* k_tok) {
    const int row0 = threadIdx.x / 32 * 16 + threadIdx.x % 32 / 4, col0 = 2 * (threadIdx.x % 4);
    for (int b = 0; b < 32; ++b) {
        if (((keep >> b) & 1u) == 0) continue;
        const int32_t tq = q_tok[row0 + 8 * ((b >> 1) & 1)], tk = k_tok[(b >> 2) * 8 + col0 + (b & 1)];
        if (fixed_allows_at(fixed_state, fixed_bits, B, nb, table, tq, tk)) keep &= ~(1u << b);
    }
    return keep;
}
template <typename T>
__device__ inline uint32_t band3_keep_bits(const ContentParams<T>& p, int64_t table, int part, const int32_t* q_tok, const int32_t* q_cid,
                                           const int32_t* k_tok, const int32_t* k_cid) {
    const int row0 = threadIdx.x / 32 * 16 + threadIdx.x % 32 / 4, col0 = 2 * (threadIdx.x % 4);
    const int32_t tq[2] = {q_tok[row0], q_tok[row0 + 8]};
    uint32_t keep = 0;
#pragma unroll
    for (int t = 0; t < 8; ++t) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int32_t tk = k_tok[t * 8 + col0 + e];
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const bool ok = tq[half] >= 0 && tk >= 0 && tk != tq[half] && !(p.causal && tk > tq[half]);
                keep |= static_cast<uint32_t>(ok) << (t * 4 + half * 2 + e);
            }
        }
    }
#pragma unroll 1
    for (int r = 0; r < part; ++r) {   // pairs that met in an earlier round (chunk gap 0 or 1 there)
        const int32_t c0 = q_cid[r * 64 + row0], c1 = q_cid[r * 64 + row0 + 8];
        uint32_t met = 0;
#pragma unroll
        for (int t = 0; t < 8; ++t) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int32_t ck = k_cid[r * 64 + t * 8 + col0 + e];
                met |= static_cast<uint32_t>(static_cast<uint32_t>(c0 - ck) <= 1u) << (t * 4 + e);
                met |= static_cast<uint32_t>(static_cast<uint32_t>(c1 - ck) <= 1u) << (t * 4 + 2 + e);
            }
        }
        keep &= ~met;
    }
    if (table >= 0) keep = band3_fixed_clear(keep, p.fixed_state, p.fixed_bits, p.fixed_block, p.fixed_nb, table, q_tok, k_tok);
    return keep;
}

// One 64-key chunk of a tile: S = Q K^T for this warp's 16 rows, the pair rule, the online
// softmax and O += P V (version 2's fragments and order).
template <typename T, int D>
__device__ inline void band3_chunk(const ContentParams<T>& p, int64_t table, int part, const uint32_t (&q_frag)[D / 16][4],
                                   const T* ks, const T* vs, const int32_t* q_tok, const int32_t* q_cid, const int32_t* k_tok,
                                   const int32_t* k_cid, float (&o_acc)[D / 8][4], float (&row_max)[2], float (&row_sum)[2]) {
    const uint32_t keep = band3_keep_bits(p, table, part, q_tok, q_cid, k_tok, k_cid);
    float s[8][4];
#pragma unroll
    for (int t = 0; t < 8; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
    warp_scores<T, D>(s, q_frag, ks);
    const auto logit = [&](int t, int e, float x) { return (keep >> (t * 4 + e)) & 1u ? x * p.scale_log2 : -INFINITY; };
    warp_softmax_pv<T, D>(s, logit, vs, o_acc, row_max, row_sum);
}

// content_merge2's self rule for a row that no round gave a key, by the 4 threads of its quad:
// O = the token's own value when it meets itself in some round (always with shared keys: q_chunk
// == k_chunk), lse = scale q . k; else zeros and -inf. Rare (a causal walk's first tokens), so
// not inlined into the tile loop's machine code.
template <typename T>
__device__ __noinline__ void band3_self_row(const int32_t* q_chunk, const int32_t* k_chunk, int rounds, int64_t per_round, int64_t row,
                                            int d, float scale, const T* q, const T* k, const T* v, T* o, float* lse) {
    const int quad = threadIdx.x % 4;
    const unsigned quad_mask = 0xfu << (threadIdx.x % 32 / 4 * 4);
    bool own = q_chunk == k_chunk;
    for (int r = 0; r < rounds && !own; ++r) own = static_cast<uint32_t>(q_chunk[r * per_round + row] - k_chunk[r * per_round + row]) <= 1u;
    float dot = 0.f;
    for (int c = 2 * quad; c < d; c += 8) {
        const float v0 = own ? to_float(v[c]) : 0.f, v1 = own ? to_float(v[c + 1]) : 0.f;
        if (own) dot += to_float(q[c]) * to_float(k[c]) + to_float(q[c + 1]) * to_float(k[c + 1]);
        o[c] = from_float<T>(v0);
        o[c + 1] = from_float<T>(v1);
    }
    dot += __shfl_xor_sync(quad_mask, dot, 1);
    dot += __shfl_xor_sync(quad_mask, dot, 2);
    if (quad == 0) *lse = own ? dot * scale : -INFINITY;
}

// The band walk with chunk 64 (p.chunk == 64, q_rows == k_rows, DK = DV = D): the pairs of
// content_band_tc2's kBand mode less those of earlier rounds (band3_keep_bits), so each round's O
// and lse (normalised, at the tokens' positions) merge with no correction. p.q_sorted_chunk /
// p.k_sorted_chunk: content_sorted_chunks' output for queries and keys.
// A block walks tiles c_begin .. c_end - 1 of one (round, head); tile c is chunk c's 64 queries
// against chunks c - 1 (K / V slot (c + 1) % 2) and c (slot c % 2). Per tile: wait and barrier;
// Q's fragments into registers; chunk c - 1; barrier (every warp is done with Q and with slot
// (c + 1) % 2); copy chunk c + 1's Q, K and V and chunk c + 2's ids; chunk c; the output.
// grid: (ceil(tiles / tiles_per_block), bh, rounds), block 128, dynamic shared memory band3_smem<D>(rounds).
template <typename T, int D>
__global__ void __launch_bounds__(128, 2) content_band3(ContentParams<T> p, int32_t tiles_per_block) {
    using Mma = MmaType<T>;
    constexpr int kS = D + 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* q_tile = reinterpret_cast<T*>(smem_raw);
    T* k_ring = q_tile + 64 * kS;
    T* v_ring = k_ring + kBand3KvSlots * 64 * kS;
    int32_t* q_tok_ring = reinterpret_cast<int32_t*>(v_ring + kBand3KvSlots * 64 * kS);
    int32_t* k_tok_ring = q_tok_ring + kBand3MetaSlots * 64;
    int32_t* q_cid_ring = k_tok_ring + kBand3MetaSlots * 64;                 // [slot][rounds][64]
    int32_t* k_cid_ring = q_cid_ring + kBand3MetaSlots * 64 * p.rounds;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int64_t bhi = blockIdx.y, b = bhi / p.heads, h = bhi % p.heads, n = p.q_rows;
    const int part = p.part_base + static_cast<int>(blockIdx.z);
    const int64_t tiles = (n + 63) / 64, c_begin = int64_t{blockIdx.x} * tiles_per_block;
    const int64_t c_end = c_begin + tiles_per_block < tiles ? c_begin + tiles_per_block : tiles;
    const int64_t seg = int64_t{part} * p.bh + bhi;
    const int64_t table = p.fixed_state != nullptr ? p.fixed_head[h] : -1;
    const T* q_head = p.q + b * p.q_bstride + h * p.q_hstride;
    const T* k_head = p.k + b * p.k_bstride + h * p.k_hstride;
    const T* v_head = p.v + b * p.v_bstride + h * p.v_hstride;
    const int64_t per_round = p.bh * n;
    const Band3Run run{p.q_order + seg * n,
                       p.k_order + seg * n,
                       p.q_sorted_chunk + int64_t{part} * p.rounds * per_round + bhi * n,
                       p.k_sorted_chunk + int64_t{part} * p.rounds * per_round + bhi * n,
                       n,
                       per_round,
                       p.rounds};
    const auto meta_slot = [](int64_t c) { return static_cast<int>(c % kBand3MetaSlots); };
    const auto meta = [&](int64_t c) {
        const int slot = meta_slot(c);
        run.copy_meta(c, q_tok_ring + slot * 64, k_tok_ring + slot * 64, q_cid_ring + slot * 64 * p.rounds,
                      k_cid_ring + slot * 64 * p.rounds);
    };
    const auto kv_rows = [&](int64_t c) {
        const int kv = static_cast<int>(c % kBand3KvSlots);
        band3_rows<D>(k_ring + kv * 64 * kS, k_head, k_tok_ring + meta_slot(c) * 64);
        band3_rows<D>(v_ring + kv * 64 * kS, v_head, k_tok_ring + meta_slot(c) * 64);
    };

    // prologue: the ids of chunks c_begin - 1 and c_begin, then their rows and chunk c_begin + 1's ids
    if (c_begin > 0) meta(c_begin - 1);
    meta(c_begin);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    if (c_begin > 0) kv_rows(c_begin - 1);
    band3_rows<D>(q_tile, q_head, q_tok_ring + meta_slot(c_begin) * 64);
    kv_rows(c_begin);
    if (c_begin + 1 < c_end) meta(c_begin + 1);
    cp_async_commit();

    for (int64_t c = c_begin; c < c_end; ++c) {
        cp_async_wait<0>();   // chunk c's Q, K, V (and c - 1's K, V) and chunk c + 1's ids landed ...
        __syncthreads();      // ... for every thread, and every warp is done with tile c - 1
        const int32_t* q_tok = q_tok_ring + meta_slot(c) * 64;
        const int32_t* q_cid = q_cid_ring + meta_slot(c) * 64 * p.rounds;
        uint32_t q_frag[D / 16][4];
        warp_q_frags<D>(q_frag, q_tile);
        float o_acc[D / 8][4];
#pragma unroll
        for (int t = 0; t < D / 8; ++t) o_acc[t][0] = o_acc[t][1] = o_acc[t][2] = o_acc[t][3] = 0.f;
        float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

        // step 0: the chunk before; step 1: the copies for tile c + 1, then the own chunk. One call
        // site in a loop that is not unrolled: two inlined copies of band3_chunk doubled the
        // kernel's machine code (instruction fetch stalls, see fixed_allows_at).
#pragma unroll 1
        for (int step = 0; step < 2; ++step) {
            if (step == 1) {
                __syncthreads();   // every warp has Q in registers and is done with slot (c - 1) % 2 = (c + 1) % 2
                if (c + 1 < c_end) {
                    band3_rows<D>(q_tile, q_head, q_tok_ring + meta_slot(c + 1) * 64);
                    kv_rows(c + 1);
                }
                if (c + 2 < c_end) meta(c + 2);   // slot (c + 2) % 4 = (c - 2) % 4: tile c - 1's first chunk, done
                cp_async_commit();
            }
            const int64_t kc = c - 1 + step;
            if (kc < 0) continue;
            const int kv = static_cast<int>(kc % kBand3KvSlots);
            band3_chunk<T, D>(p, table, part, q_frag, k_ring + kv * 64 * kS, v_ring + kv * 64 * kS, q_tok, q_cid,
                              k_tok_ring + meta_slot(kc) * 64, k_cid_ring + meta_slot(kc) * 64 * p.rounds, o_acc, row_max, row_sum);
        }

        // the tile's rows, normalised, at their tokens' positions (as content_band_tc2 writes them):
        // this round's part in T, or (p.lse_final, the last round) merged with the earlier rounds'
        // parts by content_merge2's rule, with its self rule for a row no round gave a key
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float sum = row_sum[half];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const int i = warp * 16 + group + 8 * half;
            const int32_t tq = q_tok[i];
            if (tq < 0) continue;
            const int64_t row = bhi * n + tq;
            float own = sum > 0.f ? 1.f / sum : 0.f;
            float lse_row = sum > 0.f ? (row_max[half] + __log2f(sum)) * kLn2 : -INFINITY;
            T* o = p.o_part16 + (int64_t{part} * per_round + row) * D;
            float* lse_out = p.lse_part + int64_t{part} * per_round + row;
            if (p.lse_final != nullptr) {
                float L = lse_row;
#pragma unroll 1
                for (int r = 0; r < part; ++r) L = fmaxf(L, p.lse_part[r * per_round + row]);
                if (L == -INFINITY) {
                    band3_self_row<T>(p.q_chunk, p.k_chunk, part + 1, per_round, row, D, p.self_scale, q_head + int64_t{tq} * D,
                                      k_head + int64_t{tq} * D, v_head + int64_t{tq} * D, p.o_final + row * D, p.lse_final + row);
                    continue;
                }
                float wsum = lse_row == -INFINITY ? 0.f : __expf(lse_row - L);
                own *= wsum;
#pragma unroll 1
                for (int r = 0; r < part; ++r) {
                    const float l = p.lse_part[r * per_round + row];
                    if (l != -INFINITY) wsum += __expf(l - L);
                }
                const float norm = 1.f / wsum;
                own *= norm;
#pragma unroll 1
                for (int r = 0; r < part; ++r) {
                    const float l = p.lse_part[r * per_round + row];
                    if (l == -INFINITY) continue;
                    add_part16<T, D>(o_acc, half, own, __expf(l - L) * norm, p.o_part16 + (r * per_round + row) * D);
                    own = 1.f;
                }
                o = p.o_final + row * D;
                lse_out = p.lse_final + row;
                lse_row = L + logf(wsum);
            }
#pragma unroll
            for (int t = 0; t < D / 8; ++t) {
                *reinterpret_cast<uint32_t*>(o + t * 8 + 2 * quad) = Mma::pack(o_acc[t][2 * half] * own, o_acc[t][2 * half + 1] * own);
            }
            if (quad == 0) *lse_out = lse_row;
        }
    }
    cp_async_wait<0>();
}

} // namespace sparsa::cuda::content
