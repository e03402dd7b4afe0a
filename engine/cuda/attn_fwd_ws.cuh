// Kernel 17 of the attention forward: FlashAttention-3's division of labour on kernel 12's tiles.
// sm_90a only: included by attn_fwd_wgmma.cu alone (after attn_fwd_wgmma.cuh, whose mbarrier
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
//       other's products. Not yet here: TMA copies. Written without a GPU (2026-12-07); its first
//       run is bench/cuda-notes.md's next entry.
//
// Stage s of the ring holds one step's K and V. full(s) completes when the producer's copies into
// it have landed (each producer thread's cp.async.mbarrier.arrive), empty(s) when each of the 8
// consumer warps is done with it: a warp releases step j's stage once O += P_j V_j, issued during
// step j + 1, is done. A consumer waiting for step j's stage thus holds only step j - 1's, so the
// producer (which needs step j - 3's back to fill step j) never waits on a consumer that waits on
// it. Every consumer computes every step of the tile, also those its own mask row (one of the
// tile's two with 64-token masks) does not keep, with every score masked: kernel 12 skipped them,
// but a wgmma issued under a branch is serialized by ptxas, which would undo the pipelining.
#pragma once

#include "engine/cuda/attn_fwd_wgmma.cuh"

#include <cuda_runtime.h>

#include <cstdint>

