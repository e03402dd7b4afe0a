// The CUDA content engine's state and passes (CudaContentAttention::Impl), a private header of
// content_cuda.cu (its one translation unit; split out for length): device buffers, the lsh and
// anchors bucketing and passes ([SECTION] lsh and anchors), FAVOR+'s passes ([SECTION] favor), and
// the fixed mask's table. content_cuda.cu keeps the public calls (prepare, run, download, times,
// walk) and the checks.
#pragma once

#include "engine/content/buckets.hpp"
#include "engine/content/favor.hpp"
#include "engine/cuda/content/content_anchors.cuh"
#include "engine/cuda/content/content_band3.cuh"
#include "engine/cuda/content/content_cuda.hpp"
#include "engine/cuda/content/content_dense3.cuh"
#include "engine/cuda/content/content_fast.cuh"
#include "engine/cuda/content/content_hash4.cuh"
#include "engine/cuda/content/content_numbers.hpp"
#include "engine/cuda/cuda_host.hpp"
#include "engine/error.hpp"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

namespace sparsa {

using namespace cuda_host;   // checked CUDA calls, DeviceBuffer (as content_cuda.cu, this header's one includer)

struct CudaContentAttention::Impl {
    template <typename T> using ContentParams = cuda::content::ContentParams<T>;
    DeviceBuffer q, k, v, o, lse, mats, omega;
    DeviceBuffer keys_in, keys_out, values, order, chunk_of, sort_temp;
    DeviceBuffer sorted_chunk;   // version 3: the chunk ids in sorted order (content_sorted_chunks), queries then keys
    DeviceBuffer pieces;         // version 4: lsh's rotations as three 16-bit pieces (content_hash4.cuh), [heads][slices][3][64][d]
    DeviceBuffer cosines, best, best_sorted, anchor_token, anchor_by, seg_offsets, seg_sort_temp;   // anchors
    DeviceBuffer o_part, lse_part, o_part2, lse_part2, fixed_o, fixed_lse, fixed_state, fixed_head, fixed_bits;
    DeviceBuffer bias, o1, lse1, prefix_v, prefix_lse, phi_q, phi_k, c_q, c_k;
    std::unique_ptr<CudaAttention> fixed_engine;
    bool has_fixed = false;
    ContentSpec spec;
    TensorShape shape;
    CudaDtype dtype = CudaDtype::bfloat16;
    float scale = 0;
    bool tensor_cores = false, prepared = false, ran = false, pieces_made = false;
    int version = 2;
    int64_t bh = 0, chunk = 0, rounds = 0, cols = 0, segs_q = 0, segs = 0, features = 0;
    int bucket_bits = 0, key_bits = 0;
    size_t sort_temp_bytes = 0, seg_sort_temp_bytes = 0;
    int sm_count = 0;
    cudaEvent_t ev[4] = {}, fev[2] = {};

    int64_t total() const { return segs * shape.n; }

    // [SECTION] lsh and anchors

    template <typename T> ContentParams<T> base_params() const {
        ContentParams<T> p{};
        p.heads = shape.heads;
        p.bh = bh;
        p.d = static_cast<int32_t>(shape.d);
        p.scale_log2 = scale * cuda::content::kLog2e;
        return p;
    }

