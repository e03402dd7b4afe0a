// Kernels 10 to 15 of the attention forward (attn_fwd_kernels.cuh has 1 to 9): the tensor-core
// instructions of Hopper, wgmma, on sm_90a. Compiled for that target alone, in
// attn_fwd_wgmma.cu; the host runs them only on a device of compute capability 9.0.
//
//   10: as 8 (64-query tiles, one mask row a tile, long rows split, attn_combine), with the
//       products on wgmma instead of mma.sync: one warpgroup (4 warps, 128 threads) owns the
//       64 query rows, warp w rows 16w .. 16w + 15. S = Q K^T is wgmma m64n64k16 with Q and K
//       both read from shared memory; O += P V is wgmma m64nDk16 with P taken from registers
//       (S's accumulators rounded to 16 bits are already in the layout of wgmma's A fragments)
//       and V from shared memory, N-major (V's rows are keys). Q, K and V are copied with
//       cp.async into the 128-byte-swizzle layout wgmma reads without bank conflicts, and each
//       copy is made visible to the tensor cores with fence.proxy.async before the barrier.
//       The softmax, masks, split rows and empty rows are kernel 8's, with one 16-row m-tile
//       a warp. Why: mma.sync issues from each warp at a rate well under the tensor cores'
//       (kernels 5 to 9 reach half of cuDNN); wgmma runs a 64 x N x 16 product per
//       instruction, operands straight from shared memory, no ldmatrix, and frees the warps
//       while it runs.
//   11: as 10 with 128-query tiles: two warpgroups share each K and V tile (half the copies
//       per product), with kernel 7's walk of two mask rows; two K / V stages. Slower than 10:
//       one block an SM (registers), whose warpgroups meet at the block's barrier every step.
//   12: as 11 with the block's barrier replaced by mbarriers on a ring of three K / V stages:
//       the warpgroups drift apart, one's softmax beside the other's products. It led on dense
//       until the copies became cheap (below); now 10 is faster on every mask.
//   13: 10 made persistent: as many blocks as fit on the GPU, each taking work items from a
//       counter; a tile's last step copies the next tile's Q and first K, so a short row no
//       longer starts with both copies in front of it. Slower than 10 on every benchmark mask
//       (the time went to instruction issue, not to the tiles' start): kept as the record.
//   14: 10 with the K and V tiles of later steps prefetched into L2 (short rows read most of
//       their key tiles from DRAM). Slower than 10 on every mask, 7% to 20%: L2 hits on BigBird
//       rose only from 56% to 63%, and thread 0 waits for the mask entry it prefetches for
//       right before the step's barrier, so the whole block waits with it. Kept as the record.
//   15: 10 with every load of mask metadata made a step before its use (the walk over the
//       work item's entries alone, no row end): 1.7% to 8.6% faster than 10 on every mask at
//       d = 128, 7% at d = 64. Kernel 0 takes it.
// Kernel 0 takes 15 on compute capability 9.0 (bench/cuda-notes.md has each version's
// prediction and outcome).
//
// The shared-memory layout (PTX ISA, "Shared Memory Matrix Layout", 128-byte swizzle): a
// [64, D] tile of 16-bit elements is D / 64 panels of [64 rows, 128 bytes], 8 KB each; in a
// panel, row r starts at byte 128 r and its 16-byte chunk c lies at chunk c ^ (r % 8). A panel
// must start at a multiple of 1024 bytes (the swizzle repeats every 8 rows of 128 bytes).
//
// Index: [SECTION] wgmma helpers, [SECTION] steps of kernels 10 to 15, [SECTION] kernels 10 to
// 15, [SECTION] launch.
#pragma once

#include "engine/cuda/attn_fwd_kernels.cuh"

#include <cuda_runtime.h>

#include <algorithm>
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
// (16 elements are 32 bytes of a panel row; a new panel every 4).
template <typename T, int D> __device__ inline void wgmma_scores(float (&s)[32], uint32_t q_tile, uint32_t k_tile) {
    wgmma_fence();
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
    wgmma_wait<0>();
    wgmma_fence_operands(s);
}