namespace sparsa::cuda {

template <int D> struct Kernel17Traits {
    static constexpr int kStages = 3;
    static constexpr int kThreads = 384;                                       // consumers 0 and 1, producer 2
    static constexpr int kTileBytes = D / 64 * 8192;                           // one [64, D] tile
    static constexpr int kSmemBytes = (2 + 2 * kStages) * kTileBytes + 1024;   // Q [128, D], kStages x (K, V)
    // 128 x 56 + 256 x 224 = 64,512 <= 65,536. The producer keeps more than FlashAttention-3's 24 to
    // 40: its cp.async copies compute addresses (TMA's would not); the consumers need 168 (ptxas).
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

// grid: (work items, 1, batch), block: 384 threads, dynamic shared memory Kernel17Traits<D>::kSmemBytes.
template <typename T, int D, int MaskBlock>
__global__ void __launch_bounds__(384, 1) attn_fwd_kernel17(AttnParams<T> p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using Traits = Kernel17Traits<D>;
    constexpr int kTileQ = 128, kTileK = 64, kSubTiles = MaskBlock / kTileK, kStages = Traits::kStages;
    constexpr int kTile = Traits::kTileBytes;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __shared__ __align__(8) uint64_t bars[2 * kStages + 1];   // full[kStages], empty[kStages], q_full
    const StageRing<D, kStages> ring(smem_raw, bars);
    const uint32_t q_tiles = ring.q_tiles, q_full = ring.q_full();
    ring.init(128);   // the producer's threads copy, the consumers' 8 warps compute
    __syncthreads();

    const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int wg_thread = threadIdx.x % 128;
    const auto t = Tile128<T, MaskBlock>::template of<D>(p);   // the tile and its mask rows, as kernel 12's
    const WorkItem item = t.item;
    const int64_t h = t.h, b = t.b, q0 = t.q0, head_offset = t.head_offset, qb_2 = t.qb_2, n = p.n;
    const bool two_rows = t.two_rows;
    const DeviceMasks& m = p.masks;
    KeyCursor cur = t.cur;
    const int64_t steps = item.steps;

    if (wg == 2) {   // the producer: Q, then every step's K and V into the ring
        setmaxnreg_dec<Traits::kProducerRegisters>();
        tile_load_swizzled<D, 128>(q_tiles, p.q + head_offset, q0, n, wg_thread);
        tile_load_swizzled<D, 128>(q_tiles + kTile, p.q + head_offset, q0 + 64, n, wg_thread);
        mbarrier_arrive_on_copies(q_full);
        KeyCursor ahead = cur;
        for (int64_t j = 0; j < steps; ++j) {
            const int64_t s = j % kStages;
            if (j >= kStages) mbarrier_wait(ring.empty(s), static_cast<uint32_t>((j / kStages - 1) & 1));
            const int64_t k0 = int64_t{min(ahead.col_a(m.col_idx), ahead.col_b(m.col_idx))} * MaskBlock + ahead.sub * kTileK;
            tile_load_swizzled<D, 128>(ring.k_tile(s), p.k + head_offset, k0, n, wg_thread);
            tile_load_swizzled<D, 128>(ring.v_tile(s), p.v + head_offset, k0, n, wg_thread);
            mbarrier_arrive_on_copies(ring.full(s));
            ahead.template advance<kSubTiles>(m.col_idx);
        }
        cp_async_wait<0>();   // no copy left in flight when the producer leaves
        return;
    }

    // A consumer: 64 query rows, this warp 16 of them.
    setmaxnreg_inc<Traits::kConsumerRegisters>();
    const int64_t wg_row0 = q0 + 64 * wg;
    const bool wg_in_b = two_rows && wg_row0 / MaskBlock == qb_2;
    const bool wg_has_rows = wg_row0 / MaskBlock < m.q_blocks;
    const int i_warp = static_cast<int>(wg_row0 % MaskBlock) + 16 * warp;   // first row of this warp within its mask block
    const uint32_t q_tile = q_tiles + wg * kTile;
    const auto release = [&](int64_t s) {   // this warp is done with stage s
        __syncwarp();
        if (lane == 0) mbarrier_arrive(ring.empty(s));
    };

    float o_acc[D / 2];   // O [16, D] of this warp (wgmma's layout)
    float row_max[2], row_sum[2], scale_old[2];   // rows group and group + 8, base 2; this lane's partial sums
    online_softmax_start<D>(o_acc, row_max, row_sum);
    float s_acc[32];      // S of the step, then its P
    uint32_t pf[4][4];    // P of the step before, rounded to T: the A operand of its O += P V

    // Step j's key tile and this warpgroup's mask entry of it (part: its partial-block index, -1
    // for a full block; keep: whether this warpgroup's mask row keeps the block at all). A step
    // the row does not keep is still computed, every score masked (its P is 0): the products of
    // every step then issue the same way, which ptxas needs to keep them in flight (a wgmma
    // issued on one side of a branch is serialized: its C7520 warning).
    struct Step {
        int64_t k0;
        int32_t part;
        bool keep;
    };
    const auto step_of = [&](KeyCursor& c) {
        const int32_t ca = c.col_a(m.col_idx), cb = c.col_b(m.col_idx), col = min(ca, cb);
        const int64_t e = !wg_has_rows ? -1 : wg_in_b ? (cb == col ? c.eb : -1) : (ca == col ? c.ea : -1);
        const Step st{int64_t{col} * MaskBlock + c.sub * kTileK, e >= 0 ? m.partial_idx[e] : -1, e >= 0};
        c.template advance<kSubTiles>(m.col_idx);
        return st;
    };
    const auto scores_to_p = [&](const Step& st) {   // mask (all of it for a block the row lacks), online softmax
        if (!st.keep) {
#pragma unroll
            for (int i = 0; i < 32; ++i) s_acc[i] = -INFINITY;
        }
        softmax_scores_part<MaskBlock>(s_acc, row_max, row_sum, scale_old, m, st.part, st.k0, n, i_warp, p.scale_log2);
    };
    const auto stage_ready = [&](int64_t j) {   // step j's K and V landed and are visible to the tensor cores
        mbarrier_wait(ring.full(j % kStages), static_cast<uint32_t>((j / kStages) & 1));
        fence_proxy_async();
    };

    // Ping-pong (FlashAttention-3): the two consumers take turns issuing their products, so that one's
    // softmax runs while the other's products hold the tensor cores. Named barrier 1 + g is consumer
    // g's turn: it syncs there (its 128 threads) before issuing, and the other consumer's arrive (128)
    // completes it; having issued, it arrives at the other's. Each consumer issues steps + 1 times
    // (S_0; S_j with O += P_{j-1} V_{j-1}; the last O += P V): consumer 1 opens with an arrive at
    // consumer 0's barrier and leaves out its arrive after its last issue, so every arrive is met.
    const auto turn_wait = [&]() {
        if constexpr (Traits::kPingPong) named_barrier_sync(1 + wg, 256);
    };
    const auto turn_pass = [&](bool last) {
        if constexpr (Traits::kPingPong) {
            if (!(last && wg == 1)) named_barrier_arrive(2 - wg, 256);
        }
    };

    mbarrier_wait(q_full, 0);
    if (Traits::kPingPong && wg == 1 && steps > 0) named_barrier_arrive(1, 256);
    if (steps > 0) {   // step 0: S_0 and its softmax (O is still 0: no product to overlap, no rescale)
        const Step st = step_of(cur);
        stage_ready(0);
        turn_wait();
        wgmma_fence();
        wgmma_scores_async<T, D>(s_acc, q_tile, ring.k_tile(0));
        turn_pass(false);
        wgmma_wait<0>();
        wgmma_fence_operands(s_acc);
        scores_to_p(st);
        pack_p<T>(s_acc, pf);
    }
    for (int64_t j = 1; j < steps; ++j) {   // pf holds P of step j - 1
        const int64_t s = j % kStages, prev = (j - 1) % kStages;
        const Step st = step_of(cur);
        stage_ready(j);
        turn_wait();
        wgmma_fence();
        wgmma_scores_async<T, D>(s_acc, q_tile, ring.k_tile(s));                 // S_j = Q K_j
        wgmma_pv_async<T, D>(o_acc, pf, ring.v_tile(prev));                      // O += P_{j-1} V_{j-1}
        turn_pass(false);
        wgmma_wait<1>();                                                         // S_j (O += P V still in flight)
        wgmma_fence_operands(s_acc);
        scores_to_p(st);
        wgmma_wait<0>();                                                         // O += P_{j-1} V_{j-1}
        wgmma_fence_operands(o_acc);
        release(prev);                                                           // step j - 1's K and V are done with
        rescale_rows<D>(o_acc, scale_old);                                       // O to step j's row maxima
        pack_p<T>(s_acc, pf);
    }
    if (steps > 0) {   // the last step's O += P V
        const int64_t last = (steps - 1) % kStages;
        turn_wait();
        wgmma_fence();
        wgmma_pv_async<T, D>(o_acc, pf, ring.v_tile(last));
        turn_pass(true);
        wgmma_wait<0>();
        wgmma_fence_operands(o_acc);
        release(last);
    }
    output_write<T, D, kTileQ>(p, o_acc, row_max, row_sum, b, h, q0, wg_row0 + 16 * warp, item.slot);
#endif
}

// Kernel 17 over `work_items` work items (kernel 7's plan, 128-query tiles, batch `batch`);
// returns the first failed call's error. attention_cuda.cu launches attn_combine after it for the
// split tiles, as for 11 and 12.
template <typename T, int D, int MaskBlock>
cudaError_t attn_fwd_ws_launch(const AttnParams<T>& p, int64_t work_items, int64_t batch) {
    constexpr int threads = Kernel17Traits<D>::kThreads, smem = Kernel17Traits<D>::kSmemBytes;
    auto* kernel = attn_fwd_kernel17<T, D, MaskBlock>;
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    const dim3 grid(static_cast<unsigned>(work_items), 1, static_cast<unsigned>(batch));
    kernel<<<grid, threads, smem, p.stream>>>(p);
    return cudaGetLastError();
}

} // namespace sparsa::cuda