    // A pass over `parts` parts (rounds or splits), on tensor cores where they run it.
    template <typename T> void launch_pass(const ContentParams<T>& p, int64_t parts) {
        const int64_t d = shape.d;
        if constexpr (!std::is_same_v<T, float>) {
            if (tensor_cores && version >= 2) {
                if (p.q_order != nullptr) {
                    d == 64 ? launch_tc2<T, 64, 64, 128, cuda::content::kBand>(p, parts) : launch_tc2<T, 128, 128, 128, cuda::content::kBand>(p, parts);
                } else if (dense3()) {
                    d == 64 ? launch_dense3<T, 64>(p) : launch_dense3<T, 128>(p);
                } else {
                    d == 64 ? launch_tc2<T, 64, 64, 128, cuda::content::kDense>(p, parts) : launch_tc2<T, 128, 128, 128, cuda::content::kDense>(p, parts);
                }
                return;
            }
            if (tensor_cores) {
                const dim3 grid(static_cast<unsigned>((p.q_rows + 63) / 64), static_cast<unsigned>(bh), static_cast<unsigned>(parts));
                const int r = p.q_order != nullptr ? p.rounds : 0;
                if (d == 64) {
                    const int smem = cuda::content::band_tc_smem<64>(r);
                    SPARSA_CUDA_CHECK(cudaFuncSetAttribute(cuda::content::content_band_tc<T, 64>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
                    cuda::content::content_band_tc<T, 64><<<grid, 128, smem>>>(p);
                } else {
                    const int smem = cuda::content::band_tc_smem<128>(r);
                    SPARSA_CUDA_CHECK(cudaFuncSetAttribute(cuda::content::content_band_tc<T, 128>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
                    cuda::content::content_band_tc<T, 128><<<grid, 128, smem>>>(p);
                }
                SPARSA_CUDA_CHECK(cudaGetLastError());
                return;
            }
        }
        const dim3 grid(static_cast<unsigned>((p.q_rows + 3) / 4), static_cast<unsigned>(bh), static_cast<unsigned>(parts));
        cuda::content::content_band_simple<T><<<grid, 128>>>(p);
        SPARSA_CUDA_CHECK(cudaGetLastError());
    }

    // Version 3's band walk: tensor cores, 16-bit, d = 64 or 128, chunk 64, two rounds or more
    // (else version 2's). With one round its gain, the pair rule without a loop over rounds and a
    // logarithm, is not there: on the H100 anchors (one round) at n = 65,536, d = 128 took 1.75 ms
    // of passes with version 3 against 1.49 with version 2 (bench/results/content-cuda-*.md).
    template <typename T> bool band3() const {
        return version >= 3 && tensor_cores && !std::is_same_v<T, float> && chunk == 64 && rounds >= 2 && (shape.d == 64 || shape.d == 128);
    }

    // lsh's hashing on content_hash3: version 3, d = 64 or 128, a power-of-two column count from 4 to 64.
    bool hash3() const {
        return version >= 3 && (shape.d == 64 || shape.d == 128) && cols >= 4 && cols <= 64 && std::has_single_bit(static_cast<uint64_t>(cols));
    }
    // Sort keys of 32 bits where they fit (content_hash3 writes them): the radix sort moves half the
    // key bytes (two one-sweep passes over (segment, bucket) either way).
    bool keys32() const { return spec.kind == ContentKind::lsh && (hash3() || hash_tc()) && key_bits <= 32; }
    // lsh's hashing on content_hash_tc: version 4, bf16 / fp16, d = 64 or 128, cols a power of two from 8
    // to 64, the rotation's pieces made (prepare: not where an fp16 piece would overflow).
    bool hash_tc() const { return version >= 4 && spec.kind == ContentKind::lsh && pieces_made; }

    // content_hash3 on the side x (queries, or keys from segment `base` on), keys of type Key:
    // blocks that walk the token tiles, as many as the GPU holds at once.
    template <typename T, int D, typename Key> void launch_hash3(const T* x, int64_t base, Key* keys) {
        const int smem = cuda::content::hash3_smem<D>();
        const auto kernel = cuda::content::content_hash3<T, D, Key>;
        const dim3 grid = hash_grid(kernel, smem, (shape.n + cuda::content::kHash3Tokens - 1) / cuda::content::kHash3Tokens);
        kernel<<<grid, 128, smem>>>(x, shape.heads, bh, shape.n, mats.as<float>(), static_cast<int32_t>(rounds), static_cast<int32_t>(cols),
                                    base, bucket_bits, keys);
        SPARSA_CUDA_CHECK(cudaGetLastError());
    }

    // The grid of a hashing kernel whose blocks walk a head's `tiles` token tiles (content_hash3,
    // content_hash_tc): (blocks a head, bh, 64-column slices), as many blocks as the GPU holds at once.
    template <typename Kernel> dim3 hash_grid(Kernel kernel, int smem, int64_t tiles) const {
        SPARSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        int per_sm = 0;
        SPARSA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 128, smem));
        const int64_t slices = (rounds * cols + 63) / 64;
        const int64_t per_head = std::clamp<int64_t>(int64_t{std::max(per_sm, 1)} * sm_count / (bh * slices), 1, tiles);
        return dim3(static_cast<unsigned>(per_head), static_cast<unsigned>(bh), static_cast<unsigned>(slices));
    }

    // content_hash_tc on the side x: blocks that walk the token tiles, as many as the GPU holds at once.
    template <typename T, int D, typename Key> void launch_hash_tc(const T* x, int64_t base, Key* keys) {
        constexpr int smem = cuda::content::hash_tc_smem<D>();
        const auto kernel = cuda::content::content_hash_tc<T, D, Key>;
        const dim3 grid = hash_grid(kernel, smem, (shape.n + 63) / 64);
        kernel<<<grid, 128, smem>>>(x, shape.heads, bh, shape.n, pieces.as<T>(), static_cast<int32_t>(rounds), static_cast<int32_t>(cols),
                                    base, bucket_bits, keys);
        SPARSA_CUDA_CHECK(cudaGetLastError());
    }

    // content_band3 over every round: each block walks G consecutive tiles of one (round, head),
    // G chosen to fill the GPU's resident blocks in whole waves (the last wave's idle blocks and
    // each block's first, unoverlapped copy against fewer, longer blocks).
    template <typename T, int D> void launch_band3(const ContentParams<T>& p, int64_t parts) {
        const int smem = cuda::content::band3_smem<D>(static_cast<int>(rounds));
        const auto kernel = cuda::content::content_band3<T, D>;
        SPARSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        int per_sm = 0;
        SPARSA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 128, smem));
        const int64_t tiles = (shape.n + 63) / 64, rows_of_tiles = bh * parts;
        const int64_t resident = std::max<int64_t>(1, int64_t{std::max(per_sm, 1)} * sm_count);
        int64_t best_g = 1, best_cost = INT64_MAX;
        for (int64_t g = 1; g <= std::min<int64_t>(tiles, 64); ++g) {
            const int64_t blocks = (tiles + g - 1) / g * rows_of_tiles;
            const int64_t cost = (blocks + resident - 1) / resident * (g + 2);   // waves x (tiles + the start's copies)
            if (cost < best_cost) best_cost = cost, best_g = g;
        }
        const dim3 grid(static_cast<unsigned>((tiles + best_g - 1) / best_g), static_cast<unsigned>(bh), static_cast<unsigned>(parts));
        kernel<<<grid, 128, smem>>>(p, static_cast<int32_t>(best_g));
        SPARSA_CUDA_CHECK(cudaGetLastError());
    }

