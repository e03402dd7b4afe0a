// Kernels of the CUDA engine's content-based path (content_cuda.hpp): hashing and anchor cosines,
// chunk ids from the sorted order, the banded pass of one round in sorted order (tensor cores or
// a simple warp-per-row kernel), the log-sum-exp merge of passes, and FAVOR+'s pieces.
//
// One kernel, two walks (ContentParams::q_order set or not):
//   band  (lsh, anchors): the query tile is 64 consecutive sorted indices s of round r (its tokens
//         q_order[r][s]); its keys are the sorted key indices of chunks chunk(s) - 1 and chunk(s),
//         read through k_order (the gather into sorted order happens in the tile loads). Each pair
//         is masked as issue 14's spec says (self, causal, other chunks, pairs of the fixed mask,
//         which its own pass holds) and its logit corrected by -log(count), count = the rounds in
//         which the pair meets, so the passes merge into the exact softmax over the union.
//   dense (FAVOR+): the query rows as they are against keys [split * key_split, ...) with a bias
//         per key (natural log), the same per query tile when bias_tile_stride = 0.
// FAVOR+ as two such passes (favor_* in content_cuda.cu says why that is the same function).
//
// Index: [SECTION] parameters and the pair rule, [SECTION] hashing and chunks, [SECTION] the
// banded pass on tensor cores, [SECTION] the simple pass, [SECTION] merge, [SECTION] FAVOR+.
#pragma once

#include "engine/cuda/attn_fwd_kernels.cuh"

#include <cstdint>

