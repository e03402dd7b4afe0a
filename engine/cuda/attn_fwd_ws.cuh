// Kernels 17 to 19 of the attention forward: FlashAttention-3's division of labour on kernel 12's
// tiles. sm_90a only: included by attn_fwd_ws.cu alone (after attn_fwd_wgmma.cuh, whose mbarrier
// helpers, steps and Wgmma12 tiling it uses).
//
//   17: kernel 12's 128-query tiles, walk (kernel 7's plan: two mask rows a tile with 64-token
//       masks) and ring of K / V stages on mbarriers, with a third warpgroup, the producer, that
//       issues every copy (both Q tiles, then each step's K and V) while the two consumer
//       warpgroups only compute. setmaxnreg moves registers from the producer (56 a thread) to
//       the consumers (224), so that a consumer can hold S of step j and P of step j - 1 at once:
//       O += P_{j-1} V_{j-1} runs on the tensor cores during step j's softmax (kernel 16's
//       pipelining, which cost kernel 16 its third block an SM; here there is one block an SM by
//       design and two consumers in it), and the consumers take turns issuing their products
//       (FlashAttention-3's ping-pong, on named barriers), so one's softmax runs beside the
//       other's products. Not yet here: TMA copies. First run 2026-12-07: slower than 15 (4.861
//       against 4.594 ms dense 16,384); Nsight Compute put the consumers' own instruction stream
//       as the limit (bench/cuda-notes.md, "The profile of forward kernels 15 and 17").
//   18: 17 with 128 keys a step: two 64-key tiles (two mask entries with 64-token masks, any two
//       the walk gives, adjacent or not) in each stage, S of both in registers, one online
//       softmax over the 128 scores a row (one max, one O rescale, one turn, one wait and one
//       release per 128 keys instead of per 64: FlashAttention-3's 128 x 128 tile for d = 128).
//       A tile with an odd step count pads its last step with a second tile of the same keys,
//       every score masked. Three stages of 64 KB at d = 128 (225 KB with Q). First run 2026-12-07:
//       11% faster than 17, level with 15 (4.336 against 4.384 ms dense 16,384); its profile put the
//       consumers' latency, not their issue, as the limit (bench/cuda-notes.md, "The profile of
//       forward kernel 18").
//   19: 18 made persistent: a block an SM, each running work items blockIdx.x, blockIdx.x +
//       gridDim.x, ... with one ring of stages across them. 18 holds the SM alone (225 KB), so a
//       block's start (launch, barriers, Q's copy, the ring's first fill) and end (the last product,
//       O's write) overlap nothing, which short rows pay on every few steps. In 19 the producer
//       copies the next item's Q as soon as both consumers' last S = Q K^T of the item is done
//       (q_empty) and its first K / V tiles as stages free up, while the consumers finish the item.
//       First run (H100, 2026-12-07): window(256) at 65,536 0.955 -> 0.82-0.83 ms with the records
//       below, level with 15 (18: 1.04); dense 16,384 3.659 ms, 0.96 of cuDNN in the same run;
//       causal 16% slower than 18 (its blocks took fixed shares of items of different lengths).
//       Since: a block's items after its first claimed from a counter (p.work_counter, one per
//       batch index, zeroed at launch), so a block that drew long items takes fewer: causal 2.26 ->
//       1.89 ms, BigBird 65,536 1.18 -> 1.08 ms against the fixed shares, dense and window(256)
//       unchanged (H100, the same call; bench/results/cuda-nvidia-h100-80gb-hbm3-fwd19-claims.md).
//
// The producer walks the mask for the consumers: with each stage its thread 0 writes the stage's
// mask records to shared memory (a tile's first key and, per consumer, its partial-block index or
// "not kept"), and a consumer reads its own after issuing the step's products. Measured on the H100
// 2026-12-07 against each consumer walking the mask a step ahead (which had taken 18's dense 16,384
// from 4.30 to 3.98 ms): 18 3.92-3.96 -> 3.67-3.72 ms, causal 6% faster
// (bench/results/cuda-nvidia-h100-80gb-hbm3-fwd19-records.md): the walk's loads and integer work ran
// beside the other consumer's softmax, in the issue slots that softmax needs. ptxas puts the wait
// for O += P_{j-1} V_{j-1} (WARPGROUP.DEPBAR 0, written after the softmax) ahead of the softmax's
// exponentials, so a softmax does not run beside its own product; keeping the wait after it (a
// never-taken warp-uniform branch ending ptxas's basic block) measured slower in 17 and 18 (4.74
// and 4.13 ms) and was withdrawn (bench/cuda-notes.md). A tile the warpgroup's mask row lacks is
// masked inside the mask branch that partial blocks and the tile past n take (17's first run
// selected every score against -inf on every step, 34 FSEL a step on dense).
//
// Stage s of the ring holds one step's K and V tiles (17: one of each, 18 and 19: two). full(s)
// completes when the producer's copies into it have landed (each producer thread's
// cp.async.mbarrier.arrive) and its thread 0 has written the stage's records (a plain arrive: a
// release, which the consumers' wait acquires), empty(s) when each of the 8 consumer warps is done
// with it: a warp releases step j's stage once O += P_j V_j, issued during
// step j + 1, is done. A consumer waiting for step j's stage thus holds only step j - 1's, so the
// producer (which needs step j - 3's back to fill step j) never waits on a consumer that waits on
// it. Every consumer computes every step of the tile, also those its own mask row (one of the
// tile's two with 64-token masks) does not keep, with every score masked: kernel 12 skipped them,
// but a wgmma issued under a branch is serialized by ptxas, which would undo the pipelining.
#pragma once