    // content_dense3 (FAVOR+'s dense walk, version 3) with kDense3Warps warps (tiles of 16 x that
    // many rows): each block walks G consecutive items (tile, split) of one head, G chosen as
    // launch_band3 chooses it, counting an item's 64-key steps.
    static constexpr int kDense3Warps = 8;
    template <typename T, int D> void launch_dense3(const ContentParams<T>& p) {
        constexpr int kThreads = 32 * kDense3Warps, kRows = 16 * kDense3Warps;
        const int smem = cuda::content::dense3_smem<D, kDense3Warps>();
        const auto kernel = cuda::content::content_dense3<T, D, kDense3Warps>;
        SPARSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        int per_sm = 0;
        SPARSA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
        const int64_t splits = (p.k_rows + p.key_split - 1) / p.key_split, items = (p.q_rows + kRows - 1) / kRows * splits;
        const int64_t steps = (std::min(p.key_split, p.k_rows) + 63) / 64;
        const int64_t resident = std::max<int64_t>(1, int64_t{std::max(per_sm, 1)} * sm_count);
        int64_t best_g = 1, best_cost = INT64_MAX;
        for (int64_t g = 1; g <= std::min<int64_t>(items, 4096); ++g) {
            const int64_t blocks = (items + g - 1) / g * bh;
            const int64_t cost = (blocks + resident - 1) / resident * (g * steps + 2);   // waves x (steps + the start's copies)
            if (cost < best_cost) best_cost = cost, best_g = g;
        }
        const dim3 grid(static_cast<unsigned>((items + best_g - 1) / best_g), static_cast<unsigned>(bh));
        kernel<<<grid, kThreads, smem>>>(p, static_cast<int32_t>(best_g));
        SPARSA_CUDA_CHECK(cudaGetLastError());
    }

    template <typename T, int DK, int DV, int KRows, int Mode> void launch_tc2(const ContentParams<T>& p, int64_t parts) {
        const dim3 grid(static_cast<unsigned>((p.q_rows + 63) / 64), static_cast<unsigned>(bh), static_cast<unsigned>(parts));
        const int smem = cuda::content::band_tc2_smem<DK, DV, KRows>(Mode == cuda::content::kBand ? p.rounds : 0);
        const auto kernel = cuda::content::content_band_tc2<T, DK, DV, KRows, Mode>;
        SPARSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        kernel<<<grid, 128, smem>>>(p);
        SPARSA_CUDA_CHECK(cudaGetLastError());
    }

    // The log-sum-exp merge; parts_o16: the parts' O in T (version 2's rounds), else parts_o.
    template <typename T> void merge(const float* parts_o, const float* parts_lse, int64_t parts, bool with_fixed,
                                     int64_t rows, cuda::content::SelfRule self, T* out, float* out_lse, const T* parts_o16 = nullptr) {
        // version 2's merge, from the parts' O in T or in float32
        const auto merge2 = [&](const auto* part_o) {
            using Part = std::remove_cv_t<std::remove_pointer_t<decltype(part_o)>>;
            const unsigned blocks = static_cast<unsigned>((rows * (shape.d / 4) + 127) / 128);
            cuda::content::content_merge2<T, Part><<<blocks, 128>>>(
                part_o, parts_lse, static_cast<int32_t>(parts), with_fixed ? fixed_o.as<float>() : nullptr,
                with_fixed ? fixed_lse.as<float>() : nullptr, rows, static_cast<int32_t>(shape.d), self, q.as<T>(), k.as<T>(),
                v.as<T>(), out, out_lse);
            SPARSA_CUDA_CHECK(cudaGetLastError());
        };
        if (parts_o16 != nullptr) return merge2(parts_o16);
        if (version >= 2 && shape.d % 4 == 0) return merge2(parts_o);
        const unsigned threads = static_cast<unsigned>((shape.d + 31) / 32 * 32);
        cuda::content::content_merge<T><<<static_cast<unsigned>(rows), threads>>>(
            parts_o, parts_lse, static_cast<int32_t>(parts), with_fixed ? fixed_o.as<float>() : nullptr,
            with_fixed ? fixed_lse.as<float>() : nullptr, rows, static_cast<int32_t>(shape.d), self, q.as<T>(), k.as<T>(),
            v.as<T>(), out, out_lse);
        SPARSA_CUDA_CHECK(cudaGetLastError());
    }