namespace sparsa::cuda::content {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// [SECTION] parameters and the pair rule

// Where a pass's tensors are. Rows of an operand for (batch b, head h) start at
// base + b * batch_stride + h * head_stride (elements); rows are d wide.
template <typename T> struct ContentParams {
    const T* q;
    const T* k;
    const T* v;
    int64_t q_bstride, q_hstride, k_bstride, k_hstride, v_bstride, v_hstride;
    int64_t v_tile_stride;      // dense walk: values move by this many elements per query tile >> tile_shift
    int32_t tile_shift;         // dense walk: query tiles of 64 share values and biases 2^tile_shift at a time
    int64_t heads, bh;          // heads, batch * heads
    int64_t q_rows, k_rows;     // rows of the query and key sequences
    int32_t d;
    float scale_log2;           // scale * log2(e), any sign
    // band walk (lsh, anchors); q_order == nullptr: the dense walk
    const int32_t* q_order;     // [rounds, bh, n] sorted index -> token
    const int32_t* k_order;
    const int32_t* q_chunk;     // [rounds, bh, n] token -> chunk of its sorted index
    const int32_t* k_chunk;
    int32_t rounds, chunk;
    bool causal;
    const int32_t* fixed_state; // per head [nb, nb] block of the fixed mask: -2 none, -1 full, p partial (bits p); nullptr: none
    const int64_t* fixed_head;  // [heads] where head h's table starts, -1: its fixed mask is empty
    const uint64_t* fixed_bits; // [partials, B * B / 64]
    int32_t fixed_block;
    int64_t fixed_nb;
    // dense walk
    const float* key_bias;      // natural log, at key_bias + bh * bias_bh_stride + tile * bias_tile_stride + key; nullptr: 0
    int64_t bias_bh_stride, bias_tile_stride;
    const float* query_bias;    // version 2's intra mode: c_q [bh, q_rows] (content_fast.cuh)
    const int32_t* q_sorted_chunk;   // version 3's band walk: [rounds, rounds, bh, n] (content_band3.cuh)
    const int32_t* k_sorted_chunk;
    int64_t key_split;          // keys per split (blockIdx.z)
    // outputs: part = round (band) or split (dense)
    float* o_part;              // [parts, bh, q_rows, d] normalised O of each part, float32, token order
    float* lse_part;            // [parts, bh, q_rows] natural log; -inf: no key
    T* o_final;                 // when set (one part): O in T [bh, q_rows, d] instead of o_part
    T* o_part16;                // version 2, 16-bit T: when set, the parts' O in T here instead of o_part
    // version 3's causal FAVOR+: the intra pass merges the query pass's part (O in T, lse) into its
    // own in the epilogue and writes o_final and lse_part (part 0), so no merge kernel runs.
    const T* prev_o16;          // [bh, q_rows, d]; nullptr: no merge
    const float* prev_lse;      // [bh, q_rows] natural log
    // version 3's band walk without a fixed pattern: the last round (part_base = rounds - 1) merges
    // the earlier rounds' parts (o_part16, lse_part) with its own, applies content_merge2's self
    // rule, and writes o_final and lse_final, so no merge kernel runs (0.39 ms at n = 65,536, d = 128).
    int32_t part_base;          // the round of blockIdx.z = 0
    float* lse_final;           // [bh, q_rows]; nullptr: write this round's part
    float self_scale;           // the self pair's logit is self_scale * q . k (natural log)
};

// Whether the fixed mask of head h allows (q, k). Not inlined: the tensor-core passes test every
// score of a tile (32 a thread a key chunk, unrolled), and this body (divisions by the runtime
// block) inlined at each made content_band3 240 KB of machine code, far past the instruction
// caches (Nsight Compute on the H100: half of a warp's stalls waiting for an instruction fetch).
__device__ __noinline__ inline bool fixed_allows_at(const int32_t* fixed_state, const uint64_t* fixed_bits, int32_t B, int64_t nb,
                                                    int64_t table, int32_t q, int32_t k) {
    const int32_t state = fixed_state[table + int64_t{q / B} * nb + k / B];
    if (state == -2) return false;
    if (state == -1) return true;
    const int64_t bit = int64_t{q % B} * B + k % B;
    return (fixed_bits[int64_t{state} * (int64_t{B} * B / 64) + bit / 64] >> (bit % 64)) & 1;
}
template <typename T> __device__ inline bool fixed_allows(const ContentParams<T>& p, int64_t table, int32_t q, int32_t k) {
    return fixed_allows_at(p.fixed_state, p.fixed_bits, p.fixed_block, p.fixed_nb, table, q, k);
}

// The band walk's rule for query token tq and key token tk in round r: -inf when the pair is not
// a pair of this pass, else its logit correction -log2(count) (base 2). cq[i * cq_stride] is the
// query's chunk in round i, ck likewise the key's. table: fixed_head[h] (or -1).
template <typename T>
__device__ inline float band_pair(const ContentParams<T>& p, int64_t table, int r, int32_t tq, int32_t tk,
                                  const int32_t* cq, int64_t cq_stride, const int32_t* ck, int64_t ck_stride) {
    if (tq < 0 || tk < 0 || tk == tq) return -INFINITY;   // the self pair: content_merge's, when it is all a row has
    if (p.causal && tk > tq) return -INFINITY;
    const int32_t gap = cq[r * cq_stride] - ck[r * ck_stride];
    if (gap != 0 && gap != 1) return -INFINITY;
    if (table >= 0 && fixed_allows(p, table, tq, tk)) return -INFINITY;   // the fixed pass holds it
    if (p.rounds == 1) return 0.f;
    int count = 0;
    for (int i = 0; i < p.rounds; ++i) {
        const int32_t g = cq[i * cq_stride] - ck[i * ck_stride];
        count += g == 0 || g == 1;
    }
    return -log2f(static_cast<float>(count));
}

// The sorted key range [kbeg, kend) of the band walk's query tile [s0, s0 + rows) (rows > 0).
__device__ inline void band_key_range(int64_t s0, int64_t rows, int64_t n, int32_t chunk, int64_t& kbeg, int64_t& kend) {
    const int64_t c0 = s0 / chunk, c1 = (s0 + rows - 1) / chunk;
    kbeg = c0 > 0 ? (c0 - 1) * chunk : 0;
    kend = (c1 + 1) * chunk < n ? (c1 + 1) * chunk : n;
}

// [SECTION] hashing and chunks

// u = x M for every row x of a head (M: [d, cols] float32, rows of x as T), one warp a row.
//   lsh (Cosine = false): bucket = argmax over [u, -u] (ties to the lowest index); writes
//     key[seg * n + t] = seg << bucket_bits | bucket, seg = seg_base + r * bh + bh_index.
//   anchors (Cosine = true): cos[((seg_base + r * bh + bh_index) * n + t) * cols + c] = u_c / |x| (0 for a zero row).
// M of (head h, round r) at mats + (h * rounds + r) * d * cols. grid: (ceil(n / 4), bh), block 128,
// dynamic shared memory 4 * d floats.
template <typename T, bool Cosine>
__global__ void __launch_bounds__(128) content_project(const T* x, int64_t heads, int64_t bh, int64_t n, int32_t d,
                                                       const float* mats, int32_t rounds, int32_t cols,
                                                       int64_t seg_base, int32_t bucket_bits, uint64_t* keys, float* cos) {
    extern __shared__ float row_smem[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t t = int64_t{blockIdx.x} * 4 + warp, bhi = blockIdx.y;
    if (t >= n) return;
    float* row = row_smem + warp * d;
    const T* src = x + (bhi * n + t) * d;
    float norm2 = 0.f;
    for (int i = lane; i < d; i += 32) {
        row[i] = to_float(src[i]);
        norm2 += row[i] * row[i];
    }
    __syncwarp();
    for (int off = 16; off > 0; off /= 2) norm2 += __shfl_xor_sync(0xffffffffu, norm2, off);
    const int64_t h = bhi % heads;
    for (int r = 0; r < rounds; ++r) {
        const float* m = mats + (h * rounds + r) * int64_t{d} * cols;
        const int64_t seg = seg_base + r * bh + bhi;
        float best = -INFINITY;
        int32_t best_index = INT32_MAX;
        for (int c = lane; c < cols; c += 32) {
            float u = 0.f;
            for (int i = 0; i < d; ++i) u = fmaf(row[i], m[int64_t{i} * cols + c], u);
            if constexpr (Cosine) {
                cos[(seg * n + t) * cols + c] = norm2 > 0.f ? u / sqrtf(norm2) : 0.f;
            } else {
                // +u_c is bucket c, -u_c bucket cols + c: the lower index wins a tie, so + before -
                if (u > best || (u == best && c < best_index)) best = u, best_index = c;
                if (-u > best) best = -u, best_index = cols + c;
            }
        }
        if constexpr (!Cosine) {
            for (int off = 16; off > 0; off /= 2) {
                const float ob = __shfl_xor_sync(0xffffffffu, best, off);
                const int32_t oi = __shfl_xor_sync(0xffffffffu, best_index, off);
                if (ob > best || (ob == best && oi < best_index)) best = ob, best_index = oi;
            }
            if (lane == 0) keys[seg * n + t] = (static_cast<uint64_t>(seg) << bucket_bits) | static_cast<uint64_t>(best_index);
        }
    }
}

// values[i] = i % n: each segment's tokens in position order (the radix sort is stable, so ties
// of bucket keep it). grid: ceil(total / 256), block 256.
__global__ void content_iota(int32_t* values, int64_t total, int64_t n) {
    const int64_t i = int64_t{blockIdx.x} * 256 + threadIdx.x;
    if (i < total) values[i] = static_cast<int32_t>(i % n);
}

// chunk[seg * n + order[seg * n + s]] = s / chunk for every sorted index s of every segment.
__global__ void content_chunk_ids(const int32_t* order, int32_t* chunk_of, int64_t total, int64_t n, int32_t chunk) {
    const int64_t i = int64_t{blockIdx.x} * 256 + threadIdx.x;
    if (i >= total) return;
    const int64_t seg = i / n, s = i % n;
    chunk_of[seg * n + order[i]] = static_cast<int32_t>(s / chunk);
}

// [SECTION] the banded pass on tensor cores

// Shared memory of content_band_tc for head dim D and `rounds` rounds.
template <int D> constexpr int band_tc_smem(int rounds) {
    return 3 * 64 * (D + 8) * 2 + (64 * 3 + 2 * 64 * rounds) * 4;
}

// Rows whose tokens are in tok[0..63] (-1: none, zero-filled) from `head` into `tile` (stride D + 8).
template <int D, typename T> __device__ inline void rows_load_async(T* tile, const T* head, const int32_t* tok) {
    constexpr int kChunksPerRow = D * 2 / 16, kStride = D + 8;
    for (int c = threadIdx.x; c < 64 * kChunksPerRow; c += 128) {
        const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
        const int32_t t = tok[r];
        cp_async_16(tile + r * kStride + col, head + (t >= 0 ? int64_t{t} * D + col : 0), t >= 0);
    }
}

// One thread block per (64-row query tile, batch * head, part); 4 warps of 16 rows; S = Q K^T
// and O += P V with mma.sync m16n8k16 as attn_fwd_kernel2 (one K / V stage), the pair rule on S.
// grid: (ceil(q_rows / 64), bh, parts), block 128, dynamic shared memory band_tc_smem<D>(rounds).
template <typename T, int D> __global__ void __launch_bounds__(128) content_band_tc(ContentParams<T> p) {
    using Mma = MmaType<T>;
    constexpr int kStride = D + 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* q_tile = reinterpret_cast<T*>(smem_raw);
    T* k_tile = q_tile + 64 * kStride;
    T* v_tile = k_tile + 64 * kStride;
    int32_t* q_tok = reinterpret_cast<int32_t*>(v_tile + 64 * kStride);
    int32_t* k_tok = q_tok + 64;
    float* k_bias = reinterpret_cast<float*>(k_tok + 64);
    int32_t* q_cid = reinterpret_cast<int32_t*>(k_bias + 64);   // [rounds, 64]
    int32_t* k_cid = q_cid + 64 * p.rounds;                      // [rounds, 64]

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int64_t tile = blockIdx.x, bhi = blockIdx.y, b = bhi / p.heads, h = bhi % p.heads;
    const int part = blockIdx.z;
    const bool band = p.q_order != nullptr;
    const int64_t s0 = tile * 64, n_q = p.q_rows;
    const int64_t seg = int64_t{part} * p.bh + bhi;   // band: this round's segment
    const int64_t table = band && p.fixed_state != nullptr ? p.fixed_head[h] : -1;

    for (int i = threadIdx.x; i < 64; i += 128) {
        const int64_t s = s0 + i;
        q_tok[i] = s < n_q ? (band ? p.q_order[seg * n_q + s] : static_cast<int32_t>(s)) : -1;
    }
    __syncthreads();
    if (band) {
        for (int i = threadIdx.x; i < 64 * p.rounds; i += 128) {
            const int r = i / 64, t = q_tok[i % 64];
            q_cid[i] = t >= 0 ? p.q_chunk[(int64_t{r} * p.bh + bhi) * n_q + t] : 0;
        }
    }
    const T* k_head = p.k + b * p.k_bstride + h * p.k_hstride;
    const T* v_head = p.v + b * p.v_bstride + h * p.v_hstride + (band ? 0 : (tile >> p.tile_shift) * p.v_tile_stride);
    const float* bias = p.key_bias == nullptr ? nullptr : p.key_bias + bhi * p.bias_bh_stride + (tile >> p.tile_shift) * p.bias_tile_stride;
    rows_load_async<D>(q_tile, p.q + b * p.q_bstride + h * p.q_hstride, q_tok);
    cp_async_commit();

    int64_t kbeg, kend;
    if (band) {
        band_key_range(s0, (n_q - s0 < 64 ? n_q - s0 : 64), n_q, p.chunk, kbeg, kend);
    } else {
        kbeg = int64_t{part} * p.key_split;
        kend = kbeg + p.key_split < p.k_rows ? kbeg + p.key_split : p.k_rows;
    }

    uint32_t q_frag[D / 16][4];
    float o_acc[D / 8][4];
#pragma unroll
    for (int t = 0; t < D / 8; ++t) o_acc[t][0] = o_acc[t][1] = o_acc[t][2] = o_acc[t][3] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

    for (int64_t k0 = kbeg, step = 0; k0 < kend; k0 += 64, ++step) {
        for (int j = threadIdx.x; j < 64; j += 128) {
            const bool valid = k0 + j < kend;
            k_tok[j] = valid ? (band ? p.k_order[seg * p.k_rows + k0 + j] : static_cast<int32_t>(k0 + j)) : -1;
            if (!band) k_bias[j] = !valid ? -INFINITY : bias != nullptr ? bias[k0 + j] * kLog2e : 0.f;
        }
        __syncthreads();
        if (band) {
            for (int i = threadIdx.x; i < 64 * p.rounds; i += 128) {
                const int r = i / 64, t = k_tok[i % 64];
                k_cid[i] = t >= 0 ? p.k_chunk[(int64_t{r} * p.bh + bhi) * p.k_rows + t] : 0;
            }
        }
        rows_load_async<D>(k_tile, k_head, k_tok);
        rows_load_async<D>(v_tile, v_head, k_tok);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        if (step == 0) {
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const int r = warp * 16 + lane % 8 + 8 * ((lane / 8) % 2), c = kk * 16 + 8 * (lane / 16);
                ldmatrix_x4(q_frag[kk], q_tile + r * kStride + c);
            }
        }

        float s[8][4];
#pragma unroll
        for (int t = 0; t < 8; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int np = 0; np < 4; ++np) {
                uint32_t kf[4];
                const int r = np * 16 + lane % 8 + 8 * (lane / 16), c = kk * 16 + 8 * ((lane / 8) % 2);
                ldmatrix_x4(kf, k_tile + r * kStride + c);
                Mma::mma(s[2 * np], q_frag[kk], kf[0], kf[1]);
                Mma::mma(s[2 * np + 1], q_frag[kk], kf[2], kf[3]);
            }
        }

        // logits in base 2 with the pair rule (band) or the key's bias (dense); -inf: no pair
        float scale_old[2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int i = warp * 16 + group + 8 * half;
            const int32_t tq = q_tok[i];
            float mx = row_max[half];
#pragma unroll
            for (int t = 0; t < 8; ++t) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int j = t * 8 + 2 * quad + c;
                    float add;
                    if (band) add = band_pair(p, table, part, tq, k_tok[j], q_cid + i, 64, k_cid + j, 64);
                    else add = tq >= 0 ? k_bias[j] : -INFINITY;
                    float& x = s[t][2 * half + c];
                    x = add == -INFINITY ? -INFINITY : fmaf(x, p.scale_log2, add);
                    mx = fmaxf(mx, x);
                }
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float base = mx == -INFINITY ? 0.f : mx;
            scale_old[half] = exp2f(row_max[half] - base);
            row_max[half] = mx;
            float sum = 0.f;
#pragma unroll
            for (int t = 0; t < 8; ++t) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    float& x = s[t][2 * half + c];
                    x = exp2f(x - base);
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
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const uint32_t pf[4] = {Mma::pack(s[2 * kk][0], s[2 * kk][1]), Mma::pack(s[2 * kk][2], s[2 * kk][3]),
                                    Mma::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    Mma::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t vf[4];
                const int r = kk * 16 + lane % 8 + 8 * ((lane / 8) % 2), c = dp * 16 + 8 * (lane / 16);
                ldmatrix_x4_trans(vf, v_tile + r * kStride + c);
                Mma::mma(o_acc[2 * dp], pf, vf[0], vf[1]);
                Mma::mma(o_acc[2 * dp + 1], pf, vf[2], vf[3]);
            }
        }
        __syncthreads();   // every warp is done with K, V and the key metadata before the next step
    }
    cp_async_wait<0>();   // a tile without keys still waits for its Q copy before it ends

