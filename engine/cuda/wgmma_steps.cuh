// The pieces the wgmma kernels (10 to 15, attn_fwd_wgmma.cuh) are made of: the wgmma
// instructions and their shared-memory descriptors, the copies into the swizzled layout, and one
// warpgroup's step (S = Q K^T, mask and online softmax, O += P V) with the output's write.
// sm_90a only: included by attn_fwd_wgmma.cuh alone.
//
// The shared-memory layout (PTX ISA, "Shared Memory Matrix Layout", 128-byte swizzle): a
// [64, D] tile of 16-bit elements is D / 64 panels of [64 rows, 128 bytes], 8 KB each; in a
// panel, row r starts at byte 128 r and its 16-byte chunk c lies at chunk c ^ (r % 8). A panel
// must start at a multiple of 1024 bytes (the swizzle repeats every 8 rows of 128 bytes).
//
// Index: [SECTION] wgmma helpers, [SECTION] steps of kernels 10 to 15.
#pragma once

#include "engine/cuda/attn_fwd_kernels.cuh"

#include <cuda_runtime.h>

#include <cstdint>

namespace sparsa::cuda {

// [SECTION] wgmma helpers

// Tiling of kernels 10 and 11: WarpGroups warpgroups of 64 query rows (10: one, 11: two),
// 64-key tiles, Q, K and V in swizzled panels. Kernel 10 keeps one K and one V buffer (copies
// staggered as in kernel 8, 3 blocks an SM hide the rest); kernel 11 two of each (the next
// step's K and V are copied during this whole step: one block an SM, by its registers).
template <int D, int MaskBlock, int WarpGroups> struct WgmmaTraits {
    static constexpr int kThreads = 128 * WarpGroups;
    static constexpr int kTileQ = 64 * WarpGroups;            // query rows; wgmma's M is 64 a warpgroup
    static constexpr int kTileK = 64;                         // keys per step: one 64-bit word of a bitmask row
    static constexpr int kPanelBytes = 64 * 128;              // [64 rows, 64 elements]
    static constexpr int kTileBytes = D / 64 * kPanelBytes;   // [64, D]
    static constexpr int kStages = WarpGroups;                // K / V buffers
    // Q, then each stage's K and V, and room to align them to 1024 bytes
    static constexpr int kSmemBytes = (WarpGroups + 2 * kStages) * kTileBytes + 1024;
    static_assert(D == 64 || D == 128, "head dim 64 or 128 (wgmma's N for O += P V)");
    static_assert(MaskBlock % kTileK == 0, "mask block: a multiple of 64");
    static_assert(WarpGroups == 1 || WarpGroups == 2, "64- or 128-query tiles");
};

// The 64-bit shared-memory matrix descriptor of wgmma: start address, leading and stride byte
// offsets (each >> 4), 128-byte swizzle (mode 1 in bits 62-63). For a K-major tile (Q, K) the
// leading offset is unused and the stride offset is 1024 (8 rows of 128 bytes); for V, read
// N-major, the leading offset goes from one 64-column panel to the next and the stride offset
// from 8 keys to the next 8.
__device__ inline uint64_t wgmma_desc(uint32_t smem_addr, uint32_t leading_bytes, uint32_t stride_bytes) {
    return uint64_t{(smem_addr & 0x3FFFFu) >> 4} | uint64_t{(leading_bytes & 0x3FFFFu) >> 4} << 16 |
           uint64_t{(stride_bytes & 0x3FFFFu) >> 4} << 32 | uint64_t{1} << 62;
}

// Before the first wgmma of a batch: registers written by ordinary instructions (P, O after
// its rescale) are ready for the tensor cores.
__device__ inline void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ inline void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int Pending> __device__ inline void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
}
// Keeps the compiler from moving reads or writes of the accumulators `d` across this point
// (wgmma writes them asynchronously, which the compiler does not see).
template <int N> __device__ inline void wgmma_fence_operands(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// Shared memory written by ordinary stores or cp.async, read next by wgmma (the async proxy).
__device__ inline void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Starts bringing `bytes` (a multiple of 16) from global address `global` (16-byte aligned) into
// L2, without waiting and without writing anything this thread can see.
__device__ inline void prefetch_l2(const void* global, uint32_t bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(global), "r"(bytes) : "memory");
}