// Mask and online softmax of one key tile for this warp's rows (this lane: rows group and
// group + 8, i_warp + group (+ 8) within their mask block): s becomes P (unnormalised), O and
// the running sums are rescaled to the new max. k0: the tile's first key; part: its mask
// entry's partial-block index (m.partial_idx[e], -1 for a full block), which softmax_step reads
// from the entry e itself and kernel 15 a step ahead.
template <int D, int MaskBlock>
__device__ inline void softmax_step_part(float (&s)[32], float (&o_acc)[D / 2], float (&row_max)[2],
                                         float (&row_sum)[2], const DeviceMasks& m, int32_t part, int64_t k0,
                                         int64_t n, int i_warp, float scale_log2) {
    constexpr int kTileK = 64;
    const int lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    // mask: partial blocks by their bitmask, full blocks only where the tile runs past n
    const bool partial = part >= 0, past_n = k0 + kTileK > n;
    if (partial || past_n) {
        uint64_t valid_word = ~uint64_t{0};
        if (past_n) {
            const int64_t valid = n - k0;
            valid_word = valid <= 0 ? 0 : valid >= 64 ? ~uint64_t{0} : (uint64_t{1} << valid) - 1;
        }
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int i = i_warp + group + 8 * half;   // row within the mask block
            uint64_t word = valid_word;
            if (partial) {
                word &= m.bits[int64_t{part} * (MaskBlock * MaskBlock / 64) + int64_t{i} * (MaskBlock / 64) +
                               (k0 % MaskBlock) / 64];
            }
#pragma unroll
            for (int t = 0; t < kTileK / 8; ++t) {
#pragma unroll
                for (int cc = 0; cc < 2; ++cc) {
                    if (((word >> (t * 8 + 2 * quad + cc)) & 1) == 0) s[4 * t + 2 * half + cc] = -INFINITY;
                }
            }
        }
    }
    // online softmax in base 2: p = 2^(s * scale_log2 - max), one FMA and one ex2
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float mx = -INFINITY;
#pragma unroll
        for (int t = 0; t < kTileK / 8; ++t) mx = fmaxf(mx, fmaxf(s[4 * t + 2 * half], s[4 * t + 2 * half + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float new_max = fmaxf(row_max[half], mx * scale_log2);
        const float base = new_max == -INFINITY ? 0.f : new_max;   // nothing allowed yet: no NaN
        const float scale_old = exp2_fast(row_max[half] - base);
        row_max[half] = new_max;
        float sum = 0.f;
#pragma unroll
        for (int t = 0; t < kTileK / 8; ++t) {
#pragma unroll
            for (int cc = 0; cc < 2; ++cc) {
                float& x = s[4 * t + 2 * half + cc];
                x = exp2_fast(fmaf(x, scale_log2, -base));   // -inf -> 0
                sum += x;
            }
        }
        row_sum[half] = row_sum[half] * scale_old + sum;
#pragma unroll
        for (int t = 0; t < D / 8; ++t) {
            o_acc[4 * t + 2 * half] *= scale_old;
            o_acc[4 * t + 2 * half + 1] *= scale_old;
        }
    }
}
template <int D, int MaskBlock>
__device__ inline void softmax_step(float (&s)[32], float (&o_acc)[D / 2], float (&row_max)[2], float (&row_sum)[2],
                                    const DeviceMasks& m, int64_t e, int64_t k0, int64_t n, int i_warp, float scale_log2) {
    softmax_step_part<D, MaskBlock>(s, o_acc, row_max, row_sum, m, m.partial_idx[e], k0, n, i_warp, scale_log2);
}

// O += P V: P [64, 64] as A fragments from s (S's accumulators rounded to T: k-step kk takes
// keys 16kk .. 16kk + 15, the layout of mma.sync's A), V [64 keys, D] N-major from v_tile,
// 16 keys (2048 bytes of each panel) a wgmma.
template <typename T, int D> __device__ inline void wgmma_pv(float (&o_acc)[D / 2], const float (&s)[32], uint32_t v_tile) {
    using Mma = MmaType<T>;
    uint32_t pf[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        pf[kk][0] = Mma::pack(s[8 * kk + 0], s[8 * kk + 1]);
        pf[kk][1] = Mma::pack(s[8 * kk + 2], s[8 * kk + 3]);
        pf[kk][2] = Mma::pack(s[8 * kk + 4], s[8 * kk + 5]);
        pf[kk][3] = Mma::pack(s[8 * kk + 6], s[8 * kk + 7]);
    }
    wgmma_fence();
    const uint64_t v_desc = wgmma_desc(v_tile, 8192, 1024);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        const uint64_t vd = v_desc + (kk * 2048 >> 4);   // as in wgmma_scores
        if constexpr (D == 64) Wgmma<T>::rs_n64(o_acc, pf[kk], vd);
        else Wgmma<T>::rs_n128(o_acc, pf[kk], vd);
    }
    wgmma_commit();
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

// [SECTION] kernels 10 to 15

// A work item's 64-query tile in kernels 10, 14 and 15: its head, batch and first row, the
// head's Q, K and V, the three shared-memory tiles (Q, one K, one V) and this warp's first row
// within its mask block.
template <typename T, int D, int MaskBlock> struct Tile64 {
    int64_t h, b, q0;
    const T *q_head, *k_head, *v_head;
    uint32_t q_tile, k_tile, v_tile;
    int warp, i_warp;

    __device__ Tile64(const AttnParams<T>& p, const WorkItem& item, const void* smem_raw) {
        const int64_t tiles = (p.n + 63) / 64;
        h = item.pair / tiles;
        q0 = item.pair % tiles * 64;
        b = blockIdx.z;
        const int64_t head_offset = ((b * p.heads + h) * p.n) * D;
        q_head = p.q + head_offset;
        k_head = p.k + head_offset;
        v_head = p.v + head_offset;
        q_tile = smem_aligned_1024(smem_raw);
        k_tile = q_tile + WgmmaTraits<D, MaskBlock, 1>::kTileBytes;
        v_tile = k_tile + WgmmaTraits<D, MaskBlock, 1>::kTileBytes;
        warp = threadIdx.x / 32;
        i_warp = static_cast<int>(q0 % MaskBlock) + 16 * warp;
    }
    // The end of the tile's mask row in col_idx (one row: 64 rows never span two blocks).
    __device__ int64_t row_end(const DeviceMasks& m) const {
        return m.row_ptr[int64_t{m.head_mask[h]} * (m.q_blocks + 1) + q0 / MaskBlock + 1];
    }
};

// O = 0, running max -inf, running sums 0: a warpgroup's state before its first key tile.
template <int D> __device__ inline void online_softmax_start(float (&o_acc)[D / 2], float (&row_max)[2], float (&row_sum)[2]) {
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o_acc[i] = 0.f;
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;
}


// 10: one warpgroup per 64-query tile (a work item of kernel 8's plan). grid: (work items, 1,
// batch), block: 128 threads, dynamic shared memory WgmmaTraits<D, MaskBlock, 1>::kSmemBytes.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(128, 3) attn_fwd_kernel10(AttnParams<T> p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const WorkItem item = p.masks.work[blockIdx.x];
    const Tile64<T, D, MaskBlock> t(p, item, smem_raw);
    const DeviceMasks& m = p.masks;
    KeyCursor cur{item.ea, 0, t.row_end(m), 0, item.sub};   // the tile's mask row from the work item's cursor
    int64_t left = item.steps;

    tile_load_swizzled<D, 128>(t.q_tile, t.q_head, t.q0, p.n);
    if (left > 0 && cur.valid()) tile_load_swizzled<D, 128>(t.k_tile, t.k_head, key_start_a<MaskBlock>(cur, m.col_idx), p.n);
    cp_async_commit();

    float o_acc[D / 2];   // O [16, D] of this warp: D / 8 n-tiles of 16 x 8, 4 registers each (wgmma's layout)
    float row_max[2], row_sum[2];   // rows group and group + 8, base 2; this lane's partial sums
    online_softmax_start<D>(o_acc, row_max, row_sum);
    while (left > 0 && cur.valid()) {
        wgmma64_step<T, D, MaskBlock>(p, t.q_tile, t.k_tile, t.v_tile, t.k_head, t.v_head, cur, left, o_acc, row_max,
                                      row_sum, t.i_warp, [] {});
        --left;
    }
    cp_async_wait<0>();   // no copy left in flight (a tile with no kept block still loaded Q)
    output_write<T, D, 64>(p, o_acc, row_max, row_sum, t.b, t.h, t.q0, t.q0 + 16 * t.warp, item.slot);
#endif
}