#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float sum = row_sum[half];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int32_t tq = q_tok[warp * 16 + group + 8 * half];
        if (tq < 0) continue;
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        const int64_t row = bhi * n_q + tq;
        if (p.o_final != nullptr) {
            T* o = p.o_final + row * D;
#pragma unroll
            for (int t = 0; t < D / 8; ++t) {
                *reinterpret_cast<uint32_t*>(o + t * 8 + 2 * quad) = Mma::pack(o_acc[t][2 * half] * inv, o_acc[t][2 * half + 1] * inv);
            }
        } else {
            float* o = p.o_part + (int64_t{part} * p.bh * n_q + row) * D;
#pragma unroll
            for (int t = 0; t < D / 8; ++t) {
                *reinterpret_cast<float2*>(o + t * 8 + 2 * quad) = make_float2(o_acc[t][2 * half] * inv, o_acc[t][2 * half + 1] * inv);
            }
        }
        if (quad == 0 && p.lse_part != nullptr) {
            p.lse_part[int64_t{part} * p.bh * n_q + row] = sum > 0.f ? (row_max[half] + log2f(sum)) * kLn2 : -INFINITY;
        }
    }
}

// [SECTION] the simple pass

constexpr int kSimpleMaxChunks = 8;   // d <= 256

// The same pass, one warp per query row, float32 math, one key at a time: any d up to 256, every
// dtype (the float32 path, and the reference the tensor-core kernel is tested against).
// grid: (ceil(q_rows / 4), bh, parts), block 128.
template <typename T> __global__ void __launch_bounds__(128) content_band_simple(ContentParams<T> p) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t s = int64_t{blockIdx.x} * 4 + warp, bhi = blockIdx.y, b = bhi / p.heads, h = bhi % p.heads;
    const int part = blockIdx.z;
    if (s >= p.q_rows) return;
    const bool band = p.q_order != nullptr;
    const int64_t n_q = p.q_rows, seg = int64_t{part} * p.bh + bhi, tile = s / 64;
    const int32_t tq = band ? p.q_order[seg * n_q + s] : static_cast<int32_t>(s);
    const int64_t table = band && p.fixed_state != nullptr ? p.fixed_head[h] : -1;
    const T* q = p.q + b * p.q_bstride + h * p.q_hstride + int64_t{tq} * p.d;
    const T* k_head = p.k + b * p.k_bstride + h * p.k_hstride;
    const T* v_head = p.v + b * p.v_bstride + h * p.v_hstride + (band ? 0 : (tile >> p.tile_shift) * p.v_tile_stride);
    const float* bias = p.key_bias == nullptr ? nullptr : p.key_bias + bhi * p.bias_bh_stride + (tile >> p.tile_shift) * p.bias_tile_stride;
    const int32_t* cq = band ? p.q_chunk + bhi * n_q + tq : nullptr;
    const int64_t c_stride = p.bh * n_q;

    float qr[kSimpleMaxChunks], acc[kSimpleMaxChunks];
