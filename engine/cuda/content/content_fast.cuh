// Version 2 of the content path's kernels (content_kernels.cuh holds version 1, kept as the
// record and the fallback: CudaContentOptions::version): written after the first H100 run
// (bench/results/content-cuda-nvidia-h100-80gb-hbm3.md, 2026-12-06) measured lsh(64, rounds = 2)
// at n = 65,536, d = 128 in 10.8 ms (hashing and sorting 3.2, passes 6.5, merge 1.2) and
// bidirectional FAVOR+ in 3.7 ms: about 50 us a 64-row tile whatever its work.
//
//   content_band_tc2: a tile's keys in steps of up to 128 (chunk 64: one step), the tokens of
//     queries and keys read in one phase and their chunk ids and Q, K, V rows in the next (two
//     dependent memory trips a step instead of four, the first step's Q with its K and V); the
//     pair rule specialised at compile time (Mode), ex2.approx and __log2f (count is a small
//     integer); separate widths for S (DK) and O (DV), so that causal FAVOR+'s explicit
//     phi(q) . phi(k) products run here too (Mode intra).
//   content_project2: hashing, anchor cosines and FAVOR+'s x omega^T, 64 tokens a block, each
//     thread 8 tokens x 4 columns from shared memory (x and the matrix read once a block; the
//     first version read the matrix from L1 once per token).
//   favor_phi_tc: causal FAVOR+'s phi-hat(x) = exp(root x . omega_j - shift - c) on tensor cores
//     (the first version's one warp a row on float32 cores took most of its 294 ms at 65,536).
//   content_merge2: the merge with 4 columns a thread (16-byte loads).
//
// Index: [SECTION] the pass, [SECTION] projections, [SECTION] FAVOR+'s phi on tensor cores, [SECTION] merge.
#pragma once

#include "engine/cuda/content/content_kernels.cuh"

namespace sparsa::cuda::content {

// [SECTION] the pass

enum PassMode : int { kBand = 0, kDense = 1, kIntra = 2 };

template <int DK, int DV, int KRows> constexpr int band_tc2_smem(int rounds) {
    return (64 * (DK + 8) + KRows * (DK + 8) + KRows * (DV + 8)) * 2 + (64 * 2 + KRows * 2 + rounds * (64 + KRows)) * 4;
}

// rows[0 .. Rows) of `tile` (stride W + 8) from `head` (rows W wide) at tokens tok[] (-1: zero-filled).
template <int W, int Rows, typename T> __device__ inline void rows_load2(T* tile, const T* head, const int32_t* tok) {
    constexpr int kChunksPerRow = W * 2 / 16, kStride = W + 8;
    for (int c = threadIdx.x; c < Rows * kChunksPerRow; c += 128) {
        const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
        const int32_t t = tok[r];
        cp_async_16(tile + r * kStride + col, head + (t >= 0 ? int64_t{t} * W + col : 0), t >= 0);
    }
}

// A warp's Q fragments for warp_scores: its 16 rows (16 * warp ..) of a tile of stride DK + 8.
template <int DK, typename T> __device__ __forceinline__ void warp_q_frags(uint32_t (&q_frag)[DK / 16][4], const T* q_tile) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int kk = 0; kk < DK / 16; ++kk) {
        const int r = warp * 16 + lane % 8 + 8 * ((lane / 8) % 2), c = kk * 16 + 8 * (lane / 16);
        ldmatrix_x4(q_frag[kk], q_tile + r * (DK + 8) + c);
    }
}

// s += Q K^T for a warp's 16 query rows (q_frag: their fragments, DK wide) against 64 keys at ks
// (stride DK + 8): m16n8k16 products, s[t] the keys t * 8 .. t * 8 + 7.
template <typename T, int DK>
__device__ __forceinline__ void warp_scores(float (&s)[8][4], const uint32_t (&q_frag)[DK / 16][4], const T* ks) {
    using Mma = MmaType<T>;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int kk = 0; kk < DK / 16; ++kk) {
#pragma unroll
        for (int np = 0; np < 4; ++np) {
            uint32_t kf[4];
            const int r = np * 16 + lane % 8 + 8 * (lane / 16), c = kk * 16 + 8 * ((lane / 8) % 2);
            ldmatrix_x4(kf, ks + r * (DK + 8) + c);
            Mma::mma(s[2 * np], q_frag[kk], kf[0], kf[1]);
            Mma::mma(s[2 * np + 1], q_frag[kk], kf[2], kf[3]);
        }
    }
}