// 11: as 10 with 128-query tiles, two warpgroups of 64 rows sharing each K and V tile (half the
// copies per product), and two K / V stages: the next step's K and V are copied during this
// whole step. With 64-token masks a tile spans two mask rows and walks the union of their kept
// blocks (kernel 7's KeyCursor); a warpgroup whose row lacks the block skips that step.
// grid: (work items, 1, batch), block: 256 threads, WgmmaTraits<D, MaskBlock, 2>::kSmemBytes.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(256, 1) attn_fwd_kernel11(AttnParams<T> p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using Traits = WgmmaTraits<D, MaskBlock, 2>;
    constexpr int kTileQ = Traits::kTileQ, kTileK = Traits::kTileK, kSubTiles = MaskBlock / kTileK;
    constexpr int kTile = Traits::kTileBytes;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const uint32_t q_tiles = smem_aligned_1024(smem_raw);   // [2][64, D]: warpgroup g's rows at q_tiles + g kTile
    const uint32_t kv = q_tiles + 2 * kTile;                 // stage s: K at kv + 2s kTile, V at kv + (2s + 1) kTile

    const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4;
    const int64_t tiles = (p.n + kTileQ - 1) / kTileQ;
    const WorkItem item = p.masks.work[blockIdx.x];
    const int64_t h = item.pair / tiles, tile = item.pair % tiles;
    const int64_t b = blockIdx.z, n = p.n;
    const int64_t q0 = tile * kTileQ;
    const int64_t head_offset = ((b * p.heads + h) * n) * D;
    const T* k_head = p.k + head_offset;
    const T* v_head = p.v + head_offset;

    // The mask rows (as kernel 7): qa holds the tile's first row; qb_2 the row of its second 64
    // rows when that is another mask row (MaskBlock 64) that exists.
    const DeviceMasks& m = p.masks;
    const int64_t* row_ptr = m.row_ptr + int64_t{m.head_mask[h]} * (m.q_blocks + 1);
    const int64_t qa = q0 / MaskBlock, qb_2 = (q0 + 64) / MaskBlock;
    const bool two_rows = qb_2 != qa && qb_2 < m.q_blocks;
    KeyCursor cur{item.ea, item.eb, row_ptr[qa + 1], two_rows ? row_ptr[qb_2 + 1] : 0, item.sub};
    int64_t left = item.steps;
    // This warpgroup's list: b when its rows are in the second mask row; none when past the last row.
    const int64_t wg_row0 = q0 + 64 * wg;
    const bool wg_in_b = two_rows && wg_row0 / MaskBlock == qb_2;
    const bool wg_has_rows = wg_row0 / MaskBlock < m.q_blocks;
    const int i_warp = static_cast<int>(wg_row0 % MaskBlock) + 16 * warp;   // first row of this warp within its mask block

    auto key_start = [&](const KeyCursor& c) {
        return int64_t{min(c.col_a(m.col_idx), c.col_b(m.col_idx))} * MaskBlock + c.sub * kTileK;
    };
    auto load_kv = [&](const KeyCursor& c, int stage) {
        const int64_t k0 = key_start(c);
        tile_load_swizzled<D, 256>(kv + 2 * stage * kTile, k_head, k0, n);
        tile_load_swizzled<D, 256>(kv + (2 * stage + 1) * kTile, v_head, k0, n);
    };

    tile_load_swizzled<D, 256>(q_tiles, p.q + head_offset, q0, n);
    tile_load_swizzled<D, 256>(q_tiles + kTile, p.q + head_offset, q0 + 64, n);
    if (left > 0 && cur.valid()) load_kv(cur, 0);
    cp_async_commit();

    float o_acc[D / 2];   // O [16, D] of this warp (wgmma's layout)
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o_acc[i] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY};   // rows group and group + 8, base 2
    float row_sum[2] = {0.f, 0.f};               // this lane's partial sums

    int stage = 0;
    while (left > 0 && cur.valid()) {
        const int32_t ca = cur.col_a(m.col_idx), cb = cur.col_b(m.col_idx), c = min(ca, cb);
        const int64_t k0 = int64_t{c} * MaskBlock + cur.sub * kTileK;
        // this warpgroup's entry of the block: -1 when its mask row does not keep it
        const int64_t e = !wg_has_rows ? -1 : wg_in_b ? (cb == c ? cur.eb : -1) : (ca == c ? cur.ea : -1);
        KeyCursor next = cur;
        next.template advance<kSubTiles>(m.col_idx);

        cp_async_wait<0>();    // this step's K and V (and Q) landed ...
        fence_proxy_async();   // ... and are visible to the tensor cores ...
        __syncthreads();       // ... for every thread, and every warpgroup is done with the other stage
        if (left > 1 && next.valid()) {   // the next step's copies overlap this whole step
            load_kv(next, stage ^ 1);
            cp_async_commit();
        }
        if (e >= 0) {
            float s[32];
            wgmma_scores<T, D>(s, q_tiles + wg * kTile, kv + 2 * stage * kTile);       // S = Q K^T
            softmax_step<D, MaskBlock>(s, o_acc, row_max, row_sum, m, e, k0, n, i_warp, p.scale_log2);
            wgmma_pv<T, D>(o_acc, s, kv + (2 * stage + 1) * kTile);                     // O += P V
        }
        stage ^= 1;
        cur = next;
        --left;
    }
    cp_async_wait<0>();   // no copy left in flight
    output_write<T, D, kTileQ>(p, o_acc, row_max, row_sum, b, h, q0, wg_row0 + 16 * warp, item.slot);