// 16 bytes global -> shared address `smem` (a shared-space address), zero-filled when !valid.
__device__ inline void cp_async_16_to(uint32_t smem, const void* global, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(global), "r"(valid ? 16 : 0));
}
__device__ inline void cp_async_16_to(uint32_t smem, const void* global) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem), "l"(global));
}

// tile = rows [row0, row0 + 64) of a head's [n, D] matrix in the 128-byte-swizzle layout at
// shared address `tile` (1024-aligned); rows past n zero-filled. Threads threads take part
// (`thread`: this one's index among them, below Threads); consecutive threads copy consecutive
// 16 bytes of a row. Thread t copies chunk t % (D / 8) of rows t / (D / 8) + k Threads / (D / 8):
// a fixed number of copies, each at a constant offset from one source and one destination
// address (the swizzle of row r depends on r % 8 alone, the same for all of a thread's rows),
// so a tile costs a thread a few instructions beside its copies. (A loop over chunk indices
// from `thread` in steps of Threads has a trip count the compiler cannot know: it was a
// general loop of about 40 instructions a copy, over half of kernel 10's instructions.)
template <int D, int Threads, typename T>
__device__ inline void tile_load_swizzled(uint32_t tile, const T* head, int64_t row0, int64_t n, int thread = threadIdx.x) {
    constexpr int kChunksPerRow = D / 8;   // 16-byte chunks of 8 elements
    constexpr int kRowsPerPass = Threads / kChunksPerRow, kPasses = 64 / kRowsPerPass;
    static_assert(Threads % kChunksPerRow == 0 && kRowsPerPass % 8 == 0 && 64 % kRowsPerPass == 0,
                  "each thread's rows share one swizzle");
    const uint32_t u = static_cast<uint32_t>(thread);
    const uint32_t r0 = u / kChunksPerRow, chunk = u % kChunksPerRow;
    const uint32_t dst = tile + (chunk / 8) * 8192 + r0 * 128 + ((chunk % 8) ^ (r0 % 8)) * 16;
    const T* src = head + (row0 + r0) * D + chunk * 8;
    if (row0 + 64 <= n) {
#pragma unroll
        for (int i = 0; i < kPasses; ++i) cp_async_16_to(dst + i * kRowsPerPass * 128, src + i * kRowsPerPass * D);
    } else {
#pragma unroll
        for (int i = 0; i < kPasses; ++i) {
            const bool valid = row0 + r0 + i * kRowsPerPass < n;
            cp_async_16_to(dst + i * kRowsPerPass * 128, valid ? src + i * kRowsPerPass * D : head, valid);
        }
    }
}