// The online softmax of a warp's 16 rows over 64 raw products s, then O += P V with V's 64 rows at
// vs (stride DV + 8). logit(t, e, x): the score of s[t][e] (e = 2 * half + column) in log2 units
// from its product x, -inf to drop the pair; applied as each row's maximum is taken (the order the
// passes had, and their register counts). Every content pass's step ends here (content_band_tc2,
// content_band3, content_dense3) but version 1's content_band_tc, which keeps its own copy as the
// record of the first run: exp2f where this uses ex2.approx, so its results differ in the last bits.
template <typename T, int DV, typename Logit>
__device__ __forceinline__ void warp_softmax_pv(float (&s)[8][4], const Logit& logit, const T* vs, float (&o_acc)[DV / 8][4],
                                                float (&row_max)[2], float (&row_sum)[2]) {
    using Mma = MmaType<T>;
    const int lane = threadIdx.x % 32;
    float scale_old[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float mx = row_max[half];
#pragma unroll
        for (int t = 0; t < 8; ++t) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                float& x = s[t][2 * half + c];
                x = logit(t, 2 * half + c, x);
                mx = fmaxf(mx, x);
            }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float base = mx == -INFINITY ? 0.f : mx;
        scale_old[half] = exp2_fast(row_max[half] - base);
        row_max[half] = mx;
        float sum = 0.f;
#pragma unroll
        for (int t = 0; t < 8; ++t) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                float& x = s[t][2 * half + c];
                x = exp2_fast(x - base);
                sum += x;
            }
        }
        row_sum[half] = row_sum[half] * scale_old[half] + sum;
    }
#pragma unroll
    for (int t = 0; t < DV / 8; ++t) {
        o_acc[t][0] *= scale_old[0];
        o_acc[t][1] *= scale_old[0];
        o_acc[t][2] *= scale_old[1];
        o_acc[t][3] *= scale_old[1];
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        const uint32_t pf[4] = {Mma::pack(s[2 * kk][0], s[2 * kk][1]), Mma::pack(s[2 * kk][2], s[2 * kk][3]),
                                Mma::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]), Mma::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < DV / 16; ++dp) {
            uint32_t vf[4];
            const int r = kk * 16 + lane % 8 + 8 * ((lane / 8) % 2), c = dp * 16 + 8 * (lane / 16);
            ldmatrix_x4_trans(vf, vs + r * (DV + 8) + c);
            Mma::mma(o_acc[2 * dp], pf, vf[0], vf[1]);
            Mma::mma(o_acc[2 * dp + 1], pf, vf[2], vf[3]);
        }
    }
}

// o_acc's rows of `half` (this thread's columns t * 8 + 2 * quad + {0, 1}) = o_acc * own + w * part,
// part: an earlier pass's normalised O of the row in T (the merges inside a pass's epilogue:
// content_band_tc2's intra mode, content_band3's last round).
template <typename T, int D>
__device__ inline void add_part16(float (&o_acc)[D / 8][4], int half, float own, float w, const T* part) {
    const int quad = threadIdx.x % 4;
#pragma unroll
    for (int t = 0; t < D / 8; ++t) {
        const uint32_t raw = *reinterpret_cast<const uint32_t*>(part + t * 8 + 2 * quad);
        T pair[2];
        memcpy(pair, &raw, sizeof raw);
        o_acc[t][2 * half] = fmaf(o_acc[t][2 * half], own, w * to_float(pair[0]));
        o_acc[t][2 * half + 1] = fmaf(o_acc[t][2 * half + 1], own, w * to_float(pair[1]));
    }
}