#endif
}

// 12: as 11 (128-query tiles, two warpgroups, kernel 7's walk), with the block's barrier
// replaced by mbarriers on a ring of three K / V stages, so the two warpgroups no longer meet
// every step: one can run its softmax while the other's products keep the tensor cores busy.
// Stage s has two mbarriers: `full` completes when the copies into it have landed (each
// thread's cp.async.mbarrier.arrive), `empty` when all 8 warps are done reading it. At step j a
// warpgroup first copies its half of step j + 2 (warpgroup 0 the K tile, 1 the V tile) into
// the stage step j - 1 used, once `empty` says both are done with it; so the copies run two
// steps ahead and a warpgroup may run up to a step ahead of the other.
// grid: (work items, 1, batch), block: 256 threads, dynamic shared memory Wgmma12Traits::kSmemBytes.
template <int D> struct Wgmma12Traits {
    static constexpr int kStages = 3;
    static constexpr int kThreads = 256;
    static constexpr int kTileBytes = D / 64 * 8192;                           // one [64, D] tile
    static constexpr int kSmemBytes = (2 + 2 * kStages) * kTileBytes + 1024;   // Q [128, D], kStages x (K, V)
};

// mbarrier helpers (shared-memory barriers with a phase bit; PTX ISA "mbarrier").
__device__ inline void mbarrier_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ inline void mbarrier_arrive(uint32_t bar) {
    asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(bar) : "memory");
}
// Arrives on `bar` once every cp.async this thread issued before has landed.
__device__ inline void mbarrier_arrive_on_copies(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase of `bar` with parity `parity` has completed.
__device__ inline void mbarrier_wait(uint32_t bar, uint32_t parity) {
    asm volatile("{\n.reg .pred done;\nWAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT;\n}\n" ::"r"(bar), "r"(parity) : "memory");
}

template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(256, 1) attn_fwd_kernel12(AttnParams<T> p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using Traits = Wgmma12Traits<D>;
    constexpr int kTileQ = 128, kTileK = 64, kSubTiles = MaskBlock / kTileK, kStages = Traits::kStages;
    constexpr int kTile = Traits::kTileBytes;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __shared__ __align__(8) uint64_t bars[2 * kStages + 1];   // full[kStages], empty[kStages], q_full
    const uint32_t q_tiles = smem_aligned_1024(smem_raw);   // [2][64, D]: warpgroup g's rows at q_tiles + g kTile
    const uint32_t kv = q_tiles + 2 * kTile;                 // stage s: K at kv + 2s kTile, V at kv + (2s + 1) kTile
    const uint32_t bar0 = static_cast<uint32_t>(__cvta_generic_to_shared(bars));
    auto full = [&](int64_t s) { return bar0 + 8u * static_cast<uint32_t>(s); };
    auto empty = [&](int64_t s) { return bar0 + 8u * static_cast<uint32_t>(kStages + s); };
    const uint32_t q_full = bar0 + 8u * (2 * kStages);
    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; ++s) {
            mbarrier_init(full(s), 256);   // every thread, once its copies landed
            mbarrier_init(empty(s), 8);    // lane 0 of every warp, once the warp is done with the stage
        }
        mbarrier_init(q_full, 256);
    }
    __syncthreads();

    const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int wg_thread = threadIdx.x % 128;
    const int64_t tiles = (p.n + kTileQ - 1) / kTileQ;
    const WorkItem item = p.masks.work[blockIdx.x];
    const int64_t h = item.pair / tiles, tile = item.pair % tiles;
    const int64_t b = blockIdx.z, n = p.n;
    const int64_t q0 = tile * kTileQ;
    const int64_t head_offset = ((b * p.heads + h) * n) * D;
    const T* kv_head = (wg == 0 ? p.k : p.v) + head_offset;   // the tile this warpgroup copies

    // The mask rows as kernel 11; `ahead` walks the same list two steps in front (the copies).
    const DeviceMasks& m = p.masks;
    const int64_t* row_ptr = m.row_ptr + int64_t{m.head_mask[h]} * (m.q_blocks + 1);
    const int64_t qa = q0 / MaskBlock, qb_2 = (q0 + 64) / MaskBlock;
    const bool two_rows = qb_2 != qa && qb_2 < m.q_blocks;
    KeyCursor cur{item.ea, item.eb, row_ptr[qa + 1], two_rows ? row_ptr[qb_2 + 1] : 0, item.sub};
    KeyCursor ahead = cur;
    const int64_t steps = item.steps;
    const int64_t wg_row0 = q0 + 64 * wg;
    const bool wg_in_b = two_rows && wg_row0 / MaskBlock == qb_2;
    const bool wg_has_rows = wg_row0 / MaskBlock < m.q_blocks;
    const int i_warp = static_cast<int>(wg_row0 % MaskBlock) + 16 * warp;   // first row of this warp within its mask block

    // This warpgroup's half of step j's copies into stage j % kStages (after its last user left).
    int64_t copied = 0;   // steps whose copies this thread has issued
    auto copy_next = [&]() {
        if (copied >= steps || !ahead.valid()) return;
        const int64_t s = copied % kStages;
        if (copied >= kStages) mbarrier_wait(empty(s), static_cast<uint32_t>((copied / kStages - 1) & 1));
        const int64_t k0 = int64_t{min(ahead.col_a(m.col_idx), ahead.col_b(m.col_idx))} * MaskBlock + ahead.sub * kTileK;
        tile_load_swizzled<D, 128>(kv + (2 * s + wg) * kTile, kv_head, k0, n, wg_thread);
        mbarrier_arrive_on_copies(full(s));
        ahead.template advance<kSubTiles>(m.col_idx);
        ++copied;
    };
    tile_load_swizzled<D, 128>(q_tiles + wg * kTile, p.q + head_offset, wg_row0, n, wg_thread);
    mbarrier_arrive_on_copies(q_full);
    for (int i = 0; i < kStages - 1; ++i) copy_next();

    float o_acc[D / 2];   // O [16, D] of this warp (wgmma's layout)
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o_acc[i] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY};   // rows group and group + 8, base 2
    float row_sum[2] = {0.f, 0.f};               // this lane's partial sums

    mbarrier_wait(q_full, 0);
    for (int64_t j = 0; j < steps && cur.valid(); ++j) {
        copy_next();   // step j + 2 into the stage of step j - 1
        const int64_t s = j % kStages;
        const int32_t ca = cur.col_a(m.col_idx), cb = cur.col_b(m.col_idx), c = min(ca, cb);
        const int64_t k0 = int64_t{c} * MaskBlock + cur.sub * kTileK;
        // this warpgroup's entry of the block: -1 when its mask row does not keep it
        const int64_t e = !wg_has_rows ? -1 : wg_in_b ? (cb == c ? cur.eb : -1) : (ca == c ? cur.ea : -1);
        cur.template advance<kSubTiles>(m.col_idx);

        mbarrier_wait(full(s), static_cast<uint32_t>((j / kStages) & 1));   // this step's K and V landed ...
        fence_proxy_async();                                                  // ... visible to the tensor cores
        if (e >= 0) {
            float s_acc[32];
            wgmma_scores<T, D>(s_acc, q_tiles + wg * kTile, kv + 2 * s * kTile);       // S = Q K^T
            softmax_step<D, MaskBlock>(s_acc, o_acc, row_max, row_sum, m, e, k0, n, i_warp, p.scale_log2);
            wgmma_pv<T, D>(o_acc, s_acc, kv + (2 * s + 1) * kTile);                   // O += P V
        }
        __syncwarp();
        if (lane == 0) mbarrier_arrive(empty(s));   // this warp is done with stage s
    }
    cp_async_wait<0>();   // no copy left in flight
    output_write<T, D, kTileQ>(p, o_acc, row_max, row_sum, b, h, q0, wg_row0 + 16 * warp, item.slot);