// wgmma.mma_async for one 16-bit type (float32 accumulate); operand lists written out by
// hand, as inline PTX needs (one "+f" per accumulator register). The two types differ only in
// the PTX type name, so their wrappers come from one body.
#define SPARSA_WGMMA_WRAPPERS(PTX_TYPE) \
    /* d [64, 64] (+)= a [64, 16] b [16, 64]; a, b: descriptors of K-major tiles in shared memory */                           \
    template <bool Accumulate> __device__ static void ss_n64(float (&d)[32], uint64_t a, uint64_t b) {                         \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                              \
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTX_TYPE "." PTX_TYPE " {"                                  \
                     "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                  \
                     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"                          \
                     "}, %32, %33, p, 1, 1, 0, 0;\n}\n"                                                                        \
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
                       "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),   \
                       "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
                       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])  \
                     : "l"(a), "l"(b), "r"(int{Accumulate}));                                                                  \
    }                                                                                                                          \
    /* d [64, 64] += a [64, 16] b [16, 64]; a: A fragments in registers, b: descriptor of an MN-major tile */                  \
    __device__ static void rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {                                        \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                              \
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTX_TYPE "." PTX_TYPE " {"                                  \
                     "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                  \
                     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"                          \
                     "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                                                          \
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
                       "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),   \
                       "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
                       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])  \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));                                            \
    }                                                                                                                          \
    /* d [64, 128] += a [64, 16] b [16, 128]; a: A fragments in registers, b: descriptor of an MN-major tile */                \
    __device__ static void rs_n128(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {                                       \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                              \
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32." PTX_TYPE "." PTX_TYPE " {"                                 \
                     "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                  \
                     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                        \
                     "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                        \
                     "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"                          \
                     "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                                          \
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
                       "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),   \
                       "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
                       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
                       "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
                       "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
                       "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
                       "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])  \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));                                            \
    }                                                                                                                          \
    /* end of SPARSA_WGMMA_WRAPPERS */

template <typename T> struct Wgmma;
template <> struct Wgmma<__nv_bfloat16> { SPARSA_WGMMA_WRAPPERS("bf16") };
template <> struct Wgmma<__half> { SPARSA_WGMMA_WRAPPERS("f16") };
#undef SPARSA_WGMMA_WRAPPERS

// [SECTION] steps of kernels 10 to 15 (one warpgroup's 64 query rows; this warp's 16 of them)

// S = Q K^T: s, this warp's [16, 64] (8 n-tiles of 16 x 8, wgmma's accumulator layout), from
// q_tile, the warpgroup's [64, D] query rows, and k_tile, [64 keys, D]: D / 16 wgmma of k = 16
// (16 elements are 32 bytes of a panel row; a new panel every 4). wgmma_scores waits for the
// products; wgmma_scores_async only issues them and commits them as one group (the caller
// fences before, waits after, then wgmma_fence_operands(s)), so two batches can be in flight.
template <typename T, int D> __device__ inline void wgmma_scores_async(float (&s)[32], uint32_t q_tile, uint32_t k_tile) {
    // a descriptor plus (bytes >> 4) addresses `bytes` further on: shared addresses stay under
    // 2^18, so the start address field (bits 0-13) never carries into the next field
    const uint64_t q_desc = wgmma_desc(q_tile, 16, 1024), k_desc = wgmma_desc(k_tile, 16, 1024);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t offset = (kk / 4) * 8192 + (kk % 4) * 32;
        const uint64_t qd = q_desc + (offset >> 4), kd = k_desc + (offset >> 4);
        if (kk == 0) Wgmma<T>::template ss_n64<false>(s, qd, kd);
        else Wgmma<T>::template ss_n64<true>(s, qd, kd);
    }
    wgmma_commit();
}
template <typename T, int D> __device__ inline void wgmma_scores(float (&s)[32], uint32_t q_tile, uint32_t k_tile) {
    wgmma_fence();
    wgmma_scores_async<T, D>(s, q_tile, k_tile);
    wgmma_wait<0>();
    wgmma_fence_operands(s);
}

// A 64-key tile's mask for one warpgroup (kernels 17 to 19): its first key, its partial-block
// index (-1: a full block), and whether the warpgroup's mask row keeps the block at all.
struct KeyTileMask {
    int64_t k0;
    int32_t part;
    bool keep;
};

// The mask of one key tile on s: partial blocks by their bitmask, full blocks only where the tile
// runs past n, every score where the row does not keep the block (keep false). The common case (a
// full, kept block inside n) takes no instruction past the test.
template <int MaskBlock>
__device__ inline void mask_scores(float (&s)[32], const DeviceMasks& m, const KeyTileMask& tile, int64_t n, int i_warp) {
    constexpr int kTileK = 64;
    const int lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const bool partial = tile.part >= 0, past_n = tile.k0 + kTileK > n;
    if (!tile.keep || partial || past_n) {
        const uint64_t valid_word = !tile.keep ? uint64_t{0} : past_n ? keys_before_n(tile.k0, n) : ~uint64_t{0};
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int i = i_warp + group + 8 * half;   // row within the mask block
            uint64_t word = valid_word;
            if (tile.keep && partial) word &= partial_bits<MaskBlock>(m, tile.part, i, tile.k0);
#pragma unroll
            for (int t = 0; t < kTileK / 8; ++t) {
#pragma unroll
                for (int cc = 0; cc < 2; ++cc) {
                    if (((word >> (t * 8 + 2 * quad + cc)) & 1) == 0) s[4 * t + 2 * half + cc] = -INFINITY;
                }
            }
        }
    }
}

// The online softmax in base 2 over Tiles key tiles of masked scores at once, s[0 .. Tiles - 1]
// (each this warp's [16, 64]): p = 2^(s * scale_log2 - max), one FMA and one ex2 a score, one
// running max, sum and scale_old a row for all of them.
template <int Tiles>
__device__ inline void online_softmax_tiles(float (*s)[32], float (&row_max)[2], float (&row_sum)[2], float (&scale_old)[2],
                                            float scale_log2) {
    constexpr int kTileK = 64;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float mx = -INFINITY;
#pragma unroll
        for (int i = 0; i < Tiles; ++i) {
#pragma unroll
            for (int t = 0; t < kTileK / 8; ++t) mx = fmaxf(mx, fmaxf(s[i][4 * t + 2 * half], s[i][4 * t + 2 * half + 1]));
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float new_max = fmaxf(row_max[half], mx * scale_log2);
        const float base = new_max == -INFINITY ? 0.f : new_max;   // nothing allowed yet: no NaN
        scale_old[half] = exp2_fast(row_max[half] - base);
        row_max[half] = new_max;
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < Tiles; ++i) {
#pragma unroll
            for (int t = 0; t < kTileK / 8; ++t) {
#pragma unroll
                for (int cc = 0; cc < 2; ++cc) {
                    float& x = s[i][4 * t + 2 * half + cc];
                    x = exp2_fast(fmaf(x, scale_log2, -base));   // -inf -> 0
                    sum += x;
                }
            }
        }
        row_sum[half] = row_sum[half] * scale_old[half] + sum;
    }
}