    // anchors: cosines in double, each segment's tokens by best cosine (CUB, stable), the
    // balanced greedy (content_anchors.cuh): keys_in as the CPU's anchors_assign gives them.
    template <typename T> void assign_anchors() {
        const int64_t n = shape.n, d = shape.d;
        const dim3 grid(static_cast<unsigned>((n + cuda::content::kCosineTokens - 1) / cuda::content::kCosineTokens), static_cast<unsigned>(bh));
        const size_t smem = static_cast<size_t>(cuda::content::kCosineTokens * d) * sizeof(float);
        for (int side = 0; side < (spec.shared_qk ? 1 : 2); ++side) {   // queries, then keys when not shared
            cuda::content::anchors_cosines<T><<<grid, 256, smem>>>((side == 0 ? q : k).as<T>(), shape.heads, bh, n, static_cast<int32_t>(d),
                                                                   mats.as<float>(), static_cast<int32_t>(rounds), static_cast<int32_t>(cols),
                                                                   side == 0 ? 0 : segs_q, cosines.as<double>(), best.as<double>(),
                                                                   anchor_token.as<int32_t>());
            SPARSA_CUDA_CHECK(cudaGetLastError());
        }
        size_t temp = seg_sort_temp_bytes;
        const int32_t* offsets = seg_offsets.as<int32_t>();
        SPARSA_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
            seg_sort_temp.as<void>(), temp, best.as<double>(), best_sorted.as<double>(), anchor_token.as<int32_t>(), anchor_by.as<int32_t>(),
            static_cast<int>(total()), static_cast<int>(segs), offsets, offsets + 1));
        const int32_t capacity = static_cast<int32_t>((n + cols - 1) / cols);
        const size_t balance_smem = 2 * static_cast<size_t>(cols) * sizeof(int32_t);
        if (balance_smem > 48 * 1024) {
            SPARSA_CUDA_CHECK(cudaFuncSetAttribute(cuda::content::anchors_balance, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   static_cast<int>(balance_smem)));
        }
        cuda::content::anchors_balance<<<static_cast<unsigned>(segs), cuda::content::kBalanceThreads, balance_smem>>>(
            cosines.as<double>(), anchor_by.as<int32_t>(), n, static_cast<int32_t>(cols), capacity, bucket_bits, keys_in.as<uint64_t>());
        SPARSA_CUDA_CHECK(cudaGetLastError());
    }

    template <typename T> void run_buckets() {
        const int64_t n = shape.n, d = shape.d;
        const dim3 grid(static_cast<unsigned>((n + 3) / 4), static_cast<unsigned>(bh));
        const size_t smem = 4 * static_cast<size_t>(d) * sizeof(float);
        SPARSA_CUDA_CHECK(cudaEventRecord(ev[0]));
        if (spec.kind == ContentKind::anchors) {
            assign_anchors<T>();
        } else {
            for (int side = 0; side < (spec.shared_qk ? 1 : 2); ++side) {   // queries, then keys when not shared
                const T* x = (side == 0 ? q : k).as<T>();
                const int64_t base = side == 0 ? 0 : segs_q;
                if constexpr (!std::is_same_v<T, float>) {
                    if (hash_tc()) {
                        if (keys32()) {
                            d == 64 ? launch_hash_tc<T, 64, uint32_t>(x, base, keys_in.as<uint32_t>()) : launch_hash_tc<T, 128, uint32_t>(x, base, keys_in.as<uint32_t>());
                        } else {
                            d == 64 ? launch_hash_tc<T, 64, uint64_t>(x, base, keys_in.as<uint64_t>()) : launch_hash_tc<T, 128, uint64_t>(x, base, keys_in.as<uint64_t>());
                        }
                        continue;
                    }
                }
                if (hash3()) {
                    if (keys32()) {
                        d == 64 ? launch_hash3<T, 64, uint32_t>(x, base, keys_in.as<uint32_t>()) : launch_hash3<T, 128, uint32_t>(x, base, keys_in.as<uint32_t>());
                    } else {
                        d == 64 ? launch_hash3<T, 64, uint64_t>(x, base, keys_in.as<uint64_t>()) : launch_hash3<T, 128, uint64_t>(x, base, keys_in.as<uint64_t>());
                    }
                } else if (version >= 2) {
                    const int smem2 = cuda::content::project2_smem(static_cast<int>(d));
                    const dim3 grid2(static_cast<unsigned>((n + 63) / 64), static_cast<unsigned>(bh));
                    const auto kernel = cuda::content::content_project2<T, cuda::content::kHash>;
                    SPARSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem2));
                    kernel<<<grid2, 128, smem2>>>(x, shape.heads, bh, n, static_cast<int32_t>(d), mats.as<float>(), static_cast<int32_t>(rounds),
                                                  static_cast<int32_t>(cols), base, bucket_bits, keys_in.as<uint64_t>(), nullptr);
                } else {
                    cuda::content::content_project<T, false><<<grid, 128, smem>>>(x, shape.heads, bh, n, static_cast<int32_t>(d), mats.as<float>(),
                                                                                 static_cast<int32_t>(rounds), static_cast<int32_t>(cols), base,
                                                                                 bucket_bits, keys_in.as<uint64_t>(), nullptr);
                }
                SPARSA_CUDA_CHECK(cudaGetLastError());
            }
        }
        size_t temp = sort_temp_bytes;
        if (keys32()) {
            SPARSA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp.as<void>(), temp, keys_in.as<uint32_t>(), keys_out.as<uint32_t>(),
                                                              values.as<int32_t>(), order.as<int32_t>(), total(), 0, key_bits));
        } else {
            SPARSA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp.as<void>(), temp, keys_in.as<uint64_t>(), keys_out.as<uint64_t>(),
                                                              values.as<int32_t>(), order.as<int32_t>(), total(), 0, key_bits));
        }
        const unsigned blocks = static_cast<unsigned>((total() + 255) / 256);
        cuda::content::content_chunk_ids<<<blocks, 256>>>(order.as<int32_t>(), chunk_of.as<int32_t>(), total(), n, static_cast<int32_t>(chunk));
        SPARSA_CUDA_CHECK(cudaGetLastError());
        if (band3<T>()) {   // the ids in sorted order, queries (and keys when not shared)
            const unsigned grid3 = static_cast<unsigned>((rounds * bh * n + 255) / 256);
            for (int side = 0; side < (spec.shared_qk ? 1 : 2); ++side) {
                const int64_t at = side * segs_q * n;
                cuda::content::content_sorted_chunks<<<grid3, 256>>>(order.as<int32_t>() + at, chunk_of.as<int32_t>() + at, static_cast<int32_t>(rounds),
                                                                    bh, n, sorted_chunk.as<int32_t>() + side * rounds * at);
            }
            SPARSA_CUDA_CHECK(cudaGetLastError());
        }
        SPARSA_CUDA_CHECK(cudaEventRecord(ev[1]));

        ContentParams<T> p = base_params<T>();
        p.q = q.as<T>();
        p.k = k.as<T>();
        p.v = v.as<T>();
        p.q_bstride = p.k_bstride = p.v_bstride = shape.heads * n * d;
        p.q_hstride = p.k_hstride = p.v_hstride = n * d;
        p.q_rows = p.k_rows = n;
        p.q_order = order.as<int32_t>();
        p.k_order = order.as<int32_t>() + (spec.shared_qk ? 0 : segs_q * n);
        p.q_chunk = chunk_of.as<int32_t>();
        p.k_chunk = chunk_of.as<int32_t>() + (spec.shared_qk ? 0 : segs_q * n);
        p.rounds = static_cast<int32_t>(rounds);
        p.chunk = static_cast<int32_t>(chunk);
        p.causal = spec.causal;
        if (has_fixed) {
            p.fixed_state = fixed_state.as<int32_t>();
            p.fixed_head = fixed_head.as<int64_t>();
            p.fixed_bits = fixed_bits.as<uint64_t>();
        }
        p.fixed_block = fixed_block;
        p.fixed_nb = fixed_nb;
        p.o_part = o_part.as<float>();
        p.lse_part = lse_part.as<float>();
        // version 2 on tensor cores: the rounds' O in T (half the bytes of the passes' writes and the merge's reads)
        const bool parts16 = version >= 2 && tensor_cores && !std::is_same_v<T, float>;
        if (parts16) p.o_part16 = o_part.as<T>();
        // version 3 without a fixed pattern: the last round's pass merges the rounds (no merge kernel)
        const bool fold = band3<T>() && !has_fixed;
        if constexpr (!std::is_same_v<T, float>) {
            if (band3<T>()) {
                p.q_sorted_chunk = sorted_chunk.as<int32_t>();
                p.k_sorted_chunk = sorted_chunk.as<int32_t>() + (spec.shared_qk ? 0 : rounds * rounds * bh * n);
                const auto launch = [&](const ContentParams<T>& pp, int64_t parts) { d == 64 ? launch_band3<T, 64>(pp, parts) : launch_band3<T, 128>(pp, parts); };
                if (fold) {
                    launch(p, rounds - 1);
                    ContentParams<T> last = p;
                    last.part_base = static_cast<int32_t>(rounds - 1);
                    last.o_final = o.as<T>();
                    last.lse_final = lse.as<float>();
                    last.self_scale = scale;
                    launch(last, 1);
                } else {
                    launch(p, rounds);
                }
            }
        }
        if (!band3<T>()) launch_pass(p, rounds);
        SPARSA_CUDA_CHECK(cudaEventRecord(ev[2]));
        const cuda::content::SelfRule self{true, spec.shared_qk, p.q_chunk, p.k_chunk, static_cast<int32_t>(rounds), scale};
        if (!fold) {
            merge<T>(o_part.as<float>(), lse_part.as<float>(), rounds, has_fixed, bh * n, self, o.as<T>(), lse.as<float>(),
                     parts16 ? o_part.as<T>() : nullptr);
        }
        SPARSA_CUDA_CHECK(cudaEventRecord(ev[3]));
    }

    // [SECTION] favor

    template <typename T> void run_favor() {
        const int64_t n = shape.n, d = shape.d, m = features, H = shape.heads;
        const cuda::content::SelfRule none{false, true, nullptr, nullptr, 0, 0};
        SPARSA_CUDA_CHECK(cudaEventRecord(ev[0]));
        SPARSA_CUDA_CHECK(cudaEventRecord(ev[1]));
        if (version >= 3 && d % (16 / static_cast<int64_t>(sizeof(T))) == 0) {
            cuda::content::favor_key_bias8<T><<<static_cast<unsigned>((bh * n * 8 + 127) / 128), 128>>>(k.as<T>(), bh * n, static_cast<int32_t>(d), scale,
                                                                                                     bias.as<float>());
        } else {
            cuda::content::favor_key_bias<T><<<static_cast<unsigned>((bh * n + 3) / 4), 128>>>(k.as<T>(), bh * n, static_cast<int32_t>(d), scale,
                                                                                                bias.as<float>());
        }
        SPARSA_CUDA_CHECK(cudaGetLastError());
        const float root = std::sqrt(scale);
        // pass 1: features (rows of omega) over the keys, split into key ranges (causal: 64-key chunks)
        ContentParams<T> p1 = base_params<T>();
        p1.scale_log2 = root * cuda::content::kLog2e;
        p1.q = omega.as<T>();
        p1.q_bstride = 0;
        p1.q_hstride = m * d;
        p1.k = k.as<T>();
        p1.v = v.as<T>();
        p1.k_bstride = p1.v_bstride = H * n * d;
        p1.k_hstride = p1.v_hstride = n * d;
        p1.q_rows = m;
        p1.k_rows = n;
        p1.key_bias = bias.as<float>();
        p1.bias_bh_stride = n;
        p1.key_split = favor_key_split();
        const int64_t splits = (n + p1.key_split - 1) / p1.key_split;
        p1.o_part = o_part.as<float>();
        p1.lse_part = lse_part.as<float>();
        // version 3, causal, 16-bit on tensor cores: the chunks' states and the query pass's O in T
        // (half the bytes the prefix and the passes move), merged inside the intra pass
        const bool fused = causal_fused<T>();
        if (fused) p1.o_part16 = o_part.as<T>();
        launch_pass(p1, splits);

        ContentParams<T> p2 = base_params<T>();
        p2.scale_log2 = root * cuda::content::kLog2e;
        p2.q = q.as<T>();
        p2.q_bstride = H * n * d;
        p2.q_hstride = n * d;
        p2.k = omega.as<T>();
        p2.k_bstride = 0;
        p2.k_hstride = m * d;
        p2.q_rows = n;
        p2.k_rows = m;
        p2.key_split = m;
        if (!spec.causal) {
            merge<T>(o_part.as<float>(), lse_part.as<float>(), splits, false, bh * m, none, o1.as<T>(), lse1.as<float>());
            p2.v = o1.as<T>();
            p2.v_bstride = H * m * d;
            p2.v_hstride = m * d;
            p2.key_bias = lse1.as<float>();
            p2.bias_bh_stride = m;
            p2.o_final = o.as<T>();
            p2.lse_part = lse.as<float>();
            launch_pass(p2, 1);
            SPARSA_CUDA_CHECK(cudaEventRecord(ev[2]));
            SPARSA_CUDA_CHECK(cudaEventRecord(ev[3]));
            return;
        }
        // causal: the exclusive prefix over chunks, each query tile against its chunk's prefix ...
        const int64_t L = causal_chunk();
        const unsigned prefix_blocks = static_cast<unsigned>((bh * m * d + 127) / 128);
        if (fused) {
            // one pass: a two-pass version (the weights once a feature, then a multiply-add a
            // column) measured slower on the H100: 0.12 + 0.98 ms against favor_prefix's 0.78;
            // favor_prefix8: the same pass with 8 columns a thread
            if (d % 8 == 0) {
                const unsigned blocks8 = static_cast<unsigned>((bh * m * (d / 8) + 127) / 128);
                cuda::content::favor_prefix8<T><<<blocks8, 128>>>(o_part.as<T>(), lse_part.as<float>(), splits, bh, m, static_cast<int32_t>(d),
                                                                  prefix_v.as<T>(), prefix_lse.as<float>());
            } else {
                cuda::content::favor_prefix<T, T><<<prefix_blocks, 128>>>(o_part.as<T>(), lse_part.as<float>(), splits, bh, m, static_cast<int32_t>(d),
                                                                           prefix_v.as<T>(), prefix_lse.as<float>());
            }
        } else {
            cuda::content::favor_prefix<T, float><<<prefix_blocks, 128>>>(o_part.as<float>(), lse_part.as<float>(), splits, bh, m,
                                                                           static_cast<int32_t>(d), prefix_v.as<T>(), prefix_lse.as<float>());
        }
        SPARSA_CUDA_CHECK(cudaGetLastError());
        p2.v = prefix_v.as<T>();
        p2.v_bstride = H * splits * m * d;
        p2.v_hstride = splits * m * d;
        p2.v_tile_stride = m * d;
        p2.tile_shift = L == 128 ? 1 : 0;
        p2.key_bias = prefix_lse.as<float>();
        p2.bias_bh_stride = splits * m;
        p2.bias_tile_stride = m;
        p2.o_part = o_part2.as<float>();
        p2.lse_part = lse_part2.as<float>();
        if (fused) p2.o_part16 = o_part2.as<T>();
        launch_pass(p2, 1);
        // ... and inside each chunk the explicit products phi(q) . phi(k), k <= q
        if (intra_on_tensor_cores()) {
            if constexpr (!std::is_same_v<T, float>) {
                const int smem = d == 64 ? cuda::content::phi_tc_smem<64>(static_cast<int>(m)) : cuda::content::phi_tc_smem<128>(static_cast<int>(m));
                const auto phi_kernel = d == 64 ? cuda::content::favor_phi_tc<T, 64> : cuda::content::favor_phi_tc<T, 128>;
                SPARSA_CUDA_CHECK(cudaFuncSetAttribute(phi_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
                const dim3 grid(static_cast<unsigned>((n + 63) / 64), static_cast<unsigned>(bh), 2);
                const cuda::content::PhiSide<T> queries{q.as<T>(), 0.f, phi_q.as<T>(), c_q.as<float>()};
                const cuda::content::PhiSide<T> keys{k.as<T>(), 0.5f * scale, phi_k.as<T>(), c_k.as<float>()};
                phi_kernel<<<grid, 128, smem>>>(queries, keys, omega.as<T>(), H, n, m, root);
                SPARSA_CUDA_CHECK(cudaGetLastError());
                ContentParams<T> pi = base_params<T>();
                pi.q = phi_q.as<T>();
                pi.k = phi_k.as<T>();
                pi.q_bstride = pi.k_bstride = H * n * m;
                pi.q_hstride = pi.k_hstride = n * m;
                pi.v = v.as<T>();
                pi.v_bstride = H * n * d;
                pi.v_hstride = n * d;
                pi.q_rows = pi.k_rows = n;
                pi.chunk = static_cast<int32_t>(L);
                pi.key_bias = c_k.as<float>();
                pi.bias_bh_stride = n;
                pi.query_bias = c_q.as<float>();
                pi.o_part = o_part2.as<float>() + bh * n * d;
                pi.lse_part = lse_part2.as<float>() + bh * n;
                if (fused) {
                    pi.prev_o16 = o_part2.as<T>();
                    pi.prev_lse = lse_part2.as<float>();
                    pi.o_final = o.as<T>();
                    pi.lse_part = lse.as<float>();
                }
                constexpr int kIntra = cuda::content::kIntra;
                if (d == 64) {
                    m == 64 ? launch_tc2<T, 64, 64, 64, kIntra>(pi, 1) : m == 128 ? launch_tc2<T, 128, 64, 64, kIntra>(pi, 1) : launch_tc2<T, 256, 64, 64, kIntra>(pi, 1);
                } else {
                    m == 64 ? launch_tc2<T, 64, 128, 64, kIntra>(pi, 1) : m == 128 ? launch_tc2<T, 128, 128, 64, kIntra>(pi, 1) : launch_tc2<T, 256, 128, 64, kIntra>(pi, 1);
                }
            }
        } else {
            const dim3 grid(static_cast<unsigned>((n + 3) / 4), static_cast<unsigned>(bh));
            const size_t smem = 4 * static_cast<size_t>(d) * sizeof(float);
            cuda::content::favor_phi<T><<<grid, 128, smem>>>(q.as<T>(), omega.as<T>(), H, n, static_cast<int32_t>(d), m, scale, false, phi_q.as<float>(), c_q.as<float>());
            cuda::content::favor_phi<T><<<grid, 128, smem>>>(k.as<T>(), omega.as<T>(), H, n, static_cast<int32_t>(d), m, scale, true, phi_k.as<float>(), c_k.as<float>());
            cuda::content::favor_intra<T><<<grid, 128>>>(phi_q.as<float>(), c_q.as<float>(), phi_k.as<float>(), c_k.as<float>(), v.as<T>(), n,
                                                         static_cast<int32_t>(d), m, L, o_part2.as<float>() + bh * n * d, lse_part2.as<float>() + bh * n);
        }
        SPARSA_CUDA_CHECK(cudaGetLastError());
        SPARSA_CUDA_CHECK(cudaEventRecord(ev[2]));
        if (!fused) merge<T>(o_part2.as<float>(), lse_part2.as<float>(), 2, false, bh * n, none, o.as<T>(), lse.as<float>());
        SPARSA_CUDA_CHECK(cudaEventRecord(ev[3]));
    }

    // Version 3 of causal FAVOR+ (16-bit, tensor cores): parts in T and the merge inside the intra
    // pass. Nsight Compute on the H100 (n = 65,536, m = 256, d = 128, version 2): the float32
    // chunk states were 1 GB written by the key pass and read by the prefix, and the merge kernel
    // 0.49 of 9.1 ms.
    template <typename T> bool causal_fused() const {
        return version >= 3 && spec.causal && intra_on_tensor_cores() && !std::is_same_v<T, float>;
    }

    // FAVOR+'s key and query passes on content_dense3: version 3, tensor cores, 16-bit, d = 64 or 128.
    bool dense3() const { return version >= 3 && tensor_cores && dtype != CudaDtype::float32 && (shape.d == 64 || shape.d == 128); }

    // Causal FAVOR+'s chunk of keys per prefix step: version 1 64, version 2 128 (half the
    // partial results and prefix states, the tensor-core product inside the chunk cheap enough).
    int64_t causal_chunk() const { return version >= 2 ? 128 : 64; }

    // Causal FAVOR+'s products inside a chunk on tensor cores: version 2, bf16 / fp16, d = 64 or
    // 128, m = 64, 128 or 256 (else one warp a row on float32 cores).
    bool intra_on_tensor_cores() const {
        return version >= 2 && tensor_cores && (features == 64 || features == 128 || features == 256);
    }

    // Keys per split of FAVOR+'s key pass: causal 64 (the prefix's chunks); else enough splits
    // that the feature tiles times splits fill the GPU about four times over.
    // Version 3 (content_dense3, whose blocks walk their keys with the copies overlapped): as many
    // splits as fit the GPU's resident blocks in one wave (one an SM: its 256 threads' registers),
    // rounded down, so no block waits for a second wave.
    int64_t favor_key_split() const {
        if (spec.causal) return causal_chunk();
        int64_t splits;
        if (dense3()) {
            const int64_t rows = 16 * kDense3Warps, tiles = (features + rows - 1) / rows * bh;
            splits = std::max<int64_t>(1, int64_t{sm_count} / tiles);
        } else {
            const int64_t tiles = (features + 63) / 64 * bh;
            splits = (4 * int64_t{sm_count} + tiles - 1) / tiles;
        }
        splits = std::clamp<int64_t>(splits, 1, (shape.n + 63) / 64);
        return ((shape.n + splits - 1) / splits + 63) / 64 * 64;
    }

    int32_t fixed_block = 64;
    int64_t fixed_nb = 0;

    // Per head, the fixed mask's blocks as a dense [nb, nb] table (-2 none, -1 full, else its
    // partial's index), so a round's pass can leave out the pairs the fixed pass holds.
    void upload_fixed(const MaskSet& masks, int64_t layer) {
        fixed_block = masks.block;
        fixed_nb = (masks.n + masks.block - 1) / masks.block;
        std::vector<int32_t> state;
        std::vector<int64_t> head(static_cast<size_t>(masks.heads), -1);
        std::vector<uint64_t> bits;
        for (int64_t h = 0; h < masks.heads; ++h) {
            const BlockMask& m = masks.at(layer, h);
            if (m.row_ptr.back() == 0) continue;
            head[static_cast<size_t>(h)] = static_cast<int64_t>(state.size());
            const size_t base = state.size();
            state.resize(base + static_cast<size_t>(fixed_nb * fixed_nb), -2);
            const int64_t words = m.words_per_block(), first = static_cast<int64_t>(bits.size()) / words;
            bits.insert(bits.end(), m.bits.begin(), m.bits.end());
            for (int64_t qb = 0; qb < fixed_nb; ++qb) {
                for (int64_t e = m.row_ptr[static_cast<size_t>(qb)]; e < m.row_ptr[static_cast<size_t>(qb + 1)]; ++e) {
                    const int32_t part = m.partial_idx[static_cast<size_t>(e)];
                    state[base + static_cast<size_t>(qb * fixed_nb + m.col_idx[static_cast<size_t>(e)])] =
                        part < 0 ? -1 : static_cast<int32_t>(first + part);
                }
            }
        }
        fixed_state.upload(state);
        fixed_head.upload(head);
        fixed_bits.upload(bits);
    }
};

} // namespace sparsa