#include "engine/cuda/attn_fwd_wgmma.cuh"

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace sparsa::cuda {

// Kernel 17 (KeyTiles 1), 18 and 19 (KeyTiles 2).
template <int D, int KeyTiles> struct WarpSpecializedTraits {
    static constexpr int kKeyTiles = KeyTiles;                                 // 64-key tiles a step
    // Three stages for both: a consumer holds two (step j's K for S, step j - 1's V for the product in
    // flight), so the third is what lets the producer run ahead. At d = 128, 18's three take 224 KB.
    static constexpr int kStages = 3;
    static constexpr int kThreads = 384;                                       // consumers 0 and 1, producer 2
    static constexpr int kTileBytes = D / 64 * 8192;                           // one [64, D] tile
    static constexpr int kSmemBytes = (2 + 2 * KeyTiles * kStages) * kTileBytes + 1024;   // Q [128, D], kStages x (K, V) tiles
    static_assert(kSmemBytes + 1024 <= 227 * 1024, "a block of Hopper has 227 KB of shared memory (the barriers: under 1 KB)");
    // 128 x 56 + 256 x 224 = 64,512 <= 65,536. The producer keeps more than FlashAttention-3's 24 to
    // 40: its cp.async copies compute addresses (TMA's would not); 17's consumers need 168 (ptxas).
    static constexpr int kProducerRegisters = 56, kConsumerRegisters = 224;
    static constexpr bool kPingPong = true;   // the consumers take turns issuing their products
};

// Named barriers (bar.sync / bar.arrive with a thread count): id 0 is __syncthreads'.
__device__ inline void named_barrier_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ inline void named_barrier_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// The warpgroup's registers a thread, changed for the rest of the kernel (sm_90a, PTX setmaxnreg;
// every thread of the warpgroup executes it).
template <int Registers> __device__ inline void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Registers));
}
template <int Registers> __device__ inline void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Registers));
}

// The mask entry of key block `col` (the smaller of the two rows' next columns ca and cb) in the row
// of a consumer's 64 rows, -1 where that row lacks the block or the consumer has no rows (past the
// last mask row); in_b: its rows are the tile's second mask row.
__device__ inline int64_t row_entry(const KeyCursor& c, int32_t ca, int32_t cb, int32_t col, bool has_rows, bool in_b) {
    return !has_rows ? -1 : in_b ? (cb == col ? c.eb : -1) : (ca == col ? c.ea : -1);
}