#endif
}

// 13: kernel 10 made persistent. The grid is as many blocks as fit on the GPU at once (3 an SM);
// each takes work items (kernel 8's plan, every batch) one after another, the next claimed
// from a counter in global memory (p.work_counter, zeroed before the launch), so a block that
// drew a long chunk takes fewer short tiles. During a tile's last step, once every warp is done
// with Q and K, the block copies the next tile's Q and first K into their buffers: that copy
// overlaps the last O += P V and the output's write, where in kernel 10 a new block starts
// with both copies in front of it and nothing of its own to overlap them. Why: on BigBird and
// Longformer a 64-row tile walks about 8 key tiles, and kernel 10 lost about a fifth of its
// dense step rate there. Measured: no faster than 10 anywhere (bench/cuda-notes.md).
// grid: (min(work items * batch, blocks that fit), 1, 1), block: 128 threads, dynamic shared
// memory WgmmaTraits<D, MaskBlock, 1>::kSmemBytes.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(128, 3) attn_fwd_kernel13(AttnParams<T> p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using Traits = WgmmaTraits<D, MaskBlock, 1>;
    constexpr int kTileQ = Traits::kTileQ;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    // The item after the current one, claimed by thread 0 when the current one starts and read by
    // every thread after a barrier; two slots by the parity of the block's item count, so the
    // claim for item c + 1 never overwrites item c's before every thread has read it.
    __shared__ int64_t claimed[2];
    const uint32_t q_tile = smem_aligned_1024(smem_raw);
    const uint32_t k_tile = q_tile + Traits::kTileBytes, v_tile = k_tile + Traits::kTileBytes;

    const int warp = threadIdx.x / 32;
    const int64_t n = p.n, tiles = (n + kTileQ - 1) / kTileQ;
    const int64_t total = p.work_items * p.batch;   // item v: work item v % work_items of batch v / work_items
    const DeviceMasks& m = p.masks;

    struct Tile {
        int64_t b, h, q0, steps;
        KeyCursor cur;
        int32_t slot;
    };
    auto tile_of = [&](int64_t v) {
        const WorkItem item = m.work[v % p.work_items];
        const int64_t h = item.pair / tiles, q0 = (item.pair % tiles) * kTileQ;
        const int64_t* row_ptr = m.row_ptr + int64_t{m.head_mask[h]} * (m.q_blocks + 1);
        return Tile{v / p.work_items, h, q0, item.steps, KeyCursor{item.ea, 0, row_ptr[q0 / MaskBlock + 1], 0, item.sub}, item.slot};
    };
    auto offset_of = [&](const Tile& t) { return ((t.b * p.heads + t.h) * n) * D; };
    // The copies a tile starts with, in one group: its Q and its first K (none for a tile with no step).
    auto load_start = [&](const Tile& t) {
        if (t.steps > 0 && t.cur.valid()) {
            tile_load_swizzled<D, 128>(q_tile, p.q + offset_of(t), t.q0, n);
            tile_load_swizzled<D, 128>(k_tile, p.k + offset_of(t), key_start_a<MaskBlock>(t.cur, m.col_idx), n);
        }
        cp_async_commit();
    };

    int64_t v = blockIdx.x;
    if (v >= total) return;
    load_start(tile_of(v));
    for (int64_t count = 0;; ++count) {
        if (threadIdx.x == 0) claimed[count & 1] = gridDim.x + atomicAdd(p.work_counter, 1);
        const Tile t = tile_of(v);
        const int64_t head_offset = offset_of(t);
        const T* k_head = p.k + head_offset;
        const T* v_head = p.v + head_offset;
        KeyCursor cur = t.cur;
        int64_t left = t.steps;
        const int i_warp = static_cast<int>(t.q0 % MaskBlock) + 16 * warp;   // first row of this warp within its mask block

        float o_acc[D / 2];   // O [16, D] of this warp (wgmma's layout)
#pragma unroll
        for (int i = 0; i < D / 2; ++i) o_acc[i] = 0.f;
        float row_max[2] = {-INFINITY, -INFINITY};   // rows group and group + 8, base 2
        float row_sum[2] = {0.f, 0.f};               // this lane's partial sums

        int64_t next_v = -1;   // the next item, once read from `claimed`
        while (left > 0 && cur.valid()) {
            wgmma64_step<T, D, MaskBlock>(p, q_tile, k_tile, v_tile, k_head, v_head, cur, left, o_acc, row_max,
                                          row_sum, i_warp, [&] {   // the next tile's Q and K
                                              next_v = claimed[count & 1];
                                              if (next_v < total) load_start(tile_of(next_v));
                                          });
            --left;
        }
        if (next_v < 0) {   // a tile with no step (no kept block): nothing was copied for it
            __syncthreads();
            next_v = claimed[count & 1];
            if (next_v < total) load_start(tile_of(next_v));
        }
        output_write<T, D, kTileQ>(p, o_acc, row_max, row_sum, t.b, t.h, t.q0, t.q0 + 16 * warp, t.slot);
        if (next_v >= total) break;
        v = next_v;
    }
    cp_async_wait<0>();   // no copy left in flight