// Modes: kBand (lsh, anchors: DK = DV = d), kDense (FAVOR+'s passes: a bias per key),
// kIntra (causal FAVOR+ inside a chunk of p.chunk tokens: q, k are phi-hat [rows, m] in T
// (DK = m), the logit is log(phi-hat(q) . phi-hat(k)) + c_q + c_k with c_q in p.query_bias and
// c_k in p.key_bias (natural log), keys k <= q of the query's chunk).
// grid: (ceil(q_rows / 64), bh, parts), block 128, dynamic shared memory band_tc2_smem.
template <typename T, int DK, int DV, int KRows, int Mode>
__global__ void __launch_bounds__(128) content_band_tc2(ContentParams<T> p) {
    using Mma = MmaType<T>;
    constexpr int kSK = DK + 8, kSV = DV + 8;
    constexpr bool kQInRegs = DK <= 128;   // wider Q (FAVOR+'s m = 256) is read from shared memory each step
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* q_tile = reinterpret_cast<T*>(smem_raw);
    T* k_tile = q_tile + 64 * kSK;
    T* v_tile = k_tile + KRows * kSK;
    int32_t* q_tok = reinterpret_cast<int32_t*>(v_tile + KRows * kSV);
    float* q_add = reinterpret_cast<float*>(q_tok + 64);
    int32_t* k_tok = reinterpret_cast<int32_t*>(q_add + 64);
    float* k_add = reinterpret_cast<float*>(k_tok + KRows);
    int32_t* q_cid = reinterpret_cast<int32_t*>(k_add + KRows);   // [rounds, 64]
    int32_t* k_cid = q_cid + 64 * p.rounds;                        // [rounds, KRows]

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int64_t tile = blockIdx.x, bhi = blockIdx.y, b = bhi / p.heads, h = bhi % p.heads;
    const int part = blockIdx.z;
    const int64_t s0 = tile * 64, n_q = p.q_rows;
    const int64_t seg = int64_t{part} * p.bh + bhi;
    const int64_t table = Mode == kBand && p.fixed_state != nullptr ? p.fixed_head[h] : -1;
    const T* q_head = p.q + b * p.q_bstride + h * p.q_hstride;
    const T* k_head = p.k + b * p.k_bstride + h * p.k_hstride;
    const T* v_head = p.v + b * p.v_bstride + h * p.v_hstride + (Mode == kDense ? (tile >> p.tile_shift) * p.v_tile_stride : 0);
    const float* kbias = p.key_bias == nullptr ? nullptr
                                               : p.key_bias + bhi * p.bias_bh_stride + (Mode == kDense ? (tile >> p.tile_shift) * p.bias_tile_stride : 0);

    int64_t kbeg, kend;
    if constexpr (Mode == kBand) {
        band_key_range(s0, (n_q - s0 < 64 ? n_q - s0 : 64), n_q, p.chunk, kbeg, kend);
    } else if constexpr (Mode == kDense) {
        kbeg = int64_t{part} * p.key_split;
        kend = kbeg + p.key_split < p.k_rows ? kbeg + p.key_split : p.k_rows;
    } else {
        kbeg = s0 / p.chunk * p.chunk;
        kend = s0 + 64 < n_q ? s0 + 64 : n_q;
    }

    uint32_t q_frag[kQInRegs ? DK / 16 : 1][4];
    float o_acc[DV / 8][4];
#pragma unroll
    for (int t = 0; t < DV / 8; ++t) o_acc[t][0] = o_acc[t][1] = o_acc[t][2] = o_acc[t][3] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

    for (int64_t k0 = kbeg, step = 0; k0 < kend; k0 += KRows, ++step) {
        // phase 1: tokens (and per-row values that need only the token)
        if (step == 0 && threadIdx.x < 64) {
            const int64_t s = s0 + threadIdx.x;
            const int32_t t = s < n_q ? (Mode == kBand ? p.q_order[seg * n_q + s] : static_cast<int32_t>(s)) : -1;
            q_tok[threadIdx.x] = t;
            if constexpr (Mode == kIntra) q_add[threadIdx.x] = t >= 0 ? p.query_bias[bhi * n_q + t] * kLog2e : 0.f;
        }
        for (int j = threadIdx.x; j < KRows; j += 128) {
            const bool valid = k0 + j < kend;
            int32_t t = -1;
            if (valid) t = Mode == kBand ? p.k_order[seg * p.k_rows + k0 + j] : static_cast<int32_t>(k0 + j);
            k_tok[j] = t;
            if constexpr (Mode == kDense) k_add[j] = !valid ? -INFINITY : kbias != nullptr ? kbias[k0 + j] * kLog2e : 0.f;
            if constexpr (Mode == kIntra) k_add[j] = !valid ? -INFINITY : kbias[k0 + j] * kLog2e;
        }
        __syncthreads();
        // phase 2: chunk ids and rows
        if constexpr (Mode == kBand) {
            if (step == 0) {
                for (int i = threadIdx.x; i < 64 * p.rounds; i += 128) {
                    const int r = i / 64, t = q_tok[i % 64];
                    q_cid[i] = t >= 0 ? p.q_chunk[(int64_t{r} * p.bh + bhi) * n_q + t] : 0;
                }
            }
            for (int i = threadIdx.x; i < KRows * p.rounds; i += 128) {
                const int r = i / KRows, t = k_tok[i % KRows];
                k_cid[i] = t >= 0 ? p.k_chunk[(int64_t{r} * p.bh + bhi) * p.k_rows + t] : 0;
            }
        }
        if (step == 0) rows_load2<DK, 64>(q_tile, q_head, q_tok);
        rows_load2<DK, KRows>(k_tile, k_head, k_tok);
        rows_load2<DV, KRows>(v_tile, v_head, k_tok);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        if constexpr (kQInRegs) {
            if (step == 0) warp_q_frags<DK>(q_frag, q_tile);
        }

        for (int sub = 0; sub < KRows / 64; ++sub) {
            if (k0 + sub * 64 >= kend) break;   // the same for every thread
            const T* ks = k_tile + sub * 64 * kSK;
            const T* vs = v_tile + sub * 64 * kSV;
            float s[8][4];
#pragma unroll
            for (int t = 0; t < 8; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
            if constexpr (kQInRegs) {
                warp_scores<T, DK>(s, q_frag, ks);
            } else {
#pragma unroll
                for (int kk = 0; kk < DK / 16; ++kk) {
                    uint32_t qf[4];
                    const int r = warp * 16 + lane % 8 + 8 * ((lane / 8) % 2), c = kk * 16 + 8 * (lane / 16);
                    ldmatrix_x4(qf, q_tile + r * kSK + c);
#pragma unroll
                    for (int np = 0; np < 4; ++np) {
                        uint32_t kf[4];
                        const int r2 = np * 16 + lane % 8 + 8 * (lane / 16), c2 = kk * 16 + 8 * ((lane / 8) % 2);
                        ldmatrix_x4(kf, ks + r2 * kSK + c2);
                        Mma::mma(s[2 * np], qf, kf[0], kf[1]);
                        Mma::mma(s[2 * np + 1], qf, kf[2], kf[3]);
                    }
                }
            }

            const auto logit = [&](int t, int e, float x) {
                const int i = warp * 16 + group + 8 * (e / 2), j = sub * 64 + t * 8 + 2 * quad + e % 2;
                const int32_t tq = q_tok[i];
                if constexpr (Mode == kBand) {
                    const float add = band_pair(p, table, part, tq, k_tok[j], q_cid + i, 64, k_cid + j, KRows);
                    return add == -INFINITY ? -INFINITY : fmaf(x, p.scale_log2, add);
                } else if constexpr (Mode == kDense) {
                    return tq < 0 || k_add[j] == -INFINITY ? -INFINITY : fmaf(x, p.scale_log2, k_add[j]);
                } else {
                    const int32_t tk = k_tok[j];
                    return tq < 0 || tk < 0 || tk > tq || !(x > 0.f) ? -INFINITY : __log2f(x) + q_add[i] + k_add[j];
                }
            };
            warp_softmax_pv<T, DV>(s, logit, vs, o_acc, row_max, row_sum);
        }
        __syncthreads();   // every warp is done with K, V and the key metadata before the next step
    }
    cp_async_wait<0>();

#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float sum = row_sum[half];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        // the tile's tokens are written before the loop only when it has keys; else they are the rows s0 + i
        const int i = warp * 16 + group + 8 * half;
        int32_t tq;
        if (kbeg < kend) {
            tq = q_tok[i];
        } else {
            const int64_t s = s0 + i;
            tq = s < n_q ? (Mode == kBand ? p.q_order[seg * n_q + s] : static_cast<int32_t>(s)) : -1;
        }
        if (tq < 0) continue;
        float inv = sum > 0.f ? 1.f / sum : 0.f;
        const int64_t row = bhi * n_q + tq;
        float lse_out = sum > 0.f ? (row_max[half] + __log2f(sum)) * kLn2 : -INFINITY;
        if (p.prev_o16 != nullptr) {
            // content_merge2's rule for two parts: weights exp(lse - max), O their weighted mean
            const float l_prev = p.prev_lse[row], L = fmaxf(l_prev, lse_out);
            const float w_prev = L == -INFINITY ? 0.f : __expf(l_prev - L), w_own = L == -INFINITY ? 0.f : __expf(lse_out - L);
            const float wsum = w_prev + w_own, norm = wsum > 0.f ? 1.f / wsum : 0.f;
            add_part16<T, DV>(o_acc, half, inv * w_own * norm, w_prev * norm, p.prev_o16 + row * DV);
            inv = 1.f;
            lse_out = wsum > 0.f ? L + logf(wsum) : -INFINITY;
        }
        if (p.o_final != nullptr) {
            T* o = p.o_final + row * DV;
#pragma unroll
            for (int t = 0; t < DV / 8; ++t) {
                *reinterpret_cast<uint32_t*>(o + t * 8 + 2 * quad) = Mma::pack(o_acc[t][2 * half] * inv, o_acc[t][2 * half + 1] * inv);
            }
        } else if (p.o_part16 != nullptr) {
            T* o = p.o_part16 + (int64_t{part} * p.bh * n_q + row) * DV;
#pragma unroll
            for (int t = 0; t < DV / 8; ++t) {
                *reinterpret_cast<uint32_t*>(o + t * 8 + 2 * quad) = Mma::pack(o_acc[t][2 * half] * inv, o_acc[t][2 * half + 1] * inv);
            }
        } else {
            float* o = p.o_part + (int64_t{part} * p.bh * n_q + row) * DV;
#pragma unroll
            for (int t = 0; t < DV / 8; ++t) {
                *reinterpret_cast<float2*>(o + t * 8 + 2 * quad) = make_float2(o_acc[t][2 * half] * inv, o_acc[t][2 * half + 1] * inv);
            }
        }
        if (quad == 0 && p.lse_part != nullptr) {
            p.lse_part[int64_t{part} * p.bh * n_q + row] = lse_out;
        }
    }
}