// *src in every lane of the warp, as lane 0 alone reads it from shared memory (the warp converged).
// A consumer warp releases a stage or its Q with lane 0's arrive after __syncwarp: reading there in
// lane 0 alone, the producer's next write of the words is ordered after the read by the mbarrier
// itself. Read by every lane, compute-sanitizer racecheck reported the other lanes' reads against
// that write wherever the ring of stages wrapped (17 and 19 on the H100, 2026-12-07).
template <typename X> __device__ inline X read_in_lane0(const X& src) {
    static_assert(sizeof(X) % 4 == 0, "whole 32-bit words");
    uint32_t words[sizeof(X) / 4] = {};
    if (threadIdx.x % 32 == 0) memcpy(words, &src, sizeof(X));
#pragma unroll
    for (int i = 0; i < static_cast<int>(sizeof(X) / 4); ++i) words[i] = __shfl_sync(0xffffffffu, words[i], 0);
    X x;
    memcpy(&x, words, sizeof(X));
    return x;
}

// What the producer tells the consumers of an item with its Q (item_info below): its tile's first
// row, head, 64-key tiles (steps < 0: no item left, the block is done) and workspace slot.
struct WsItem {
    int64_t q0;
    int32_t h, steps, slot;
};

// The body of kernels 17 (KeyTiles 1), 18 and 19 (KeyTiles 2, Persistent), each a __global__ of its
// own name below (profiles and sanitizer reports name the kernel). grid: (blocks, 1, batch), block:
// 384 threads, dynamic shared memory WarpSpecializedTraits<D, KeyTiles>::kSmemBytes. 17 and 18 run
// work item blockIdx.x (a block per item); 19 runs as many blocks as SMs, each item blockIdx.x, then
// those it claims from a counter, and its producer loads the next item's Q and first K / V tiles
// while the consumers finish the item before (its last products and its output). The producer
// alone reads the work list: it describes each item to the consumers beside its Q (item_info, ready
// with q_full), and after the last one says that none is left.
template <typename T, int D, int MaskBlock, int KeyTiles, bool Persistent>
__device__ __forceinline__ void attn_fwd_ws_body(const AttnParams<T>& p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using Traits = WarpSpecializedTraits<D, KeyTiles>;
    constexpr int kTileQ = 128, kTileK = 64, kSubTiles = MaskBlock / kTileK, kStages = Traits::kStages;
    constexpr int kTile = Traits::kTileBytes;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    // full[kStages], empty[kStages], q_full, q_empty (the consumers' 8 warps are done with Q: the last
    // S = Q K^T of their item is complete)
    __shared__ __align__(8) uint64_t bars[2 * kStages + 2];
    // stage s's mask records, tile i, consumer g: {first key / 64, the partial-block index, -1 for a
    // full block, kNotKept where g's mask row lacks the block}, written by the producer's thread 0
    __shared__ int2 records[kStages][KeyTiles][2];
    constexpr int32_t kNotKept = -2;
    // item c of the block (slot c & 1), written by the producer's thread 0 before its arrive on q_full:
    // item c + 2 is written only once the consumers are done with item c + 1's Q, long after they read
    // item c's
    __shared__ WsItem item_info[2];
    // 19: the block's item after item c (slot c & 1), claimed by the producer's thread 0 while item
    // c is copied, read by every producer thread after a barrier (named barrier 3, the producer's
    // 128 threads)
    __shared__ int64_t claimed[2];
    const StageRing<D, kStages, KeyTiles> ring(smem_raw, bars);
    const uint32_t q_tiles = ring.q_tiles, q_full = ring.q_full(), q_empty = q_full + 8;
    // the producer's threads copy (and its thread 0 arrives once more on full and q_full, for the
    // records and the item's description), the consumers' 8 warps compute
    ring.init(128, 1);
    if (threadIdx.x == 0) mbarrier_init(q_empty, 8);
    __syncthreads();

    const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int wg_thread = threadIdx.x % 128;
    const DeviceMasks& m = p.masks;
    const int64_t n = p.n;
    // Each item's steps run on from the block's earlier items' in the ring: step j of an item is the
    // block's step `before + j`, in stage (before + j) % kStages.
    const auto stage_of = [&](int64_t g) { return g % kStages; };
    const auto parity_of = [&](int64_t g) { return static_cast<uint32_t>((g / kStages) & 1); };

    if (wg == 2) {   // the producer: each item's Q, then every step's K and V into the ring
        setmaxnreg_dec<Traits::kProducerRegisters>();
        // thread 0 writes what the consumers read beside the copies (item descriptions, mask records)
        // and arrives once more for them: a plain arrive is a release, which the consumers' wait acquires
        const bool writer = wg_thread == 0;
        const auto announce = [&](uint32_t bar) {   // the copies into it (each thread), and the writer's words
            mbarrier_arrive_on_copies(bar);
            if (writer) mbarrier_arrive(bar);
        };
        int64_t before = 0, items = 0;
        for (int64_t w = blockIdx.x; w < p.work_items; ++items) {
            int claim = 0;   // 19: the counter's value for the block's next item (its latency hidden by the item)
            if (Persistent && writer) claim = atomicAdd(p.work_counter + blockIdx.z, 1);
            const auto t = Tile128<T, MaskBlock>::template of<D>(p, w);   // the tile and its mask rows, as kernel 12's
            const int64_t q0 = t.q0, head_offset = t.head_offset, tiles_k = t.item.steps;
            const int64_t steps = (tiles_k + KeyTiles - 1) / KeyTiles;
            if (items > 0) mbarrier_wait(q_empty, static_cast<uint32_t>((items - 1) & 1));   // the item before is done with Q
            if (writer) item_info[items & 1] = WsItem{q0, static_cast<int32_t>(t.h), t.item.steps, t.item.slot};
            tile_load_swizzled<D, 128>(q_tiles, p.q + head_offset, q0, n, wg_thread);
            tile_load_swizzled<D, 128>(q_tiles + kTile, p.q + head_offset, q0 + 64, n, wg_thread);
            announce(q_full);   // item_info is visible with Q
            // which of the tile's two mask rows (a, b) each consumer's 64 rows belong to, if any
            bool has_rows[2], in_b[2];
#pragma unroll
            for (int g = 0; g < 2; ++g) {
                has_rows[g] = (q0 + 64 * g) / MaskBlock < m.q_blocks;
                in_b[g] = t.two_rows && (q0 + 64 * g) / MaskBlock == t.qb_2;
            }
            KeyCursor ahead = t.cur;
            int64_t k0 = 0;
            for (int64_t j = 0; j < steps; ++j) {
                const int64_t g = before + j, s = stage_of(g);
                if (g >= kStages) mbarrier_wait(ring.empty(s), parity_of(g - kStages));
#pragma unroll
                for (int i = 0; i < KeyTiles; ++i) {
                    int32_t part[2] = {kNotKept, kNotKept};
                    if (j * KeyTiles + i < tiles_k) {   // else the padding tile: the keys before it again (finite values; masked)
                        const int32_t ca = ahead.col_a(m.col_idx), cb = ahead.col_b(m.col_idx), col = min(ca, cb);
                        k0 = int64_t{col} * MaskBlock + ahead.sub * kTileK;
                        if (writer) {
#pragma unroll
                            for (int c = 0; c < 2; ++c) {
                                const int64_t e = row_entry(ahead, ca, cb, col, has_rows[c], in_b[c]);
                                part[c] = e >= 0 ? m.partial_idx[e] : kNotKept;
                            }
                        }
                        ahead.template advance<kSubTiles>(m.col_idx);
                    }
                    if (writer) {
#pragma unroll
                        for (int c = 0; c < 2; ++c) records[s][i][c] = make_int2(static_cast<int32_t>(k0 / kTileK), part[c]);
                    }
                    tile_load_swizzled<D, 128>(ring.k_tile(s, i), p.k + head_offset, k0, n, wg_thread);
                    tile_load_swizzled<D, 128>(ring.v_tile(s, i), p.v + head_offset, k0, n, wg_thread);
                }
                announce(ring.full(s));   // the records are visible with the stage
            }
            before += steps;
            if constexpr (!Persistent) {
                break;   // 17, 18: one item a block
            } else {
                if (writer) claimed[items & 1] = int64_t{gridDim.x} + claim;
                named_barrier_sync(3, 128);
                w = claimed[items & 1];
            }
        }
        if constexpr (Persistent) {   // none left: say so in the slot of the item that would come next
            if (items > 0) mbarrier_wait(q_empty, static_cast<uint32_t>((items - 1) & 1));
            if (writer) item_info[items & 1] = WsItem{0, 0, -1, -1};
            announce(q_full);
        }
        cp_async_wait<0>();   // no copy left in flight when the producer leaves
        return;
    }

    // A consumer: 64 query rows of each item, this warp 16 of them.
    setmaxnreg_inc<Traits::kConsumerRegisters>();
    const uint32_t q_tile = q_tiles + wg * kTile;
    const auto release = [&](int64_t s) {   // this warp is done with stage s
        __syncwarp();
        if (lane == 0) mbarrier_arrive(ring.empty(s));
    };
    const auto done_with_q = [&]() {        // this warp's last S = Q K^T of the item is complete
        __syncwarp();
        if (lane == 0) mbarrier_arrive(q_empty);
    };

    // Ping-pong (FlashAttention-3): the two consumers take turns issuing their products, so that one's
    // softmax runs while the other's products hold the tensor cores. Named barrier 1 + g is consumer
    // g's turn: it syncs there (its 128 threads) before issuing, and the other consumer's arrive (128)
    // completes it; having issued, it arrives at the other's. Both consumers issue the same number of
    // times (per item with steps: S_0; S_j with O += P_{j-1} V_{j-1}; the last O += P V), consumer 1
    // first arrives at consumer 0's barrier before its own first turn (consumer 0 goes first), and
    // consumer 0 takes consumer 1's arrive after its last issue once all items are done, so every
    // arrive is met.
    const auto turn_wait = [&]() {
        if constexpr (Traits::kPingPong) named_barrier_sync(1 + wg, 256);
    };
    const auto turn_pass = [&]() {
        if constexpr (Traits::kPingPong) named_barrier_arrive(2 - wg, 256);
    };
    bool issued = false;   // this block's consumers have issued products (the turns have begun)

    const int64_t b = blockIdx.z;
    int64_t before = 0;
    for (int64_t items = 0; Persistent || items == 0; ++items) {
        mbarrier_wait(q_full, static_cast<uint32_t>(items & 1));   // the item, from the producer with its Q
        const WsItem item = read_in_lane0(item_info[items & 1]);
        if (item.steps < 0) break;   // 19: none left
        const int64_t h = item.h, q0 = item.q0;
        const int64_t tiles_k = item.steps;                                  // 64-key tiles the walk gives
        const int64_t steps = (tiles_k + KeyTiles - 1) / KeyTiles;           // steps of KeyTiles tiles
        const int64_t wg_row0 = q0 + 64 * wg;
        const int i_warp = static_cast<int>(wg_row0 % MaskBlock) + 16 * warp;   // first row of this warp within its mask block

        float o_acc[D / 2];   // O [16, D] of this warp (wgmma's layout)
        float row_max[2], row_sum[2], scale_old[2];   // rows group and group + 8, base 2; this lane's partial sums
        online_softmax_start<D>(o_acc, row_max, row_sum);
        float s_acc[KeyTiles][32];      // S of the step's tiles, then their P
        uint32_t pf[KeyTiles][4][4];    // P of the step before, rounded to T: the A operands of its O += P V

        // Step j's key tiles and this warpgroup's mask entries of them (KeyTileMask: the tile's first key,
        // its partial-block index, -1 for a full block, and whether this warpgroup's mask row keeps the
        // block at all), from the records the producer wrote beside the stage. A tile the row does not
        // keep is still computed, every score masked (its P is 0): the products of every step then
        // issue the same way, which ptxas needs to keep them in flight (a wgmma issued on one side of a
        // branch is serialized: its C7520 warning). So is the padding tile of an odd tile count (the
        // keys before it again, kept by no row). A consumer reads them right after issuing the step's
        // products, while S_j runs: walking the mask itself, even a step ahead, put the walk's loads and
        // integer work on the consumers' schedulers beside the other consumer's softmax (6% slower on
        // dense 16,384: bench/results/cuda-nvidia-h100-80gb-hbm3-fwd19-records.md).
        KeyTileMask st[KeyTiles];
        const auto read_records = [&](int64_t s) {   // stage s's records of this warpgroup
#pragma unroll
            for (int i = 0; i < KeyTiles; ++i) {
                const int2 r = read_in_lane0(records[s][i][wg]);
                st[i] = KeyTileMask{int64_t{r.x} * kTileK, r.y == kNotKept ? -1 : r.y, r.y != kNotKept};
            }
        };
        const auto scores_to_p = [&]() {   // mask (all of it for a block the row lacks), online softmax over the step's tiles
            softmax_scores_tiles<MaskBlock, KeyTiles>(s_acc, row_max, row_sum, scale_old, m, st, n, i_warp, p.scale_log2);
        };
        const auto issue_scores = [&](int64_t s) {   // S = Q K^T of each tile of stage s: KeyTiles groups
#pragma unroll
            for (int i = 0; i < KeyTiles; ++i) wgmma_scores_async<T, D>(s_acc[i], q_tile, ring.k_tile(s, i));
        };
        const auto issue_pv = [&](int64_t s) {       // O += P V of each tile of stage s: KeyTiles groups
#pragma unroll
            for (int i = 0; i < KeyTiles; ++i) wgmma_pv_async<T, D>(o_acc, pf[i], ring.v_tile(s, i));
        };
        const auto fence_scores = [&]() {
#pragma unroll
            for (int i = 0; i < KeyTiles; ++i) wgmma_fence_operands(s_acc[i]);
        };
        const auto pack = [&]() {
#pragma unroll
            for (int i = 0; i < KeyTiles; ++i) pack_p<T>(s_acc[i], pf[i]);
        };
        const auto stage_ready = [&](int64_t j) {   // step j's K and V landed and are visible to the tensor cores
            mbarrier_wait(ring.full(stage_of(before + j)), parity_of(before + j));
            fence_proxy_async();
        };

        if (steps > 0) {   // step 0: S_0 and its softmax (O is still 0: no product to overlap, no rescale)
            if (Traits::kPingPong && wg == 1 && !issued) named_barrier_arrive(1, 256);   // consumer 0 goes first
            issued = true;
            stage_ready(0);
            turn_wait();
            wgmma_fence();
            issue_scores(stage_of(before));
            turn_pass();
            read_records(stage_of(before));                                          // while S_0 runs
            wgmma_wait<0>();
            if (steps == 1) done_with_q();
            fence_scores();
            scores_to_p();
            pack();
        } else {
            done_with_q();
        }
        for (int64_t j = 1; j < steps; ++j) {   // pf holds P of step j - 1
            const int64_t s = stage_of(before + j), prev = stage_of(before + j - 1);
            stage_ready(j);
            turn_wait();
            wgmma_fence();
            issue_scores(s);                                                         // S_j = Q K_j
            issue_pv(prev);                                                          // O += P_{j-1} V_{j-1}
            turn_pass();
            read_records(s);                                                         // while S_j runs
            wgmma_wait<KeyTiles>();                                                  // S_j (O += P V still in flight)
            if (j == steps - 1) done_with_q();
            fence_scores();
            scores_to_p();
            wgmma_wait<0>();                                                         // O += P_{j-1} V_{j-1}
            wgmma_fence_operands(o_acc);
            release(prev);                                                           // step j - 1's K and V are done with
            rescale_rows<D>(o_acc, scale_old);                                       // O to step j's row maxima
            pack();
        }
        if (steps > 0) {   // the last step's O += P V
            const int64_t last = stage_of(before + steps - 1);
            turn_wait();
            wgmma_fence();
            issue_pv(last);
            turn_pass();
            wgmma_wait<0>();
            wgmma_fence_operands(o_acc);
            release(last);
        }
        output_write<T, D, kTileQ>(p, o_acc, row_max, row_sum, b, h, q0, wg_row0 + 16 * warp, item.slot);
        before += steps;
    }
    if (Traits::kPingPong && wg == 0 && issued) named_barrier_sync(1, 256);   // consumer 1's arrive after its last issue
#endif
}

