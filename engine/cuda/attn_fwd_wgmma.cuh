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
// The wgmma instructions, the copies into shared memory and a warpgroup's step are in
// wgmma_steps.cuh.
//
// Index: [SECTION] kernels 10 to 15, [SECTION] launch.
#pragma once

#include "engine/cuda/attn_fwd_kernels.cuh"
#include "engine/cuda/wgmma_steps.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace sparsa::cuda {

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

// A work item of kernel 7's plan for kernels 11, 12 and 17: a 128-query tile of head h, batch b from
// row q0 (head_offset: the head's first element in Q, K, V and O), spanning one mask row or, with
// 64-token masks, two (two_rows; the second is qb_2), and the cursor over them that its steps walk.
template <typename T, int MaskBlock> struct Tile128 {
    WorkItem item;
    int64_t h, b, q0, head_offset, qb_2;
    bool two_rows;
    KeyCursor cur;
    template <int D> __device__ static Tile128 of(const AttnParams<T>& p) { return of<D>(p, blockIdx.x); }
    template <int D> __device__ static Tile128 of(const AttnParams<T>& p, int64_t work) {   // work item `work`
        Tile128 t;
        const int64_t tiles = (p.n + 127) / 128;
        t.item = p.masks.work[work];
        t.h = t.item.pair / tiles;
        t.b = blockIdx.z;
        t.q0 = (t.item.pair % tiles) * 128;
        t.head_offset = ((t.b * p.heads + t.h) * p.n) * D;
        const DeviceMasks& m = p.masks;
        const int64_t* row_ptr = m.row_ptr + int64_t{m.head_mask[t.h]} * (m.q_blocks + 1);
        const int64_t qa = t.q0 / MaskBlock;
        t.qb_2 = (t.q0 + 64) / MaskBlock;
        t.two_rows = t.qb_2 != qa && t.qb_2 < m.q_blocks;
        t.cur = KeyCursor{t.item.ea, t.item.eb, row_ptr[qa + 1], t.two_rows ? row_ptr[t.qb_2 + 1] : 0, t.item.sub};
        return t;
    }
};

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
    // The tile and its mask rows (as kernel 7): the tile's first row, and qb_2 the row of its
    // second 64 rows when that is another mask row (MaskBlock 64) that exists.
    const auto t = Tile128<T, MaskBlock>::template of<D>(p);
    const WorkItem item = t.item;
    const int64_t h = t.h, b = t.b, q0 = t.q0, head_offset = t.head_offset, qb_2 = t.qb_2, n = p.n;
    const bool two_rows = t.two_rows;
    const T* k_head = p.k + head_offset;
    const T* v_head = p.v + head_offset;
    const DeviceMasks& m = p.masks;
    KeyCursor cur = t.cur;
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

// The shared memory of kernels 12 and 17 to 19: two Q tiles ([128, D]: the rows of warpgroup g at
// q_tiles + g kTile), then a ring of Stages stages of KeyTiles K tiles and KeyTiles V tiles each (12
// and 17: one of each; 18 and 19: two), and mbarriers over it: full(s) completes when the copies into stage
// s have landed, empty(s) when the 8 computing warps are done with it, q_full when the Q tiles have
// landed. init (thread 0; the caller's barrier follows): `copiers` threads arrive on full and
// q_full, lane 0 of each computing warp on empty.
template <int D, int Stages, int KeyTiles = 1> struct StageRing {
    static constexpr int kTile = D / 64 * 8192;   // one [64, D] tile
    uint32_t q_tiles, kv, bar0;
    __device__ StageRing(const void* smem_raw, const uint64_t* bars)
        : q_tiles(smem_aligned_1024(smem_raw)), kv(q_tiles + 2 * kTile),
          bar0(static_cast<uint32_t>(__cvta_generic_to_shared(bars))) {}
    __device__ uint32_t full(int64_t s) const { return bar0 + 8u * static_cast<uint32_t>(s); }
    __device__ uint32_t empty(int64_t s) const { return bar0 + 8u * static_cast<uint32_t>(Stages + s); }
    __device__ uint32_t q_full() const { return bar0 + 8u * (2 * Stages); }
    // tile i of stage s: [K_0 .. K_{KeyTiles-1}, V_0 .. V_{KeyTiles-1}]
    __device__ uint32_t k_tile(int64_t s, int i = 0) const {
        return kv + (2 * KeyTiles * static_cast<uint32_t>(s) + static_cast<uint32_t>(i)) * kTile;
    }
    __device__ uint32_t v_tile(int64_t s, int i = 0) const { return k_tile(s, i) + KeyTiles * kTile; }
    // full(s) and q_full complete on `copiers` arrivals of cp.async copies plus `extra` plain arrivals
    // (kernels 17 to 19: the producer thread that writes the stage's mask records and the item's
    // description).
    __device__ void init(uint32_t copiers, uint32_t extra = 0) const {
        if (threadIdx.x != 0) return;
        for (int s = 0; s < Stages; ++s) {
            mbarrier_init(full(s), copiers + extra);
            mbarrier_init(empty(s), 8);
        }
        mbarrier_init(q_full(), copiers + extra);
    }
};