// [SECTION] projections

enum ProjectMode : int { kHash = 0, kCosine = 1 };

// smem of content_project2 for width d: x transposed [d, 68] and a 64-column slice of the matrix [d, 64].
inline int project2_smem(int d) { return d * (68 + 64) * 4 + 64 * 4; }

// u = x M for 64 rows x of a head a block (M: [d, cols] float32 at mats + (h * rounds + r) * d * cols):
//   kHash:   bucket = argmax [u, -u] (ties lowest) -> keys[seg * n + t] = seg << bucket_bits | bucket
//   kCosine: out[(seg * n + t) * cols + c] = u_c / |x| (0 for a zero row)
// Each thread: 8 rows x 4 columns of a 64-column slice. grid: (ceil(n / 64), bh), block 128.
template <typename T, int Mode>
__global__ void __launch_bounds__(128) content_project2(const T* x, int64_t heads, int64_t bh, int64_t n, int32_t d,
                                                        const float* mats, int32_t rounds, int32_t cols, int64_t seg_base,
                                                        int32_t bucket_bits, uint64_t* keys, float* out) {
    extern __shared__ float smem[];
    float* xs = smem;                 // [d, 68]: x[i][token]
    float* ms = xs + d * 68;          // [d, 64]
    float* norm = ms + d * 64;        // [64] |x|^2
    const int tid = threadIdx.x, tg = tid / 16, cg = tid % 16;
    const int64_t t0 = int64_t{blockIdx.x} * 64, bhi = blockIdx.y, h = bhi % heads;
    for (int e = tid; e < 64 * d; e += 128) {
        const int tt = e / d, i = e % d;
        xs[i * 68 + tt] = t0 + tt < n ? to_float(x[(bhi * n + t0 + tt) * d + i]) : 0.f;
    }
    __syncthreads();
    if (tid < 64) {
        float s = 0.f;
        for (int i = 0; i < d; ++i) s += xs[i * 68 + tid] * xs[i * 68 + tid];
        norm[tid] = s;
    }
    for (int r = 0; r < rounds; ++r) {
        const float* m = mats + (h * rounds + r) * int64_t{d} * cols;
        const int64_t seg = seg_base + r * bh + bhi;
        float best[8];
        int32_t best_index[8];
#pragma unroll
        for (int a = 0; a < 8; ++a) best[a] = -INFINITY, best_index[a] = INT32_MAX;
        for (int cc = 0; cc < cols; cc += 64) {
            __syncthreads();   // the slice before is read by every thread (and norm is written)
            for (int e = tid; e < 64 * d; e += 128) {
                const int i = e / 64, c = e % 64;
                ms[i * 64 + c] = cc + c < cols ? m[int64_t{i} * cols + cc + c] : 0.f;
            }
            __syncthreads();
            float acc[8][4];
#pragma unroll
            for (int a = 0; a < 8; ++a) acc[a][0] = acc[a][1] = acc[a][2] = acc[a][3] = 0.f;
            for (int i = 0; i < d; ++i) {
                const float4 x0 = *reinterpret_cast<const float4*>(xs + i * 68 + tg * 8);
                const float4 x1 = *reinterpret_cast<const float4*>(xs + i * 68 + tg * 8 + 4);
                const float4 mv = *reinterpret_cast<const float4*>(ms + i * 64 + cg * 4);
                const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w}, mm[4] = {mv.x, mv.y, mv.z, mv.w};
#pragma unroll
                for (int a = 0; a < 8; ++a)
#pragma unroll
                    for (int c = 0; c < 4; ++c) acc[a][c] = fmaf(xv[a], mm[c], acc[a][c]);
            }
#pragma unroll
            for (int a = 0; a < 8; ++a) {
                const int64_t t = t0 + tg * 8 + a;
#pragma unroll
                for (int c4 = 0; c4 < 4; ++c4) {
                    const int c = cc + cg * 4 + c4;
                    if (c >= cols || t >= n) continue;
                    const float u = acc[a][c4];
                    if constexpr (Mode == kHash) {
                        if (u > best[a] || (u == best[a] && c < best_index[a])) best[a] = u, best_index[a] = c;
                        if (-u > best[a] || (-u == best[a] && cols + c < best_index[a])) best[a] = -u, best_index[a] = cols + c;
                    } else {
                        const float nn = norm[tg * 8 + a];
                        out[(seg * n + t) * cols + c] = nn > 0.f ? u / sqrtf(nn) : 0.f;
                    }
                }
            }
        }
        if constexpr (Mode == kHash) {
#pragma unroll
            for (int a = 0; a < 8; ++a) {
                for (int off = 8; off > 0; off /= 2) {   // the 16 threads of a row group: one half-warp
                    const float ob = __shfl_xor_sync(0xffffffffu, best[a], off);
                    const int32_t oi = __shfl_xor_sync(0xffffffffu, best_index[a], off);
                    if (ob > best[a] || (ob == best[a] && oi < best_index[a])) best[a] = ob, best_index[a] = oi;
                }
                const int64_t t = t0 + tg * 8 + a;
                if (cg == 0 && t < n) keys[seg * n + t] = (static_cast<uint64_t>(seg) << bucket_bits) | static_cast<uint64_t>(best_index[a]);
            }
        }
    }
}