// Mask and online softmax of one key tile for this warp's rows (this lane: rows group and
// group + 8, i_warp + group (+ 8) within their mask block): s becomes P (unnormalised), the
// running sums are rescaled to the new max, and scale_old[half] is the factor O must be
// rescaled by (softmax_step_part does it at once; kernel 16 once its O += P V in flight is
// done). k0: the tile's first key; part: its mask entry's partial-block index (m.partial_idx[e],
// -1 for a full block), which softmax_step reads from the entry e itself and kernel 15 a step ahead.
template <int MaskBlock>
__device__ inline void softmax_scores_part(float (&s)[32], float (&row_max)[2], float (&row_sum)[2], float (&scale_old)[2],
                                           const DeviceMasks& m, int32_t part, int64_t k0, int64_t n, int i_warp,
                                           float scale_log2) {
    mask_scores<MaskBlock>(s, m, KeyTileMask{k0, part, true}, n, i_warp);
    online_softmax_tiles<1>(&s, row_max, row_sum, scale_old, scale_log2);
}

// Kernels 17 to 19: the masks and the online softmax of a step of Tiles key tiles (tiles[i]: s[i]'s).
template <int MaskBlock, int Tiles>
__device__ inline void softmax_scores_tiles(float (&s)[Tiles][32], float (&row_max)[2], float (&row_sum)[2], float (&scale_old)[2],
                                            const DeviceMasks& m, const KeyTileMask (&tiles)[Tiles], int64_t n, int i_warp,
                                            float scale_log2) {
#pragma unroll
    for (int i = 0; i < Tiles; ++i) mask_scores<MaskBlock>(s[i], m, tiles[i], n, i_warp);
    online_softmax_tiles<Tiles>(s, row_max, row_sum, scale_old, scale_log2);
}
// O's rows times the softmax's scale_old (half 0: rows group, 1: group + 8).
template <int D> __device__ inline void rescale_rows(float (&o_acc)[D / 2], const float (&scale_old)[2]) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
        for (int t = 0; t < D / 8; ++t) {
            o_acc[4 * t + 2 * half] *= scale_old[half];
            o_acc[4 * t + 2 * half + 1] *= scale_old[half];
        }
    }
}
template <int D, int MaskBlock>
__device__ inline void softmax_step_part(float (&s)[32], float (&o_acc)[D / 2], float (&row_max)[2],
                                         float (&row_sum)[2], const DeviceMasks& m, int32_t part, int64_t k0,
                                         int64_t n, int i_warp, float scale_log2) {
    float scale_old[2];
    softmax_scores_part<MaskBlock>(s, row_max, row_sum, scale_old, m, part, k0, n, i_warp, scale_log2);
    rescale_rows<D>(o_acc, scale_old);
}
template <int D, int MaskBlock>
__device__ inline void softmax_step(float (&s)[32], float (&o_acc)[D / 2], float (&row_max)[2], float (&row_sum)[2],
                                    const DeviceMasks& m, int64_t e, int64_t k0, int64_t n, int i_warp, float scale_log2) {
    softmax_step_part<D, MaskBlock>(s, o_acc, row_max, row_sum, m, m.partial_idx[e], k0, n, i_warp, scale_log2);
}