#pragma unroll
    for (int c = 0; c < kSimpleMaxChunks; ++c) {
        const int j = lane + 32 * c;
        qr[c] = j < p.d ? to_float(q[j]) : 0.f;
        acc[c] = 0.f;
    }
    int64_t kbeg, kend;
    if (band) {
        band_key_range(s, 1, n_q, p.chunk, kbeg, kend);
    } else {
        kbeg = int64_t{part} * p.key_split;
        kend = kbeg + p.key_split < p.k_rows ? kbeg + p.key_split : p.k_rows;
    }
    float row_max = -INFINITY, row_sum = 0.f;
    for (int64_t sk = kbeg; sk < kend; ++sk) {
        int32_t tk;
        float add;
        if (band) {
            tk = p.k_order[seg * p.k_rows + sk];
            add = band_pair(p, table, part, tq, tk, cq, c_stride, p.k_chunk + bhi * p.k_rows + tk, p.bh * p.k_rows);
        } else {
            tk = static_cast<int32_t>(sk);
            add = bias != nullptr ? bias[sk] * kLog2e : 0.f;
        }
        if (add == -INFINITY) continue;
        float dot = 0.f;
#pragma unroll
        for (int c = 0; c < kSimpleMaxChunks; ++c) {
            const int j = lane + 32 * c;
            if (j < p.d) dot += qr[c] * to_float(k_head[int64_t{tk} * p.d + j]);
        }
        for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        const float x = fmaf(dot, p.scale_log2, add);
        const float new_max = fmaxf(row_max, x);
        const float correction = exp2f(row_max - new_max), weight = exp2f(x - new_max);
        row_sum = row_sum * correction + weight;
        row_max = new_max;
#pragma unroll
        for (int c = 0; c < kSimpleMaxChunks; ++c) {
            const int j = lane + 32 * c;
            if (j < p.d) acc[c] = acc[c] * correction + weight * to_float(v_head[int64_t{tk} * p.d + j]);
        }
    }
    const float inv = row_sum > 0.f ? 1.f / row_sum : 0.f;
    const int64_t row = bhi * n_q + tq;