// [SECTION] FAVOR+'s phi on tensor cores

template <int D> constexpr int phi_tc_smem(int m) {
    return (2 * 64 * (D + 8) + 64 * (m + 8)) * 2 + (64 * ((m + 63) / 64) + 2 * 64) * 4;
}

// phi-hat of 64 rows x a block: v_j = root * (x . omega_j) - shift (shift = half_scale |x|^2: keys; 0:
// queries), c = max_j v_j, phi[(bh * n + t) * m + j] = exp(v_j - c) in T, cmax[bh * n + t] = c. The
// features come 64 at a time (omega of head h at omega + h * m * D, in T); each tile's values are
// kept in shared memory as exp(v - the running max after that tile) and scaled to the final max
// when written. Queries and keys in one launch: blockIdx.z = 0 takes side 0 (the queries), 1
// side 1 (the keys). grid: (ceil(n / 64), bh, 2), block 128, dynamic shared memory phi_tc_smem<D>(m).
template <typename T> struct PhiSide {
    const T* x;
    float half_scale;
    T* phi;
    float* cmax;
};
template <typename T, int D>
__global__ void __launch_bounds__(128) favor_phi_tc(PhiSide<T> side0, PhiSide<T> side1, const T* omega, int64_t heads, int64_t n, int64_t m,
                                                    float root) {
    const PhiSide<T>& side = blockIdx.z == 0 ? side0 : side1;
    const T* x = side.x;
    const float half_scale = side.half_scale;
    T* phi = side.phi;
    float* cmax = side.cmax;
    using Mma = MmaType<T>;
    constexpr int kS = D + 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* x_tile = reinterpret_cast<T*>(smem_raw);
    T* w_tile = x_tile + 64 * kS;
    T* out = w_tile + 64 * kS;                               // [64, m + 8]
    const int64_t ms = m + 8, tiles = (m + 63) / 64;
    float* tile_max = reinterpret_cast<float*>(out + 64 * ms);   // [64, tiles]
    float* shift = tile_max + 64 * tiles;                    // [64]
    float* row_final = shift + 64;                           // [64]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int64_t t0 = int64_t{blockIdx.x} * 64, bhi = blockIdx.y, h = bhi % heads;
    __shared__ int32_t tok[64];
    if (threadIdx.x < 64) tok[threadIdx.x] = t0 + threadIdx.x < n ? static_cast<int32_t>(t0 + threadIdx.x) : -1;
    __syncthreads();
    rows_load2<D, 64>(x_tile, x + bhi * n * D, tok);
    cp_async_commit();
    // feature tile ft's 64 rows of omega (zero past m); issued a tile ahead, while the tile before
    // computes its exponentials (one copy in flight at a time left the block waiting on memory)
    const auto load_features = [&](int64_t ft) {
        const T* head = omega + h * m * D;
        for (int c = threadIdx.x; c < 64 * (D / 8); c += 128) {
            const int r = c / (D / 8), col = c % (D / 8) * 8;
            const int64_t row = ft * 64 + r;
            cp_async_16(w_tile + r * kS + col, head + (row < m ? row : 0) * D + col, row < m);
        }
        cp_async_commit();
    };
    load_features(0);
    cp_async_wait<0>();
    __syncthreads();
    if (threadIdx.x < 64) {
        float s = 0.f;
        for (int i = 0; i < D; ++i) {
            const float v = to_float(x_tile[threadIdx.x * kS + i]);
            s += v * v;
        }
        shift[threadIdx.x] = half_scale * s;
    }
    uint32_t x_frag[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const int r = warp * 16 + lane % 8 + 8 * ((lane / 8) % 2), c = kk * 16 + 8 * (lane / 16);
        ldmatrix_x4(x_frag[kk], x_tile + r * kS + c);
    }
    float running[2] = {-INFINITY, -INFINITY};
    for (int64_t ft = 0; ft < tiles; ++ft) {
        cp_async_wait<0>();
        __syncthreads();   // tile ft's features landed for every thread (and shift is written)
        float s[8][4];
#pragma unroll
        for (int t = 0; t < 8; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int np = 0; np < 4; ++np) {
                uint32_t kf[4];
                const int r = np * 16 + lane % 8 + 8 * (lane / 16), c = kk * 16 + 8 * ((lane / 8) % 2);
                ldmatrix_x4(kf, w_tile + r * kS + c);
                Mma::mma(s[2 * np], x_frag[kk], kf[0], kf[1]);
                Mma::mma(s[2 * np + 1], x_frag[kk], kf[2], kf[3]);
            }
        }
        __syncthreads();   // every warp is done reading tile ft's features
        if (ft + 1 < tiles) load_features(ft + 1);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int i = warp * 16 + group + 8 * half;
            float mx = running[half];
#pragma unroll
            for (int t = 0; t < 8; ++t) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int64_t j = ft * 64 + t * 8 + 2 * quad + c;
                    float& v = s[t][2 * half + c];
                    v = j < m ? fmaf(root, v, -shift[i]) : -INFINITY;
                    mx = fmaxf(mx, v);
                }
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            running[half] = mx;
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                const int64_t j = ft * 64 + t * 8 + 2 * quad;
                if (j < m) *reinterpret_cast<uint32_t*>(out + i * ms + j) = Mma::pack(__expf(s[t][2 * half] - mx), __expf(s[t][2 * half + 1] - mx));
            }
            if (quad == 0) tile_max[i * tiles + ft] = mx;
        }
    }
    if (quad == 0) {
        row_final[warp * 16 + group] = running[0];
        row_final[warp * 16 + group + 8] = running[1];
    }
    __syncthreads();
    // 8 features (16 bytes) a thread a step, one scale each (8 features lie in one 64-feature tile;
    // m is a multiple of 64 on this path): the first version wrote one element a step, behind a
    // 64-bit division and remainder by m and an exponential each (Nsight Compute: 1.83 ms a launch
    // at n = 65,536, m = 256, d = 128 on the H100).
    const int per_row = static_cast<int>(m / 8);
    for (int e = threadIdx.x; e < 64 * per_row; e += 128) {
        const int i = e / per_row, j0 = (e % per_row) * 8;
        if (t0 + i >= n) continue;
        const float scale = __expf(tile_max[i * tiles + j0 / 64] - row_final[i]);
        T v[8];
        *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(out + i * ms + j0);
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = from_float<T>(to_float(v[k]) * scale);
        *reinterpret_cast<uint4*>(phi + (bhi * n + t0 + i) * m + j0) = *reinterpret_cast<const uint4*>(v);
    }
    if (threadIdx.x < 64 && t0 + threadIdx.x < n) cmax[bhi * n + t0 + threadIdx.x] = row_final[threadIdx.x];
}