#endif
}

// 14: 10 with the K and V tiles of later steps prefetched into L2: at a tile's start thread 0
// asks for those of steps 1 and 2, and at step j for those of step j + 3 (one bulk prefetch of
// up to 16 KB each, cp.async.bulk.prefetch.L2), so the copies into shared memory find them in
// L2. Why: on BigBird Nsight Compute found kernel 10's L2 hit rate at 57% (99% on dense), most
// key tiles of a short row being read once per head, and one K and one V buffer leave a copy
// from DRAM less than a step to land.
// grid: (work items, 1, batch), block: 128 threads, dynamic shared memory WgmmaTraits<D, MaskBlock, 1>::kSmemBytes.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(128, 3) attn_fwd_kernel14(AttnParams<T> p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int kTileK = 64;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const WorkItem item = p.masks.work[blockIdx.x];
    const Tile64<T, D, MaskBlock> t(p, item, smem_raw);
    const DeviceMasks& m = p.masks;
    const int64_t n = p.n;
    KeyCursor cur{item.ea, 0, t.row_end(m), 0, item.sub};
    int64_t left = item.steps;

    // thread 0's cursor of the next step to prefetch, and the steps left from it
    KeyCursor ahead = cur;
    int64_t ahead_left = left;
    auto prefetch_next = [&]() {
        if (threadIdx.x != 0 || ahead_left <= 0 || !ahead.valid()) return;
        const int64_t k0 = key_start_a<MaskBlock>(ahead, m.col_idx);
        if (k0 < n) {
            const int64_t rows = n - k0 < kTileK ? n - k0 : int64_t{kTileK};
            const uint32_t bytes = static_cast<uint32_t>(rows * D * sizeof(T));
            prefetch_l2(t.k_head + k0 * D, bytes);
            prefetch_l2(t.v_head + k0 * D, bytes);
        }
        ahead.template advance<MaskBlock / kTileK>(m.col_idx);
        --ahead_left;
    };
    if (threadIdx.x == 0 && ahead_left > 0 && ahead.valid()) {   // step 0 is copied straight away
        ahead.template advance<MaskBlock / kTileK>(m.col_idx);
        --ahead_left;
    }
    prefetch_next();
    prefetch_next();

    tile_load_swizzled<D, 128>(t.q_tile, t.q_head, t.q0, n);
    if (left > 0 && cur.valid()) tile_load_swizzled<D, 128>(t.k_tile, t.k_head, key_start_a<MaskBlock>(cur, m.col_idx), n);
    cp_async_commit();

    float o_acc[D / 2];   // O [16, D] of this warp (wgmma's layout)
    float row_max[2], row_sum[2];
    online_softmax_start<D>(o_acc, row_max, row_sum);
    while (left > 0 && cur.valid()) {
        prefetch_next();
        wgmma64_step<T, D, MaskBlock>(p, t.q_tile, t.k_tile, t.v_tile, t.k_head, t.v_head, cur, left, o_acc, row_max,
                                      row_sum, t.i_warp, [] {});
        --left;
    }
    cp_async_wait<0>();   // no copy left in flight (a tile with no kept block still loaded Q)
    output_write<T, D, 64>(p, o_acc, row_max, row_sum, t.b, t.h, t.q0, t.q0 + 16 * t.warp, item.slot);