template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(256, 1) attn_fwd_kernel12(AttnParams<T> p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using Traits = Wgmma12Traits<D>;
    constexpr int kTileQ = 128, kTileK = 64, kSubTiles = MaskBlock / kTileK, kStages = Traits::kStages;
    constexpr int kTile = Traits::kTileBytes;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __shared__ __align__(8) uint64_t bars[2 * kStages + 1];   // full[kStages], empty[kStages], q_full
    const StageRing<D, kStages> ring(smem_raw, bars);
    const uint32_t q_tiles = ring.q_tiles, q_full = ring.q_full();
    ring.init(256);   // every thread copies (its half of each stage), every warp computes
    __syncthreads();

    const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int wg_thread = threadIdx.x % 128;
    const auto t = Tile128<T, MaskBlock>::template of<D>(p);
    const WorkItem item = t.item;
    const int64_t h = t.h, b = t.b, q0 = t.q0, head_offset = t.head_offset, qb_2 = t.qb_2, n = p.n;
    const bool two_rows = t.two_rows;
    const T* kv_head = (wg == 0 ? p.k : p.v) + head_offset;   // the tile this warpgroup copies

    // The mask rows as kernel 11; `ahead` walks the same list two steps in front (the copies).
    const DeviceMasks& m = p.masks;
    KeyCursor cur = t.cur;
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
        if (copied >= kStages) mbarrier_wait(ring.empty(s), static_cast<uint32_t>((copied / kStages - 1) & 1));
        const int64_t k0 = int64_t{min(ahead.col_a(m.col_idx), ahead.col_b(m.col_idx))} * MaskBlock + ahead.sub * kTileK;
        tile_load_swizzled<D, 128>(wg == 0 ? ring.k_tile(s) : ring.v_tile(s), kv_head, k0, n, wg_thread);
        mbarrier_arrive_on_copies(ring.full(s));
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

        mbarrier_wait(ring.full(s), static_cast<uint32_t>((j / kStages) & 1));   // this step's K and V landed ...
        fence_proxy_async();                                                  // ... visible to the tensor cores
        if (e >= 0) {
            float s_acc[32];
            wgmma_scores<T, D>(s_acc, q_tiles + wg * kTile, ring.k_tile(s));   // S = Q K^T
            softmax_step<D, MaskBlock>(s_acc, o_acc, row_max, row_sum, m, e, k0, n, i_warp, p.scale_log2);
            wgmma_pv<T, D>(o_acc, s_acc, ring.v_tile(s));                      // O += P V
        }
        __syncwarp();
        if (lane == 0) mbarrier_arrive(ring.empty(s));   // this warp is done with stage s
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

// 16: 15 with O += P V of one step in flight during the next step's softmax (FlashAttention-3's
// pipelining inside a warpgroup). Kernel 15's warpgroup waits for its own S before the softmax
// and for O += P V before the next step, its tensor cores idle meanwhile unless the SM's other
// blocks fill them (Nsight Compute on 15, dense: the two waits for wgmma 20% of the stall
// samples). Here step j issues S_j = Q K_j and O += P_{j-1} V_{j-1} together, waits for S_j alone,
// runs its softmax while the tensor cores still add P_{j-1} V_{j-1}, then waits for that and
// rescales O (softmax_scores_part leaves O alone: ptxas serializes every wgmma of a function
// where O, an accumulator in flight, is written between the issue and the wait). Two K and two
// V buffers, one copy group a step: at step j, once the barrier says every warp is done with
// step j - 1's products, K_{j+1} goes to K_{j-1}'s buffer and V_j to V_{j-2}'s, so each copy has
// a whole step to land, and a step needs one barrier (15: two). Five tiles of shared memory
// (80 KB at d = 128) leave two blocks an SM (15: three).
// grid: (work items, 1, batch), block: 128 threads, dynamic shared memory Kernel16Traits<D>::kSmemBytes.
template <int D> struct Kernel16Traits {
    static constexpr int kTileBytes = WgmmaTraits<D, 64, 1>::kTileBytes;
    static constexpr int kSmemBytes = 5 * kTileBytes + 1024;   // Q, K and V of even steps, K and V of odd steps
};

template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(128, 2) attn_fwd_kernel16(AttnParams<T> p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int kTileK = 64, kSubTiles = MaskBlock / kTileK, kTileBytes = Kernel16Traits<D>::kTileBytes;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const WorkItem item = p.masks.work[blockIdx.x];
    const Tile64<T, D, MaskBlock> t(p, item, smem_raw);   // its k_tile and v_tile: the even steps' buffers
    const uint32_t k_odd = t.v_tile + kTileBytes, v_odd = t.v_tile + 2 * kTileBytes;
    const auto k_buf = [&](int64_t j) { return (j & 1) != 0 ? k_odd : t.k_tile; };
    const auto v_buf = [&](int64_t j) { return (j & 1) != 0 ? v_odd : t.v_tile; };
    const DeviceMasks& m = p.masks;
    const int64_t n = p.n, steps = item.steps;

    // a step's mask entry e, key tile `sub` within the block, first key k0 and partial index
    struct Step {
        int64_t e, k0;
        int32_t sub, part;
    };
    const auto step_at = [&](int64_t e, int32_t sub) {
        return Step{e, int64_t{m.col_idx[e]} * MaskBlock + sub * kTileK, sub, m.partial_idx[e]};
    };
    const auto after = [&](const Step& s) {
        const bool block_done = s.sub + 1 == kSubTiles;
        return step_at(block_done ? s.e + 1 : s.e, block_done ? 0 : s.sub + 1);
    };

    float o_acc[D / 2];   // O [16, D] of this warp (wgmma's layout)
    float row_max[2], row_sum[2], scale_old[2];
    online_softmax_start<D>(o_acc, row_max, row_sum);
    float s[32];          // S of the step, then its P
    uint32_t pf[4][4];    // P of the step before, rounded to T: the A operand of its O += P V

    // Q and K_0, then V_0 and K_1 (the copy group of step 0); S_0 and its softmax
    tile_load_swizzled<D, 128>(t.q_tile, t.q_head, t.q0, n);
    Step first{}, cur{};   // step 0; in the loop, step j
    if (steps > 0) {
        first = step_at(item.ea, item.sub);
        tile_load_swizzled<D, 128>(t.k_tile, t.k_head, first.k0, n);
    }
    cp_async_commit();
    if (steps > 0) {
        tile_load_swizzled<D, 128>(t.v_tile, t.v_head, first.k0, n);
        if (steps > 1) {
            cur = after(first);
            tile_load_swizzled<D, 128>(k_odd, t.k_head, cur.k0, n);
        }
    }
    cp_async_commit();
    if (steps > 0) {
        cp_async_wait<1>();   // Q and K_0
        fence_proxy_async();
        __syncthreads();
        wgmma_scores<T, D>(s, t.q_tile, t.k_tile);
        softmax_scores_part<MaskBlock>(s, row_max, row_sum, scale_old, m, first.part, first.k0, n, t.i_warp, p.scale_log2);
        pack_p<T>(s, pf);   // O is still 0: no rescale
    }

    // step j >= 1: pf holds P of step j - 1, cur is step j
    for (int64_t j = 1; j < steps; ++j) {
        cp_async_wait<0>();    // K_j and V_{j-1} landed ...
        fence_proxy_async();   // ... are visible to the tensor cores ...
        __syncthreads();       // ... for every thread, and every warp is done with step j - 1's products
        Step next{};
        if (j + 1 < steps) {   // K_{j+1} into K_{j-1}'s buffer
            next = after(cur);
            tile_load_swizzled<D, 128>(k_buf(j + 1), t.k_head, next.k0, n);
        }
        tile_load_swizzled<D, 128>(v_buf(j), t.v_head, cur.k0, n);   // V_j into V_{j-2}'s
        cp_async_commit();

        wgmma_fence();
        wgmma_scores_async<T, D>(s, t.q_tile, k_buf(j));   // S_j = Q K_j
        wgmma_pv_async<T, D>(o_acc, pf, v_buf(j - 1));     // O += P_{j-1} V_{j-1}
        wgmma_wait<1>();                                    // S_j (O += P V still in flight)
        wgmma_fence_operands(s);
        softmax_scores_part<MaskBlock>(s, row_max, row_sum, scale_old, m, cur.part, cur.k0, n, t.i_warp, p.scale_log2);
        wgmma_wait<0>();                                    // O += P_{j-1} V_{j-1}
        wgmma_fence_operands(o_acc);
        rescale_rows<D>(o_acc, scale_old);
        pack_p<T>(s, pf);
        cur = next;
    }
    if (steps > 0) {   // the last step's O += P V
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
        wgmma_fence();
        wgmma_pv_async<T, D>(o_acc, pf, v_buf(steps - 1));
        wgmma_wait<0>();
        wgmma_fence_operands(o_acc);
    }
    cp_async_wait<0>();   // no copy left in flight (a tile with no kept block still loaded Q)
    output_write<T, D, 64>(p, o_acc, row_max, row_sum, t.b, t.h, t.q0, t.q0 + 16 * t.warp, item.slot);
#endif
}

// [SECTION] launch

// How many blocks of `kernel` (threads, dynamic shared memory smem) the GPU runs at once, at least one
// an SM: the block count of the persistent kernels 13 and 19.
template <typename Kernel>
cudaError_t resident_blocks(Kernel* kernel, int threads, int smem, int64_t* blocks) {
    int per_sm = 0, device = 0, sms = 0;
    cudaError_t err;
    if ((err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem)) != cudaSuccess) return err;
    if ((err = cudaGetDevice(&device)) != cudaSuccess) return err;
    if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess) return err;
    *blocks = int64_t{std::max(per_sm, 1)} * sms;
    return cudaSuccess;
}