// [SECTION] merge

template <typename T> __device__ inline void store4(T* dst, float a, float b, float c, float d);
template <> __device__ inline void store4<float>(float* dst, float a, float b, float c, float d) {
    *reinterpret_cast<float4*>(dst) = make_float4(a, b, c, d);
}
template <> __device__ inline void store4<__nv_bfloat16>(__nv_bfloat16* dst, float a, float b, float c, float d) {
    *reinterpret_cast<uint2*>(dst) = make_uint2(MmaType<__nv_bfloat16>::pack(a, b), MmaType<__nv_bfloat16>::pack(c, d));
}
template <> __device__ inline void store4<__half>(__half* dst, float a, float b, float c, float d) {
    *reinterpret_cast<uint2*>(dst) = make_uint2(MmaType<__half>::pack(a, b), MmaType<__half>::pack(c, d));
}

// Four values of a part's O as float: P = float, or the 16-bit T of version 2's rounds.
__device__ inline float4 load4(const float* src) { return *reinterpret_cast<const float4*>(src); }
template <typename P> __device__ inline float4 load4(const P* src) {
    const uint2 raw = *reinterpret_cast<const uint2*>(src);
    P x[4];
    static_assert(sizeof(x) == sizeof(raw));
    memcpy(x, &raw, sizeof raw);
    return make_float4(to_float(x[0]), to_float(x[1]), to_float(x[2]), to_float(x[3]));
}