// O += P V: P [64, 64] as A fragments from s (S's accumulators rounded to T: k-step kk takes
// keys 16kk .. 16kk + 15, the layout of mma.sync's A), V [64 keys, D] N-major from v_tile,
// 16 keys (2048 bytes of each panel) a wgmma. pack_p rounds P to the A fragments;
// wgmma_pv_async issues the products from them and commits them as one group (as with
// wgmma_scores_async, the caller fences, waits, and leaves pf unchanged until the wait).
template <typename T> __device__ inline void pack_p(const float (&s)[32], uint32_t (&pf)[4][4]) {
    using Mma = MmaType<T>;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        pf[kk][0] = Mma::pack(s[8 * kk + 0], s[8 * kk + 1]);
        pf[kk][1] = Mma::pack(s[8 * kk + 2], s[8 * kk + 3]);
        pf[kk][2] = Mma::pack(s[8 * kk + 4], s[8 * kk + 5]);
        pf[kk][3] = Mma::pack(s[8 * kk + 6], s[8 * kk + 7]);
    }
}
template <typename T, int D> __device__ inline void wgmma_pv_async(float (&o_acc)[D / 2], const uint32_t (&pf)[4][4], uint32_t v_tile) {
    const uint64_t v_desc = wgmma_desc(v_tile, 8192, 1024);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        const uint64_t vd = v_desc + (kk * 2048 >> 4);   // as in wgmma_scores
        if constexpr (D == 64) Wgmma<T>::rs_n64(o_acc, pf[kk], vd);
        else Wgmma<T>::rs_n128(o_acc, pf[kk], vd);
    }
    wgmma_commit();
}
template <typename T, int D> __device__ inline void wgmma_pv(float (&o_acc)[D / 2], const float (&s)[32], uint32_t v_tile) {
    uint32_t pf[4][4];
    pack_p<T>(s, pf);
    wgmma_fence();
    wgmma_pv_async<T, D>(o_acc, pf, v_tile);
    wgmma_wait<0>();
    wgmma_fence_operands(o_acc);
}