#endif
}

// 15: 10 with every load of mask metadata made a step before its use. Nsight Compute on kernel
// 10 (BigBird with 64-token blocks, n = 65,536, and dense 16,384) put a quarter of the stalls
// on memory results wanted at once: a step's first key and partial-block index read from the
// mask at the step's start and used a few instructions later, the next step's key read right
// before its copy, the wait for V hoisted by the compiler above the softmax, and at a tile's
// start the chain work item -> head's mask -> row end -> first column before the first copy.
// Here the walk is over the work item's entries alone (its step count is exact: no row end),
// a step's column and partial index come from registers loaded during the step before, and
// Q's copy starts from the work item alone. The source also asks for the softmax before the
// wait for V, but ptxas still places that wait and the barrier above the exponentials (the SASS
// in Nsight Compute): the gain measured (1.7% to 8.6%) is the metadata's alone.
// grid: (work items, 1, batch), block: 128 threads, dynamic shared memory WgmmaTraits<D, MaskBlock, 1>::kSmemBytes.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(128, 3) attn_fwd_kernel15(AttnParams<T> p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int kTileK = 64, kSubTiles = MaskBlock / kTileK;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const WorkItem item = p.masks.work[blockIdx.x];
    const Tile64<T, D, MaskBlock> t(p, item, smem_raw);
    const DeviceMasks& m = p.masks;
    const int64_t n = p.n;

    // A step's mask entry e, key tile `sub` within the block, first key k0 and partial index.
    struct Step {
        int64_t e, k0;
        int32_t sub, part;
    };
    const auto step_at = [&](int64_t e, int32_t sub) {
        return Step{e, int64_t{m.col_idx[e]} * MaskBlock + sub * kTileK, sub, m.partial_idx[e]};
    };
    int64_t left = item.steps;
    tile_load_swizzled<D, 128>(t.q_tile, t.q_head, t.q0, n);
    Step cur{};
    if (left > 0) {
        cur = step_at(item.ea, item.sub);
        tile_load_swizzled<D, 128>(t.k_tile, t.k_head, cur.k0, n);
    }
    cp_async_commit();

    float o_acc[D / 2];   // O [16, D] of this warp (wgmma's layout)
    float row_max[2], row_sum[2];
    online_softmax_start<D>(o_acc, row_max, row_sum);

    while (left > 0) {
        // the next step's entry, read now: its copy is issued after this step's S = Q K^T
        Step next{};
        if (left > 1) {
            const bool block_done = cur.sub + 1 == kSubTiles;
            next = step_at(block_done ? cur.e + 1 : cur.e, block_done ? 0 : cur.sub + 1);
        }
        cp_async_wait<0>();    // Q and K of this step landed ...
        fence_proxy_async();   // ... and are visible to the tensor cores ...
        __syncthreads();       // ... for every thread, and every warp is done with the last step's V
        tile_load_swizzled<D, 128>(t.v_tile, t.v_head, cur.k0, n);   // V's copy overlaps S = Q K^T and the softmax
        cp_async_commit();

        float s[32];
        wgmma_scores<T, D>(s, t.q_tile, t.k_tile);                                          // S = Q K^T
        softmax_step_part<D, MaskBlock>(s, o_acc, row_max, row_sum, m, cur.part, cur.k0, n, t.i_warp, p.scale_log2);
        wgmma_fence_operands(s);   // asks for P before the wait below (ptxas moves the wait up regardless)

        cp_async_wait<0>();    // V of this step landed ...
        fence_proxy_async();
        __syncthreads();       // ... for every thread, and every warp's S = Q K^T is done with Q and K
        if (left > 1) {        // the next K's copy overlaps O += P V
            tile_load_swizzled<D, 128>(t.k_tile, t.k_head, next.k0, n);
            cp_async_commit();
        }
        wgmma_pv<T, D>(o_acc, s, t.v_tile);                                               // O += P V
        cur = next;
        --left;
    }
    cp_async_wait<0>();   // no copy left in flight (a tile with no kept block still loaded Q)
    output_write<T, D, 64>(p, o_acc, row_max, row_sum, t.b, t.h, t.q0, t.q0 + 16 * t.warp, item.slot);