// content_merge with 4 columns a thread (d % 4 == 0), the parts' O in P (float, or T): thread g of
// the grid takes row g / (d / 4), columns 4 (g % (d / 4)) ... grid: ceil(rows * d / 4 / 128), block 128.
template <typename T, typename P>
__global__ void content_merge2(const P* o_part, const float* lse_part, int32_t parts, const float* fixed_o,
                               const float* fixed_lse, int64_t rows, int32_t d, SelfRule self, const T* q, const T* k,
                               const T* v, T* o, float* lse) {
    const int64_t g = int64_t{blockIdx.x} * 128 + threadIdx.x, per_row = d / 4;
    if (g >= rows * per_row) return;
    const int64_t row = g / per_row;
    const int c = static_cast<int>(g % per_row) * 4;
    const float lf = fixed_lse != nullptr ? fixed_lse[row] : -INFINITY;
    float L = lf;
    for (int i = 0; i < parts; ++i) L = fmaxf(L, lse_part[int64_t{i} * rows + row]);
    if (L == -INFINITY) {
        bool own = false;
        if (self.enabled) {
            own = self.shared_qk;
            for (int r = 0; r < self.rounds && !own; ++r) {
                const int32_t gap = self.q_chunk[int64_t{r} * rows + row] - self.k_chunk[int64_t{r} * rows + row];
                own = gap == 0 || gap == 1;
            }
        }
        if (own) {
            store4<T>(o + row * d + c, to_float(v[row * d + c]), to_float(v[row * d + c + 1]), to_float(v[row * d + c + 2]),
                      to_float(v[row * d + c + 3]));
        } else {
            store4<T>(o + row * d + c, 0.f, 0.f, 0.f, 0.f);
        }
        if (c == 0) {
            float dot = 0.f;
            if (own) {
                for (int j = 0; j < d; ++j) dot += to_float(q[row * d + j]) * to_float(k[row * d + j]);
            }
            lse[row] = own ? dot * self.scale : -INFINITY;
        }
        return;
    }
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    float wsum = 0.f;
    auto add = [&](float l, const auto* src) {
        if (l == -INFINITY) return;
        const float w = __expf(l - L);
        const float4 x = load4(src);
        wsum += w;
        acc.x += w * x.x, acc.y += w * x.y, acc.z += w * x.z, acc.w += w * x.w;
    };
    if (fixed_lse != nullptr) add(lf, fixed_o + row * d + c);
    for (int i = 0; i < parts; ++i) add(lse_part[int64_t{i} * rows + row], o_part + (int64_t{i} * rows + row) * d + c);
    const float inv = 1.f / wsum;
    store4<T>(o + row * d + c, acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
    if (c == 0) lse[row] = L + logf(wsum);
}

} // namespace sparsa::cuda::content