#pragma unroll
    for (int c = 0; c < kSimpleMaxChunks; ++c) {
        const int j = lane + 32 * c;
        if (j >= p.d) continue;
        if (p.o_final != nullptr) p.o_final[row * p.d + j] = from_float<T>(acc[c] * inv);
        else p.o_part[(int64_t{part} * p.bh * n_q + row) * p.d + j] = acc[c] * inv;
    }
    if (lane == 0 && p.lse_part != nullptr) {
        p.lse_part[int64_t{part} * p.bh * n_q + row] = row_sum > 0.f ? (row_max + log2f(row_sum)) * kLn2 : -INFINITY;
    }
}

// [SECTION] merge

// The passes of each row merged by log-sum-exp: o = sum_i exp(lse_i - L) o_i / sum_i exp(lse_i - L),
// lse = log sum_i exp(lse_i), over `parts` parts (o_part [parts, rows, d], lse_part [parts, rows]) and
// the fixed pass (fixed_o [rows, d], fixed_lse [rows], when given). A row with no key at all
// (every lse -inf) gets its own token when self_ok says the pair (t, t) met in some round (the
// spec's "a token attends to itself only when it has no other key"): o = v_t, lse = scale q_t.k_t;
// else o = 0, lse = -inf. Rows: row = bh * n + t. grid: rows, block: d rounded up to 32 threads.
struct SelfRule {
    bool enabled;              // lsh, anchors
    bool shared_qk;            // then the pair always meets
    const int32_t* q_chunk;    // [rounds, rows] (not shared_qk)
    const int32_t* k_chunk;
    int32_t rounds;
    float scale;
};
template <typename T>
__global__ void content_merge(const float* o_part, const float* lse_part, int32_t parts, const float* fixed_o,
                              const float* fixed_lse, int64_t rows, int32_t d, SelfRule self, const T* q, const T* k,
                              const T* v, T* o, float* lse) {
    const int64_t row = blockIdx.x;
    const int c = threadIdx.x;
    float L = fixed_lse != nullptr ? fixed_lse[row] : -INFINITY;
    for (int i = 0; i < parts; ++i) L = fmaxf(L, lse_part[int64_t{i} * rows + row]);
    if (L == -INFINITY) {
        bool own = false;
        if (self.enabled) {
            own = self.shared_qk;
            for (int r = 0; r < self.rounds && !own; ++r) {
                const int32_t g = self.q_chunk[int64_t{r} * rows + row] - self.k_chunk[int64_t{r} * rows + row];
                own = g == 0 || g == 1;
            }
        }
        if (c < d) o[row * d + c] = own ? v[row * d + c] : from_float<T>(0.f);
        if (c == 0) {
            float dot = 0.f;
            if (own) {
                for (int j = 0; j < d; ++j) dot += to_float(q[row * d + j]) * to_float(k[row * d + j]);
            }
            lse[row] = own ? dot * self.scale : -INFINITY;
        }
        return;
    }
    float acc = 0.f, wsum = 0.f;
    if (fixed_lse != nullptr && fixed_lse[row] != -INFINITY) {
        const float w = __expf(fixed_lse[row] - L);
        wsum += w;
        if (c < d) acc += w * fixed_o[row * d + c];
    }
    for (int i = 0; i < parts; ++i) {
        const float l = lse_part[int64_t{i} * rows + row];
        if (l == -INFINITY) continue;
        const float w = __expf(l - L);
        wsum += w;
        if (c < d) acc += w * o_part[(int64_t{i} * rows + row) * d + c];
    }
    if (c < d) o[row * d + c] = from_float<T>(acc / wsum);
    if (c == 0) lse[row] = L + logf(wsum);
}