#endif
}

// [SECTION] launch

// Kernel 10 to 15 over `work_items` work items (the plan of kernel 8, for 10, 13, 14 and 15, or
// 7: 64- or 128-query tiles, batch `batch`); returns the first failed call's error (cudaSuccess
// when none). Kernel 13 runs min(work items * batch, max_blocks) thread blocks, max_blocks 0:
// as many as fit on the GPU at once, and zeroes p.work_counter first. attention_cuda.cu launches
// attn_combine after it for the split tiles (that kernel lives in its translation unit, built
// for sm_90).
template <typename T, int D, int MaskBlock, int Kernel>
cudaError_t attn_fwd_wgmma_launch(const AttnParams<T>& p, int64_t work_items, int64_t batch, int64_t max_blocks) {
    static_assert(Kernel >= 10 && Kernel <= 15, "the wgmma kernels are 10 to 15");
    constexpr bool kOneGroup = Kernel == 10 || Kernel == 13 || Kernel == 14 || Kernel == 15;
    constexpr int threads = kOneGroup ? 128 : Kernel == 11 ? 256 : Wgmma12Traits<D>::kThreads;
    constexpr int smem = kOneGroup              ? WgmmaTraits<D, MaskBlock, 1>::kSmemBytes
                         : Kernel == 11             ? WgmmaTraits<D, MaskBlock, 2>::kSmemBytes
                                                    : Wgmma12Traits<D>::kSmemBytes;
    auto* kernel = [] {
        if constexpr (Kernel == 10) return attn_fwd_kernel10<T, D, MaskBlock>;
        else if constexpr (Kernel == 11) return attn_fwd_kernel11<T, D, MaskBlock>;
        else if constexpr (Kernel == 12) return attn_fwd_kernel12<T, D, MaskBlock>;
        else if constexpr (Kernel == 13) return attn_fwd_kernel13<T, D, MaskBlock>;
        else if constexpr (Kernel == 14) return attn_fwd_kernel14<T, D, MaskBlock>;
        else return attn_fwd_kernel15<T, D, MaskBlock>;
    }();
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    if constexpr (Kernel == 13) {
        int per_sm = 0, device = 0, sms = 0;
        if ((err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem)) != cudaSuccess) return err;
        if ((err = cudaGetDevice(&device)) != cudaSuccess) return err;
        if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess) return err;
        int64_t blocks = std::min<int64_t>(work_items * batch, int64_t{std::max(per_sm, 1)} * sms);
        if (max_blocks > 0) blocks = std::min(blocks, max_blocks);
        if (blocks == 0) return cudaSuccess;
        if ((err = cudaMemsetAsync(p.work_counter, 0, sizeof(int))) != cudaSuccess) return err;
        kernel<<<static_cast<unsigned>(blocks), threads, smem>>>(p);
        return cudaGetLastError();
    }
    const dim3 grid(static_cast<unsigned>(work_items), 1, static_cast<unsigned>(batch));
    kernel<<<grid, threads, smem>>>(p);
    return cudaGetLastError();
}

} // namespace sparsa::cuda