// O /= rowsum, lse = (max + log2 sum) ln 2 for this warp's 16 rows from row warp_row0 of the
// tile starting at q0 (TileQ rows); empty rows: zeros and -inf. A chunk of a split tile
// (slot >= 0) writes O, max and sum unnormalised to its slot instead.
template <typename T, int D, int TileQ>
__device__ inline void output_write(const AttnParams<T>& p, const float (&o_acc)[D / 2], const float (&row_max)[2],
                                    const float (&row_sum)[2], int64_t b, int64_t h, int64_t q0, int64_t warp_row0, int32_t slot) {
    using Mma = MmaType<T>;
    const int lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    const int64_t n = p.n, head_offset = ((b * p.heads + h) * n) * D;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float sum = row_sum[half];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int64_t row = warp_row0 + group + 8 * half;
        if (row >= n) continue;
        if (slot >= 0) {
            const int64_t r = (b * p.slots + slot) * TileQ + (row - q0);
            float* o = p.partial_o + r * D;
#pragma unroll
            for (int t = 0; t < D / 8; ++t) {
                *reinterpret_cast<float2*>(o + t * 8 + 2 * quad) = make_float2(o_acc[4 * t + 2 * half], o_acc[4 * t + 2 * half + 1]);
            }
            if (quad == 0) *reinterpret_cast<float2*>(p.partial_ml + 2 * r) = make_float2(row_max[half], sum);
            continue;
        }
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        T* o = p.o + head_offset + row * D;
#pragma unroll
        for (int t = 0; t < D / 8; ++t) {
            *reinterpret_cast<uint32_t*>(o + t * 8 + 2 * quad) = Mma::pack(o_acc[4 * t + 2 * half] * inv, o_acc[4 * t + 2 * half + 1] * inv);
        }
        if (quad == 0) {
            p.lse[(b * p.heads + h) * n + row] = sum > 0.f ? (row_max[half] + log2f(sum)) * 0.6931471805599453f : -INFINITY;
        }
    }
}

// The first key of the 64-key tile a cursor over one mask row (list a) stands on.
template <int MaskBlock> __device__ inline int64_t key_start_a(const KeyCursor& c, const int32_t* col_idx) {
    return int64_t{c.col_a(col_idx)} * MaskBlock + c.sub * 64;
}

// One key tile of kernels 10 and 13 for a warpgroup's 64 query rows, with one K and one V
// buffer: S = Q K^T (K copied before), the mask and online softmax, O += P V; `left`: the
// tile's steps from this one on. V's copy overlaps S = Q K^T; once every warp is done with Q
// and K (the step's second barrier) the next step's K is copied during O += P V, or, in the
// tile's last step, `on_last()` runs there (kernel 13 copies the next tile's Q and K). cur
// moves on to the next step.
template <typename T, int D, int MaskBlock, typename OnLast>
__device__ inline void wgmma64_step(const AttnParams<T>& p, uint32_t q_tile, uint32_t k_tile, uint32_t v_tile,
                                    const T* k_head, const T* v_head, KeyCursor& cur, int64_t left,
                                    float (&o_acc)[D / 2], float (&row_max)[2], float (&row_sum)[2], int i_warp,
                                    OnLast&& on_last) {
    const DeviceMasks& m = p.masks;
    const int64_t e = cur.ea;
    const int64_t k0 = key_start_a<MaskBlock>(cur, m.col_idx);
    KeyCursor next = cur;
    next.template advance<MaskBlock / 64>(m.col_idx);

    cp_async_wait<0>();    // Q and K of this step landed ...
    fence_proxy_async();   // ... and are visible to the tensor cores ...
    __syncthreads();       // ... for every thread, and every warp is done with the last step's V
    tile_load_swizzled<D, 128>(v_tile, v_head, k0, p.n);   // V's copy overlaps S = Q K^T
    cp_async_commit();

    float s[32];
    wgmma_scores<T, D>(s, q_tile, k_tile);                                          // S = Q K^T
    softmax_step<D, MaskBlock>(s, o_acc, row_max, row_sum, m, e, k0, p.n, i_warp, p.scale_log2);

    cp_async_wait<0>();    // V of this step landed ...
    fence_proxy_async();
    __syncthreads();       // ... for every thread, and every warp's S = Q K^T is done with Q and K
    if (left > 1 && next.valid()) {   // the next K's copy overlaps O += P V
        tile_load_swizzled<D, 128>(k_tile, k_head, key_start_a<MaskBlock>(next, m.col_idx), p.n);
        cp_async_commit();
    } else {
        on_last();
    }
    wgmma_pv<T, D>(o_acc, s, v_tile);                                               // O += P V
    cur = next;
}

// Shared address of the dynamic shared memory, rounded up to 1024 bytes (the swizzle's period).
__device__ inline uint32_t smem_aligned_1024(const void* smem_raw) {
    return (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023u) & ~1023u;
}

} // namespace sparsa::cuda