// Kernel 10 to 16 over `work_items` work items (the plan of kernel 8, for 10, 13, 14, 15 and 16, or
// 7: 64- or 128-query tiles, batch `batch`); returns the first failed call's error (cudaSuccess
// when none). Kernel 13 runs min(work items * batch, max_blocks) thread blocks, max_blocks 0:
// as many as fit on the GPU at once, and zeroes p.work_counter first. attention_cuda.cu launches
// attn_combine after it for the split tiles (that kernel lives in its translation unit, built
// for sm_90).
template <typename T, int D, int MaskBlock, int Kernel>
cudaError_t attn_fwd_wgmma_launch(const AttnParams<T>& p, int64_t work_items, int64_t batch, int64_t max_blocks) {
    static_assert(Kernel >= 10 && Kernel <= 16, "the wgmma kernels are 10 to 16");
    constexpr bool kOneGroup = Kernel == 10 || Kernel == 13 || Kernel == 14 || Kernel == 15 || Kernel == 16;
    constexpr int threads = kOneGroup ? 128 : Kernel == 11 ? 256 : Wgmma12Traits<D>::kThreads;
    constexpr int smem = Kernel == 16               ? Kernel16Traits<D>::kSmemBytes
                         : kOneGroup                ? WgmmaTraits<D, MaskBlock, 1>::kSmemBytes
                         : Kernel == 11             ? WgmmaTraits<D, MaskBlock, 2>::kSmemBytes
                                                    : Wgmma12Traits<D>::kSmemBytes;
    auto* kernel = [] {
        if constexpr (Kernel == 10) return attn_fwd_kernel10<T, D, MaskBlock>;
        else if constexpr (Kernel == 11) return attn_fwd_kernel11<T, D, MaskBlock>;
        else if constexpr (Kernel == 12) return attn_fwd_kernel12<T, D, MaskBlock>;
        else if constexpr (Kernel == 13) return attn_fwd_kernel13<T, D, MaskBlock>;
        else if constexpr (Kernel == 14) return attn_fwd_kernel14<T, D, MaskBlock>;
        else if constexpr (Kernel == 15) return attn_fwd_kernel15<T, D, MaskBlock>;
        else return attn_fwd_kernel16<T, D, MaskBlock>;
    }();
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    if constexpr (Kernel == 13) {
        int64_t resident = 0;
        if ((err = resident_blocks(kernel, threads, smem, &resident)) != cudaSuccess) return err;
        int64_t blocks = std::min<int64_t>(work_items * batch, resident);
        if (max_blocks > 0) blocks = std::min(blocks, max_blocks);
        if (blocks == 0) return cudaSuccess;
        if ((err = cudaMemsetAsync(p.work_counter, 0, sizeof(int), p.stream)) != cudaSuccess) return err;
        kernel<<<static_cast<unsigned>(blocks), threads, smem, p.stream>>>(p);
        return cudaGetLastError();
    }
    const dim3 grid(static_cast<unsigned>(work_items), 1, static_cast<unsigned>(batch));
    kernel<<<grid, threads, smem, p.stream>>>(p);
    return cudaGetLastError();
}

} // namespace sparsa::cuda