template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(384, 1) attn_fwd_kernel17(AttnParams<T> p) {
    attn_fwd_ws_body<T, D, MaskBlock, 1, false>(p);
}
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(384, 1) attn_fwd_kernel18(AttnParams<T> p) {
    attn_fwd_ws_body<T, D, MaskBlock, 2, false>(p);
}
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(384, 1) attn_fwd_kernel19(AttnParams<T> p) {
    attn_fwd_ws_body<T, D, MaskBlock, 2, true>(p);
}

// Kernel 17, 18 or 19 over `work_items` work items (kernel 7's plan, 128-query tiles, batch `batch`):
// 17 and 18 a block per item, 19 as many blocks as the GPU runs at once (one an SM; max_blocks > 0:
// at most that many), each taking item blockIdx.x and then those it claims (p.work_counter: `batch`
// ints, zeroed here first). Returns the first failed call's error.
// attention_cuda.cu launches attn_combine after it for the split tiles, as for 11 and 12.
template <typename T, int D, int MaskBlock, int Kernel>
cudaError_t attn_fwd_ws_launch(const AttnParams<T>& p, int64_t work_items, int64_t batch, int64_t max_blocks) {
    static_assert(Kernel >= 17 && Kernel <= 19, "the warp-specialized kernels are 17 to 19");
    using Traits = WarpSpecializedTraits<D, Kernel == 17 ? 1 : 2>;
    constexpr int threads = Traits::kThreads, smem = Traits::kSmemBytes;
    auto* kernel = Kernel == 17   ? attn_fwd_kernel17<T, D, MaskBlock>
                   : Kernel == 18 ? attn_fwd_kernel18<T, D, MaskBlock>
                                  : attn_fwd_kernel19<T, D, MaskBlock>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    int64_t blocks = work_items;
    if constexpr (Kernel == 19) {
        int64_t resident = 0;
        if ((err = resident_blocks(kernel, threads, smem, &resident)) != cudaSuccess) return err;
        // every batch's items in grid.z, so the resident blocks share out over the batch
        blocks = std::min(work_items, std::max<int64_t>(1, resident / std::max<int64_t>(batch, 1)));
        if (max_blocks > 0) blocks = std::min(blocks, max_blocks);
        if (blocks > 0) {
            err = cudaMemsetAsync(p.work_counter, 0, sizeof(int) * static_cast<size_t>(batch), p.stream);
            if (err != cudaSuccess) return err;
        }
    }
    if (blocks == 0) return cudaSuccess;
    const dim3 grid(static_cast<unsigned>(blocks), 1, static_cast<unsigned>(batch));
    kernel<<<grid, threads, smem, p.stream>>>(p);
    return cudaGetLastError();
}

} // namespace sparsa::cuda