// [SECTION] FAVOR+

// bias[row] = -scale |k_row|^2 / 2 (natural log): FAVOR+'s per-key factor exp(-|k'|^2 / 2) as a
// logit bias. One warp a row. grid: ceil(rows / 4), block 128.
template <typename T> __global__ void favor_key_bias(const T* k, int64_t rows, int32_t d, float scale, float* bias) {
    const int64_t row = int64_t{blockIdx.x} * 4 + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    float s = 0.f;
    for (int j = lane; j < d; j += 32) {
        const float x = to_float(k[row * d + j]);
        s += x * x;
    }
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) bias[row] = -0.5f * scale * s;
}

// favor_key_bias for d a multiple of 16 bytes (version 3): 8 threads a row, 16 bytes a load. The warp-a-row
// version read 2 bytes a lane: 0.16 ms at n = 65,536, 16 heads, d = 128 on the H100, for 0.27 GB
// (bidirectional FAVOR+ is 2.8 ms in all). grid: ceil(rows * 8 / 128), block 128.
template <typename T> __global__ void favor_key_bias8(const T* k, int64_t rows, int32_t d, float scale, float* bias) {
    const int64_t row = (int64_t{blockIdx.x} * 128 + threadIdx.x) / 8;
    constexpr int kPer = 16 / static_cast<int>(sizeof(T));
    const int part = threadIdx.x % 8;
    float s = 0.f;
    if (row < rows) {
        for (int j = part * kPer; j < d; j += 8 * kPer) {
            T x[kPer];
            *reinterpret_cast<uint4*>(x) = *reinterpret_cast<const uint4*>(k + row * d + j);
#pragma unroll
            for (int e = 0; e < kPer; ++e) s = fmaf(to_float(x[e]), to_float(x[e]), s);
        }
    }
    for (int off = 4; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (row < rows && part == 0) bias[row] = -0.5f * scale * s;
}

// Causal FAVOR+'s prefix over key chunks: for each (bh, feature j, column c), the exclusive
// log-sum-exp scan over the chunks' (o, lse) of the key pass: state of chunk i = the merge of
// chunks 0 .. i - 1 (-inf and 0 for i = 0). part_o [chunks, bh, m, d], part_lse [chunks, bh, m];
// out_v [bh, chunks, m, d] in T, out_lse [bh, chunks, m]. grid: ceil(bh * m * d / 128), block 128.
template <typename T, typename P>
__global__ void favor_prefix(const P* __restrict__ part_o, const float* __restrict__ part_lse, int64_t chunks, int64_t bh,
                             int64_t m, int32_t d, T* __restrict__ out_v, float* __restrict__ out_lse) {
    const int64_t i = int64_t{blockIdx.x} * 128 + threadIdx.x;
    if (i >= bh * m * d) return;
    const int64_t c = i % d, j = (i / d) % m, bhi = i / (d * m);
    // acc: the prefix's O (normalised), L its log-sum-exp. Eight chunks' loads are issued before
    // their merges: one load at a time left the kernel waiting on memory (Nsight Compute, H100:
    // 1.18 ms at n = 65,536, m = 256, d = 128 with float parts).
    constexpr int kAhead = 8;
    float L = -INFINITY, acc = 0.f;
    for (int64_t ch0 = 0; ch0 < chunks; ch0 += kAhead) {
        float l[kAhead], x[kAhead];
#pragma unroll
        for (int u = 0; u < kAhead; ++u) {
            const int64_t ch = ch0 + u < chunks ? ch0 + u : chunks - 1;
            l[u] = part_lse[(ch * bh + bhi) * m + j];
            x[u] = to_float(part_o[((ch * bh + bhi) * m + j) * d + c]);
        }
#pragma unroll
        for (int u = 0; u < kAhead; ++u) {
            if (ch0 + u >= chunks) break;
            const int64_t out_row = (bhi * chunks + ch0 + u) * m + j;
            out_v[out_row * d + c] = from_float<T>(acc);
            if (c == 0) out_lse[out_row] = L;
            if (l[u] == -INFINITY) continue;
            if (L == -INFINITY) {
                L = l[u], acc = x[u];
                continue;
            }
            const float mx = fmaxf(L, l[u]), wa = __expf(L - mx), wb = __expf(l[u] - mx);
            acc = __fdividef(acc * wa + x[u] * wb, wa + wb);
            L = mx + __logf(wa + wb);
        }
    }
}

// phi-hat of every key row and its stabiliser: t_j = sqrt(scale) omega_j . k - scale |k|^2 / 2,
// c = max_j t_j, phi[row, j] = exp(t_j - c), cmax[row] = c. omega of head h at omega + h * m * d.
// One warp a row; dynamic shared memory 4 * d floats. grid: (ceil(n / 4), bh), block 128.
template <typename T>
__global__ void favor_phi(const T* x, const T* omega, int64_t heads, int64_t n, int32_t d, int64_t m, float scale,
                          bool keys, float* phi, float* cmax) {
    extern __shared__ float row_smem[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t t = int64_t{blockIdx.x} * 4 + warp, bhi = blockIdx.y;
    if (t >= n) return;
    float* row = row_smem + warp * d;
    float norm2 = 0.f;
    for (int i = lane; i < d; i += 32) {
        row[i] = to_float(x[(bhi * n + t) * d + i]);
        norm2 += row[i] * row[i];
    }
    __syncwarp();
    for (int off = 16; off > 0; off /= 2) norm2 += __shfl_xor_sync(0xffffffffu, norm2, off);
    const T* om = omega + (bhi % heads) * m * d;
    const float root = sqrtf(scale), shift = keys ? 0.5f * scale * norm2 : 0.f;
    float* out = phi + (bhi * n + t) * m;
    float mx = -INFINITY;
    for (int64_t j = lane; j < m; j += 32) {
        float u = 0.f;
        for (int i = 0; i < d; ++i) u = fmaf(row[i], to_float(om[j * d + i]), u);
        u = root * u - shift;
        out[j] = u;
        mx = fmaxf(mx, u);
    }
    for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    __syncwarp();
    for (int64_t j = lane; j < m; j += 32) out[j] = __expf(out[j] - mx);
    if (lane == 0) cmax[bhi * n + t] = mx;
}

// Causal FAVOR+ inside a chunk of `chunk` tokens: query t against keys k of its chunk with k <= t, weight
// a_tk = phi(q_t) . phi(k) = exp(c_q + c_k) phi-hat(q) . phi-hat(k) (both from favor_phi), so the
// logit log a_tk = c_q + c_k + log(phi-hat . phi-hat); a softmax over those logits with V gives
// (o, lse) that merge with the chunks before (the prefix pass) by log-sum-exp. One warp a row.
// grid: (ceil(n / 4), bh), block 128.
template <typename T>
__global__ void favor_intra(const float* phi_q, const float* cq, const float* phi_k, const float* ck, const T* v,
                            int64_t n, int32_t d, int64_t m, int64_t chunk, float* o_part, float* lse_part) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t t = int64_t{blockIdx.x} * 4 + warp, bhi = blockIdx.y;
    if (t >= n) return;
    const float* pq = phi_q + (bhi * n + t) * m;
    float acc[kSimpleMaxChunks];
#pragma unroll
    for (int c = 0; c < kSimpleMaxChunks; ++c) acc[c] = 0.f;
    float row_max = -INFINITY, row_sum = 0.f;
    for (int64_t kt = t / chunk * chunk; kt <= t; ++kt) {
        const float* pk = phi_k + (bhi * n + kt) * m;
        float dot = 0.f;
        for (int64_t j = lane; j < m; j += 32) dot = fmaf(pq[j], pk[j], dot);
        for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        if (!(dot > 0.f)) continue;
        const float x = cq[bhi * n + t] + ck[bhi * n + kt] + logf(dot);
        const float new_max = fmaxf(row_max, x);
        const float correction = __expf(row_max - new_max), weight = __expf(x - new_max);
        row_sum = row_sum * correction + weight;
        row_max = new_max;
#pragma unroll
        for (int c = 0; c < kSimpleMaxChunks; ++c) {
            const int j = lane + 32 * c;
            if (j < d) acc[c] = acc[c] * correction + weight * to_float(v[(bhi * n + kt) * d + j]);
        }
    }
    const float inv = row_sum > 0.f ? 1.f / row_sum : 0.f;
#pragma unroll
    for (int c = 0; c < kSimpleMaxChunks; ++c) {
        const int j = lane + 32 * c;
        if (j < d) o_part[(bhi * n + t) * d + j] = acc[c] * inv;
    }
    if (lane == 0) lse_part[bhi * n + t] = row_sum > 0.f ? row_max + logf(row_sum) : -INFINITY;
}

} // namespace sparsa::cuda::content
