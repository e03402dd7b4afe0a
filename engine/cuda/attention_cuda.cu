// Host side of the CUDA engine: checks the call, uploads tensors and the masks of one layer,
// turns the runtime dtype / head dim / mask block into template parameters in one switch
// (launch_kernel), and launches attn_fwd_kernel<N> from attn_fwd_kernels.cuh.
#include "engine/cuda/attention_cuda.hpp"

#include "engine/cuda/attn_fwd_kernels.cuh"
#include "engine/cuda/cuda_host.hpp"
#include "engine/cuda/layer_masks_impl.hpp"
#include "engine/error.hpp"
#include "engine/reference.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

namespace sparsa {

using namespace cuda_host;

const char* cuda_dtype_name(CudaDtype dtype) {
    switch (dtype) {
    case CudaDtype::float32: return "float32";
    case CudaDtype::bfloat16: return "bf16";
    case CudaDtype::float16: return "fp16";
    }
    return "?";
}

bool cuda_device_available(std::string* why) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        if (why != nullptr) *why = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(err);
        cudaGetLastError();   // clear it
        return false;
    }
    if (count == 0) {
        if (why != nullptr) *why = "cudaGetDeviceCount found no CUDA device";
        return false;
    }
    return true;
}

std::string cuda_device_name() {
    std::string why;
    if (!cuda_device_available(&why)) throw Error("CUDA engine: no GPU (" + why + ")");
    cudaDeviceProp prop{};
    SPARSA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    return prop.name;
}

int cuda_kernel_count() { return 19; }

bool cuda_device_has_wgmma() {   // cached: the device does not change while the program runs
    static const bool has = [] {
        if (!cuda_device_available()) return false;
        cudaDeviceProp prop{};
        if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return false;
        return prop.major == 9 && prop.minor == 0;   // sm_90a machine code runs on 9.0 alone
    }();
    return has;
}

bool cuda_kernel_supports(int kernel, CudaDtype dtype, int64_t d, int32_t block) {
    if (kernel == 1) return d >= 1 && d <= 32 * cuda::kKernel1MaxChunks && block_size_valid(block);
    const bool tensor_core_shape =
        dtype != CudaDtype::float32 && (d == 64 || d == 128) && (block == 64 || block == 128 || block == 256);
    if (kernel >= 2 && kernel <= 9) return tensor_core_shape;
    if (kernel >= 10 && kernel <= 19) return tensor_core_shape && cuda_device_has_wgmma();
    return false;
}

namespace {

// The 64-key tiles each 128-query tile visits (the union of its two 64-token mask rows), over
// every head of the layer: the steps of kernels 7, 12 and 17 (twice those of 18 and 19).
std::vector<int64_t> steps_of_128_tiles(const MaskSet& masks, int64_t layer) {
    std::vector<int64_t> steps;
    for (int64_t h = 0; h < masks.heads; ++h) {
        const BlockMask& m = masks.at(layer, h);
        const int64_t q_count = m.q_blocks();
        for (int64_t t = 0; t * 128 < m.n; ++t) {
            const int64_t qa = t * 128 / m.block, qb = (t * 128 + 64) / m.block;
            int64_t ea = m.row_ptr[static_cast<size_t>(qa)], count = 0;
            const int64_t a_end = m.row_ptr[static_cast<size_t>(qa + 1)];
            if (qb == qa || qb >= q_count) {
                steps.push_back(a_end - ea);
                continue;
            }
            int64_t eb = m.row_ptr[static_cast<size_t>(qb)];
            const int64_t b_end = m.row_ptr[static_cast<size_t>(qb + 1)];
            for (; ea < a_end || eb < b_end; ++count) {
                const int32_t a = ea < a_end ? m.col_idx[static_cast<size_t>(ea)] : INT32_MAX;
                const int32_t b = eb < b_end ? m.col_idx[static_cast<size_t>(eb)] : INT32_MAX;
                if (a <= b) ++ea;
                if (b <= a) ++eb;
            }
            steps.push_back(count);
        }
    }
    return steps;
}

// Kernel 0 with bf16 / fp16 without wgmma: a 128-query kernel or
// a 64-query one, whichever the count of key-tile steps predicts faster. A 128-row tile
// visits the union of its two 64-token mask rows; a step of it costs about 2 * r64 / r128 of
// a 64-row step, r the dense rates at n = 16,384, d = 128 on the H200: 7 (307) against 9
// (kernel 5: 264).
int kernel_by_steps(const MaskSet& masks, int64_t layer) {
    int64_t steps64 = 0;
    for (int64_t h = 0; h < masks.heads; ++h) {
        const BlockMask& m = masks.at(layer, h);
        auto kept = [&](int64_t q) { return m.row_ptr[static_cast<size_t>(q + 1)] - m.row_ptr[static_cast<size_t>(q)]; };
        for (int64_t t = 0; t * 64 < m.n; ++t) steps64 += kept(t * 64 / m.block);
    }
    int64_t steps128 = 0;
    for (int64_t s : steps_of_128_tiles(masks, layer)) steps128 += s;
    const double s128 = static_cast<double>(steps128), s64 = static_cast<double>(steps64);
    return s128 * (2 * 264.0 / 307.0) < s64 ? 7 : 9;   // a 128-row step in 64-row steps
}

// Kernel 0 with wgmma (compute capability 9.0), from the crossover of 15, 18 and 19 on the H100
// (bf16, d = 128, blocks of 64; bench/results/cuda-nvidia-h100-80gb-hbm3-crossover.md, 2026-12-08,
// 19 claiming its items from a counter):
// 15 (64-row tiles, three blocks an SM) where the median 128-row tile visits under 16 key tiles
// (window(256): 10, 15 level with 19 and 25% ahead of 18; BigBird 64 at 65,536: 15 8% ahead of 19,
// bench/results/cuda-nvidia-h100-80gb-hbm3-training.md);
// 18 where the tiles' lengths spread (the 90th percentile over twice the 10th: causal, 17% ahead
// of 15 and 2.5% of 19); else 19 (dense 4,096 to 32,768, windows of 512 to 4,096: 2 to 24% ahead
// of 15, level with 18 or up to 14% ahead, 2.5% behind it on dense 4,096). Other head widths and
// blocks, not measured for 18 and 19: 15, the fastest of 7 to 15 on every benchmark mask at
// d = 128 on the H200 (bench/cuda-notes.md).
int kernel_with_wgmma(const MaskSet& masks, int64_t layer, int64_t d) {
    if (d != 128 || masks.block != 64) return 15;
    std::vector<int64_t> steps = steps_of_128_tiles(masks, layer);
    if (steps.empty()) return 15;
    std::sort(steps.begin(), steps.end());
    const auto at = [&](double share) { return steps[static_cast<size_t>(share * static_cast<double>(steps.size() - 1))]; };
    if (at(0.5) < 16) return 15;
    return at(0.9) > 2 * at(0.1) ? 18 : 19;
}

} // namespace

int cuda_auto_kernel(const MaskSet& masks, int64_t layer, CudaDtype dtype, int64_t d, bool wgmma) {
    if (!cuda_kernel_supports(2, dtype, d, masks.block)) return 1;   // 2 to 9 share their shapes; 10 to 19 add wgmma
    return wgmma ? kernel_with_wgmma(masks, layer, d) : kernel_by_steps(masks, layer);
}

void cuda_attention_check(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks, int64_t layer,
                          const CudaAttentionOptions& options) {
    const std::string what = "cuda attention_forward";
    attention_check_shapes(what, q.shape, k.shape, v.shape, masks, layer);
    const double scale = attention_scale(what, options.scale, q.shape.d);
    tensor_check_finite(q, "Q");
    tensor_check_finite(k, "K");
    tensor_check_finite(v, "V");
    tensor_check_dtype_range(what, q, "Q", options.dtype);
    tensor_check_dtype_range(what, k, "K", options.dtype);
    tensor_check_dtype_range(what, v, "V", options.dtype);
    // Kernel 0 picks a tensor-core kernel exactly where kernel 2 runs (prepare): for bf16 and fp16
    // with d = 64 or 128 and blocks of 64 or more.
    const bool tensor_cores = options.kernel == 0 ? cuda_kernel_supports(2, options.dtype, q.shape.d, masks.block)
                                                  : options.kernel >= 2;
    attention_check_score_range(what, tensor_row_norms(q), tensor_row_norms(k), scale,
                                tensor_cores ? ScoreEngine::cuda_tensor_cores : ScoreEngine::cuda);
}

Tensor tensor_round_to(const Tensor& x, CudaDtype dtype) {
    Tensor out = x;
    if (dtype == CudaDtype::float32) return out;
    for (float& e : out.data) e = dtype == CudaDtype::bfloat16 ? bf16_value(bf16_bits(e)) : fp16_value(fp16_bits(e));
    return out;
}

struct CudaAttention::Impl {
    DeviceBuffer q, k, v, o, lse, row_ptr, col_idx, partial_idx, bits, head_mask, tile_order;
    DeviceBuffer work, splits, partial_o, partial_ml;   // kernels 7 to 16
    DeviceBuffer work_counter;                           // kernel 13: one int; 19: one a batch index
    int64_t work_items = 0, split_tiles = 0;
    int32_t slots = 0;
    int sm_count = 0;
    int64_t split_steps = 0;         // CudaAttentionOptions::split_steps
    int64_t persistent_blocks = 0;   // CudaAttentionOptions::persistent_blocks
    TensorShape shape;
    CudaDtype dtype = CudaDtype::bfloat16;
    int kernel = 0;
    int32_t block = 64;
    int64_t q_blocks = 0;
    float scale_log2 = 0;
    bool prepared = false;
    cudaEvent_t start = nullptr, stop = nullptr;
    // CudaLayerMasks (attention_cuda_device.hpp): the caller's tensors and stream instead of the
    // buffers above; nullptr: the buffers, the default stream
    const void *q_ptr = nullptr, *k_ptr = nullptr, *v_ptr = nullptr;
    const int32_t* col_idx_ptr = nullptr;   // CudaLayerMasks::forward with columns: the caller's col_idx
    void* o_ptr = nullptr;
    float* lse_ptr = nullptr;
    cudaStream_t stream = nullptr;

    template <typename T> cuda::AttnParams<T> params() const {
        cuda::AttnParams<T> p{};
        p.q = static_cast<const T*>(q_ptr != nullptr ? q_ptr : q.get());
        p.k = static_cast<const T*>(k_ptr != nullptr ? k_ptr : k.get());
        p.v = static_cast<const T*>(v_ptr != nullptr ? v_ptr : v.get());
        p.o = static_cast<T*>(o_ptr != nullptr ? o_ptr : o.get());
        p.lse = lse_ptr != nullptr ? lse_ptr : static_cast<float*>(lse.get());
        p.stream = stream;
        p.batch = shape.batch;
        p.heads = shape.heads;
        p.n = shape.n;
        p.d = static_cast<int32_t>(shape.d);
        p.scale_log2 = scale_log2;
        p.masks = {static_cast<const int64_t*>(row_ptr.get()),
                   col_idx_ptr != nullptr ? col_idx_ptr : static_cast<const int32_t*>(col_idx.get()),
                   static_cast<const int32_t*>(partial_idx.get()), static_cast<const uint64_t*>(bits.get()),
                   static_cast<const int32_t*>(head_mask.get()), static_cast<const int32_t*>(tile_order.get()),
                   block, q_blocks, static_cast<const cuda::WorkItem*>(work.get()),
                   static_cast<const cuda::SplitTile*>(splits.get())};
        p.partial_o = static_cast<float*>(partial_o.get());
        p.partial_ml = static_cast<float*>(partial_ml.get());
        p.slots = slots;
        p.work_items = work_items;
        p.work_counter = static_cast<int*>(work_counter.get());
        return p;
    }

    template <typename T, int D, int B> void launch_tensor_core() const {
        const cuda::AttnParams<T> p = params<T>();
        const unsigned tiles = static_cast<unsigned>((shape.n + 63) / 64);
        const dim3 grid(tiles, static_cast<unsigned>(shape.heads), static_cast<unsigned>(shape.batch));
        if (kernel == 5 || kernel == 6) {
            launch_tensor_core32<T, D, B>();
            return;
        }
        if (kernel >= 7) {
            launch_split<T, D, B>();
            return;
        }
        if (kernel == 4) {
            constexpr int smem = cuda::AttnTraits<D, B, 1>::kSmemBytes;
            SPARSA_CUDA_CHECK(cudaFuncSetAttribute(cuda::attn_fwd_kernel4<T, D, B>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            const dim3 grid4(static_cast<unsigned>(shape.heads) * tiles, 1, static_cast<unsigned>(shape.batch));
            cuda::attn_fwd_kernel4<T, D, B><<<grid4, 128, smem, p.stream>>>(p);
        } else if (kernel == 2) {
            constexpr int smem = cuda::AttnTraits<D, B, 1>::kSmemBytes;
            SPARSA_CUDA_CHECK(cudaFuncSetAttribute(cuda::attn_fwd_kernel2<T, D, B>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            cuda::attn_fwd_kernel2<T, D, B><<<grid, 128, smem, p.stream>>>(p);
        } else {
            constexpr int smem = cuda::AttnTraits<D, B, 2>::kSmemBytes;
            SPARSA_CUDA_CHECK(cudaFuncSetAttribute(cuda::attn_fwd_kernel3<T, D, B>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            cuda::attn_fwd_kernel3<T, D, B><<<grid, 128, smem, p.stream>>>(p);
        }
        SPARSA_CUDA_CHECK(cudaGetLastError());
    }

    // Kernels 5 and 6: 32 rows a warp, 64- or 128-query tiles in the order of tile_order.
    template <typename T, int D, int B> void launch_tensor_core32() const {
        const cuda::AttnParams<T> p = params<T>();
        const unsigned tiles = static_cast<unsigned>((shape.n + tile_rows() - 1) / tile_rows());
        const dim3 grid(static_cast<unsigned>(shape.heads) * tiles, 1, static_cast<unsigned>(shape.batch));
        if (kernel == 5) {
            constexpr int smem = cuda::AttnTraits32<D, B, 2>::kSmemBytes;
            SPARSA_CUDA_CHECK(cudaFuncSetAttribute(cuda::attn_fwd_kernel5<T, D, B>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            cuda::attn_fwd_kernel5<T, D, B><<<grid, 64, smem, p.stream>>>(p);
        } else {
            constexpr int smem = cuda::AttnTraits32<D, B, 4>::kSmemBytes;
            SPARSA_CUDA_CHECK(cudaFuncSetAttribute(cuda::attn_fwd_kernel6<T, D, B>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            cuda::attn_fwd_kernel6<T, D, B><<<grid, 128, smem, p.stream>>>(p);
        }
        SPARSA_CUDA_CHECK(cudaGetLastError());
    }

    // Kernels 7 to 19: the work items, then attn_combine over the split tiles.
    template <typename T, int D, int B> void launch_split() const {
        const cuda::AttnParams<T> p = params<T>();
        const dim3 grid(static_cast<unsigned>(work_items), 1, static_cast<unsigned>(shape.batch));
        // attn_combine: a block for each 128 / D rows of a split tile
        const auto combine_grid = [&](int tile_q) {
            return dim3(static_cast<unsigned>(split_tiles), static_cast<unsigned>(tile_q / (128 / D)),
                        static_cast<unsigned>(shape.batch));
        };
        if (kernel == 10 || kernel == 13 || kernel == 14 || kernel == 15 || kernel == 16) {
            if (kernel == 10) SPARSA_CUDA_CHECK((cuda::attn_fwd_wgmma_launch<T, D, B, 10>(p, work_items, shape.batch)));
            else if (kernel == 13) SPARSA_CUDA_CHECK((cuda::attn_fwd_wgmma_launch<T, D, B, 13>(p, work_items, shape.batch, persistent_blocks)));
            else if (kernel == 14) SPARSA_CUDA_CHECK((cuda::attn_fwd_wgmma_launch<T, D, B, 14>(p, work_items, shape.batch)));
            else if (kernel == 15) SPARSA_CUDA_CHECK((cuda::attn_fwd_wgmma_launch<T, D, B, 15>(p, work_items, shape.batch)));
            else SPARSA_CUDA_CHECK((cuda::attn_fwd_wgmma_launch<T, D, B, 16>(p, work_items, shape.batch)));
            if (split_tiles > 0) cuda::attn_combine<T, D, 64><<<combine_grid(64), 128, 0, p.stream>>>(p);
        } else if (kernel == 11 || kernel == 12 || kernel >= 17) {
            if (kernel == 11) SPARSA_CUDA_CHECK((cuda::attn_fwd_wgmma_launch<T, D, B, 11>(p, work_items, shape.batch)));
            else if (kernel == 12) SPARSA_CUDA_CHECK((cuda::attn_fwd_wgmma_launch<T, D, B, 12>(p, work_items, shape.batch)));
            else if (kernel == 17) SPARSA_CUDA_CHECK((cuda::attn_fwd_ws_launch<T, D, B, 17>(p, work_items, shape.batch)));
            else if (kernel == 18) SPARSA_CUDA_CHECK((cuda::attn_fwd_ws_launch<T, D, B, 18>(p, work_items, shape.batch)));
            else SPARSA_CUDA_CHECK((cuda::attn_fwd_ws_launch<T, D, B, 19>(p, work_items, shape.batch, persistent_blocks)));
            if (split_tiles > 0) cuda::attn_combine<T, D, 128><<<combine_grid(128), 128, 0, p.stream>>>(p);
        } else if (kernel == 7) {
            constexpr int smem = cuda::AttnTraits32<D, B, 4>::kSmemBytes;
            SPARSA_CUDA_CHECK(cudaFuncSetAttribute(cuda::attn_fwd_kernel7<T, D, B>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            cuda::attn_fwd_kernel7<T, D, B><<<grid, 128, smem, p.stream>>>(p);
            SPARSA_CUDA_CHECK(cudaGetLastError());
            if (split_tiles > 0) cuda::attn_combine<T, D, 128><<<combine_grid(128), 128, 0, p.stream>>>(p);
        } else {
            constexpr int smem = cuda::AttnTraits32<D, B, 2>::kSmemBytes;
            auto* kernel_fn = kernel == 8 ? cuda::attn_fwd_kernel8<T, D, B> : cuda::attn_fwd_kernel9<T, D, B>;
            SPARSA_CUDA_CHECK(cudaFuncSetAttribute(kernel_fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            kernel_fn<<<grid, 64, smem, p.stream>>>(p);
            SPARSA_CUDA_CHECK(cudaGetLastError());
            if (split_tiles > 0) cuda::attn_combine<T, D, 64><<<combine_grid(64), 128, 0, p.stream>>>(p);
        }
        SPARSA_CUDA_CHECK(cudaGetLastError());
    }

    // Query rows of a thread block of the chosen kernel (1: unused; 6, 7, 11, 12, 17 to 19: 128; else 64).
    int64_t tile_rows() const {
        return kernel == 6 || kernel == 7 || kernel == 11 || kernel == 12 || kernel >= 17 ? 128 : 64;
    }

    // The one switch: runtime dtype, head dim and mask block become template parameters.
    void launch_kernel() const {
        auto with_type = [&](auto type_tag) {
            using T = decltype(type_tag);
            if (kernel == 1) {
                const dim3 grid(static_cast<unsigned>((shape.n + cuda::kKernel1Warps - 1) / cuda::kKernel1Warps),
                                static_cast<unsigned>(shape.heads), static_cast<unsigned>(shape.batch));
                cuda::attn_fwd_kernel1<T><<<grid, 32 * cuda::kKernel1Warps, 0, stream>>>(params<T>());
                SPARSA_CUDA_CHECK(cudaGetLastError());
                return;
            }
            if constexpr (!std::is_same_v<T, float>) {
                with_tensor_core_shape(shape.d, block, [&](auto d_tag, auto b_tag) {
                    launch_tensor_core<T, decltype(d_tag)::value, decltype(b_tag)::value>();
                });
            }
        };
        with_dtype(dtype, with_type);
    }

    // Kernels 7 to 16's work items: every (head, query tile) with the number of key tiles it visits
    // (the union of its mask rows' kept blocks, as the kernel's KeyCursor walks them); a tile
    // that visits more than `cap` is cut into chunks of at most cap, each a work item with the
    // cursor state it starts from and a workspace slot. cap: a quarter of the average work of a
    // thread block slot when every SM holds 2 (at least 64 steps), so the longest chunk is no
    // longer than a small part of the whole. Launch order: by the power of two of the steps,
    // largest first, then head by head, later tiles first.
    void plan_work(const MaskSet& masks, int64_t layer, const std::vector<int32_t>& heads_index,
                   const std::vector<int64_t>& unique_base, const std::vector<int32_t>& ci) {
        struct Cursor {
            int64_t ea, eb, a_end, b_end;
            int32_t sub;
        };
        const int32_t B = masks.block, sub_tiles = B / 64;
        const int64_t rows = tile_rows(), tiles = (masks.n + rows - 1) / rows, q_count = (masks.n + B - 1) / B;
        auto col = [&](int64_t e, int64_t end) { return e < end ? ci[static_cast<size_t>(e)] : INT32_MAX; };
        auto advance = [&](Cursor& c) {
            if (++c.sub < sub_tiles) return;
            c.sub = 0;
            const int32_t a = col(c.ea, c.a_end), b = col(c.eb, c.b_end), m = std::min(a, b);
            if (a == m) ++c.ea;
            if (b == m) ++c.eb;
        };
        std::vector<Cursor> starts;
        std::vector<int64_t> steps;
        std::vector<int32_t> pairs;
        int64_t total = 0;
        for (int64_t h = 0; h < masks.heads; ++h) {
            const BlockMask& m = masks.at(layer, h);
            const int64_t base = unique_base[static_cast<size_t>(heads_index[static_cast<size_t>(h)])];
            for (int64_t t = tiles - 1; t >= 0; --t) {
                const int64_t qa = t * rows / B, qb = (t * rows + 64) / B;
                const bool two = rows > 64 && qb != qa && qb < q_count;   // as the kernel's two_rows
                const auto rp = [&](int64_t q) { return base + m.row_ptr[static_cast<size_t>(q)]; };
                Cursor c{rp(qa), two ? rp(qb) : 0, rp(qa + 1), two ? rp(qb + 1) : 0, 0};
                int64_t unique = 0;   // blocks in the union of the two rows
                for (int64_t ea = c.ea, eb = c.eb; ea < c.a_end || eb < c.b_end; ++unique) {
                    const int32_t a = col(ea, c.a_end), b = col(eb, c.b_end), mn = std::min(a, b);
                    if (a == mn) ++ea;
                    if (b == mn) ++eb;
                }
                starts.push_back(c);
                steps.push_back(unique * sub_tiles);
                pairs.push_back(static_cast<int32_t>(h * tiles + t));
                total += unique * sub_tiles;
            }
        }
        if (sm_count == 0) SPARSA_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, 0));
        const int64_t cap = split_steps > 0 ? split_steps : std::max<int64_t>(64, total / (4 * 2 * int64_t{sm_count}));
        std::vector<cuda::WorkItem> items;
        std::vector<cuda::SplitTile> split;
        int32_t slot = 0;
        for (size_t i = 0; i < pairs.size(); ++i) {
            Cursor c = starts[i];
            if (steps[i] <= cap) {
                items.push_back({c.ea, c.eb, pairs[i], c.sub, static_cast<int32_t>(steps[i]), -1});
                continue;
            }
            const int64_t chunks = (steps[i] + cap - 1) / cap, len = (steps[i] + chunks - 1) / chunks;
            split.push_back({pairs[i], slot, static_cast<int32_t>(chunks)});
            for (int64_t done = 0; done < steps[i]; done += len) {
                const int64_t this_len = std::min(len, steps[i] - done);
                items.push_back({c.ea, c.eb, pairs[i], c.sub, static_cast<int32_t>(this_len), slot++});
                for (int64_t s = 0; s < this_len; ++s) advance(c);
            }
        }
        std::vector<size_t> rank(items.size());
        for (size_t i = 0; i < rank.size(); ++i) rank[i] = i;
        std::stable_sort(rank.begin(), rank.end(), [&](size_t a, size_t b) {
            return std::bit_width(static_cast<uint64_t>(items[a].steps)) > std::bit_width(static_cast<uint64_t>(items[b].steps));
        });
        std::vector<cuda::WorkItem> sorted(items.size());
        for (size_t i = 0; i < rank.size(); ++i) sorted[i] = items[rank[i]];
        work.upload(sorted);
        splits.upload(split);
        work_items = static_cast<int64_t>(sorted.size());
        split_tiles = static_cast<int64_t>(split.size());
        slots = slot;
        const size_t slot_rows = static_cast<size_t>(shape.batch) * static_cast<size_t>(slot) * static_cast<size_t>(rows);
        partial_o.reserve(slot_rows * static_cast<size_t>(shape.d) * sizeof(float));
        partial_ml.reserve(slot_rows * 2 * sizeof(float));
    }

    void configure(const MaskSet& masks, int64_t layer, const TensorShape& shape_in, const CudaAttentionOptions& options);

    // The distinct masks of `layer` in the order heads first use them, concatenated as in the
    // .npz file; head_mask[h] says which one head h uses.
    void upload_masks(const MaskSet& masks, int64_t layer) {
        std::map<const BlockMask*, int32_t> index;
        std::vector<int32_t> heads_index;
        std::vector<int64_t> unique_base;   // where each unique mask's entries start in col_idx
        std::vector<int64_t> rp;
        std::vector<int32_t> ci, pi;
        std::vector<uint64_t> bw;
        for (int64_t h = 0; h < masks.heads; ++h) {
            const BlockMask& m = masks.at(layer, h);
            auto [it, fresh] = index.emplace(&m, static_cast<int32_t>(index.size()));
            heads_index.push_back(it->second);
            if (!fresh) continue;
            const int64_t base = static_cast<int64_t>(ci.size());
            unique_base.push_back(base);
            const int32_t partial_base = static_cast<int32_t>(bw.size() / static_cast<size_t>(m.words_per_block()));
            for (int64_t r : m.row_ptr) rp.push_back(base + r);
            ci.insert(ci.end(), m.col_idx.begin(), m.col_idx.end());
            for (int32_t p : m.partial_idx) pi.push_back(p < 0 ? -1 : partial_base + p);
            bw.insert(bw.end(), m.bits.begin(), m.bits.end());
        }
        // kernels 4 to 6's launch order of (head, query tile of tile_rows()): by the power of two of
        // the kept blocks of the tile's mask rows, largest first; then head by head, later tiles
        // first (as kernels 2 and 3 run them).
        const int64_t rows = tile_rows(), tiles = (masks.n + rows - 1) / rows;
        std::vector<int32_t> order;
        std::vector<int> bucket;
        for (int64_t h = 0; h < masks.heads; ++h) {
            const BlockMask& m = masks.at(layer, h);
            for (int64_t t = tiles - 1; t >= 0; --t) {
                const int64_t first = t * rows / m.block, last = std::min((t * rows + rows - 1) / m.block, m.q_blocks() - 1);
                const auto kept = static_cast<uint64_t>(m.row_ptr[static_cast<size_t>(last + 1)] - m.row_ptr[static_cast<size_t>(first)]);
                order.push_back(static_cast<int32_t>(h * tiles + t));
                bucket.push_back(std::bit_width(kept));
            }
        }
        std::vector<size_t> rank(order.size());
        for (size_t i = 0; i < rank.size(); ++i) rank[i] = i;
        std::stable_sort(rank.begin(), rank.end(), [&](size_t a, size_t b) { return bucket[a] > bucket[b]; });
        std::vector<int32_t> sorted(order.size());
        for (size_t i = 0; i < rank.size(); ++i) sorted[i] = order[rank[i]];
        if (kernel >= 7) plan_work(masks, layer, heads_index, unique_base, ci);
        row_ptr.upload(rp);
        col_idx.upload(ci);
        partial_idx.upload(pi);
        bits.upload(bw);
        head_mask.upload(heads_index);
        tile_order.upload(sorted);
    }
};

// The kernel, the state of the call and the masks on the device (upload_masks), for `shape`.
// The kernel, the state of the call and the masks on the device (upload_masks), for `shape_in`.
void CudaAttention::Impl::configure(const MaskSet& masks, int64_t layer, const TensorShape& shape_in,
                                    const CudaAttentionOptions& options) {
    const int64_t d = shape_in.d;
    int kernel = options.kernel;
    if (kernel == 0) kernel = cuda_auto_kernel(masks, layer, options.dtype, d, cuda_device_has_wgmma());
    if (!cuda_kernel_supports(kernel, options.dtype, d, masks.block)) {
        throw Error("cuda attention_forward: kernel " + std::to_string(kernel) + " does not run dtype " +
                    cuda_dtype_name(options.dtype) + " with d = " + std::to_string(d) + " and mask block " +
                    std::to_string(masks.block) +
                    " (kernels 2 to 19: bf16 or fp16, d = 64 or 128, blocks 64, 128 or 256, and kernels 10 to 19 a GPU"
                    " of compute capability 9.0 (" + (cuda_device_has_wgmma() ? "this one is" : "this one is not") +
                    "); kernel 1 runs any; kernel 0 picks one)");
    }
    if (options.split_steps < 0) {
        throw Error("cuda attention_forward: split_steps is " + std::to_string(options.split_steps) +
                    " (give 0 for the automatic choice, or the most key tiles a chunk may visit)");
    }
    if (options.persistent_blocks < 0) {
        throw Error("cuda attention_forward: persistent_blocks is " + std::to_string(options.persistent_blocks) +
                    " (give 0 for as many thread blocks as fit on the GPU, or the most kernels 13 and 19 may run)");
    }
    this->split_steps = options.split_steps;
    this->persistent_blocks = options.persistent_blocks;
    if (kernel == 13) this->work_counter.reserve(sizeof(int));
    if (kernel == 19) this->work_counter.reserve(sizeof(int) * static_cast<size_t>(std::max<int64_t>(1, shape_in.batch)));
    this->kernel = kernel;   // before upload_masks: the launch order depends on the kernel's tile
    this->shape = shape_in;
    this->dtype = options.dtype;
    this->block = masks.block;
    this->q_blocks = (shape_in.n + masks.block - 1) / masks.block;
    // scale > 0 in the kernels: prepare negates K for a negative scale
    const double scale = attention_scale("cuda attention_forward", options.scale, d);
    this->scale_log2 = static_cast<float>(std::abs(scale) * 1.4426950408889634);

    upload_masks(masks, layer);
}

CudaAttention::CudaAttention() : impl_(std::make_unique<Impl>()) {
    std::string why;
    if (!cuda_device_available(&why)) throw Error("CUDA engine: no GPU to run on (" + why + "); use the CPU engine");
    SPARSA_CUDA_CHECK(cudaEventCreate(&impl_->start));
    SPARSA_CUDA_CHECK(cudaEventCreate(&impl_->stop));
}

CudaAttention::~CudaAttention() {
    if (impl_->start != nullptr) cudaEventDestroy(impl_->start);
    if (impl_->stop != nullptr) cudaEventDestroy(impl_->stop);
}

void CudaAttention::prepare(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks, int64_t layer,
                            const CudaAttentionOptions& options) {
    Impl& s = *impl_;
    s.prepared = false;
    s.q_ptr = s.k_ptr = s.v_ptr = nullptr;
    s.o_ptr = nullptr;
    s.lse_ptr = nullptr;
    s.stream = nullptr;
    cuda_attention_check(q, k, v, masks, layer, options);
    const int64_t d = q.shape.d;
    if (q.shape.heads > 65535 || q.shape.batch > 65535 || q.shape.heads * ((q.shape.n + 63) / 64) > (int64_t{1} << 30)) {
        throw Error("cuda attention_forward: batch and heads must be at most 65535, heads * n / 64 at most 2^30 (got " +
                    tensor_shape_text(q.shape) + "); split the call");
    }
    s.configure(masks, layer, q.shape, options);
    // The kernels take the row max of Q K^T before the scale and mask with -inf, so they need
    // scale > 0: a negative scale runs as |scale| with -K (scale q.k = |scale| q.(-k), exactly).
    const bool negate_k = attention_scale("cuda attention_forward", options.scale, d) < 0;

    const size_t elems = q.data.size();
    const size_t elem_bytes = options.dtype == CudaDtype::float32 ? 4 : 2;
    if (options.dtype == CudaDtype::float32) {
        s.q.upload(q.data);
        if (negate_k) {
            std::vector<float> minus_k(k.data.size());
            std::transform(k.data.begin(), k.data.end(), minus_k.begin(), [](float x) { return -x; });
            s.k.upload(minus_k);
        } else {
            s.k.upload(k.data);
        }
        s.v.upload(v.data);
    } else {
        s.q.upload(tensor_to_16bit(q, options.dtype));
        s.k.upload(tensor_to_16bit(k, options.dtype, negate_k));
        s.v.upload(tensor_to_16bit(v, options.dtype));
    }
    s.o.reserve(elems * elem_bytes);
    s.lse.reserve(static_cast<size_t>(q.shape.batch * q.shape.heads * q.shape.n) * sizeof(float));
    if (options.poison_outputs) {   // 0xffff... is NaN in every dtype
        SPARSA_CUDA_CHECK(cudaMemset(s.o.get(), 0xff, elems * elem_bytes));
        SPARSA_CUDA_CHECK(cudaMemset(s.lse.get(), 0xff, static_cast<size_t>(q.shape.batch * q.shape.heads * q.shape.n) * 4));
    }
    s.prepared = true;
}

void CudaAttention::run() {
    if (!impl_->prepared) throw Error("CudaAttention::run: nothing prepared (call prepare first)");
    impl_->launch_kernel();
}

AttentionOutput CudaAttention::download() {
    const Impl& s = *impl_;
    if (!s.prepared) throw Error("CudaAttention::download: nothing prepared (call prepare first)");
    SPARSA_CUDA_CHECK(cudaDeviceSynchronize());
    AttentionOutput out;
    out.o = tensor_zeros<float>(s.shape);
    out.lse = tensor_zeros<float>({s.shape.batch, s.shape.heads, s.shape.n, 1});
    const size_t elems = out.o.data.size();
    if (s.dtype == CudaDtype::float32) {
        SPARSA_CUDA_CHECK(cudaMemcpy(out.o.data.data(), s.o.get(), elems * 4, cudaMemcpyDeviceToHost));
    } else {
        std::vector<uint16_t> raw(elems);
        SPARSA_CUDA_CHECK(cudaMemcpy(raw.data(), s.o.get(), elems * 2, cudaMemcpyDeviceToHost));
        for (size_t e = 0; e < elems; ++e) {
            out.o.data[e] = s.dtype == CudaDtype::bfloat16 ? bf16_value(raw[e]) : fp16_value(raw[e]);
        }
    }
    SPARSA_CUDA_CHECK(cudaMemcpy(out.lse.data.data(), s.lse.get(), out.lse.data.size() * 4, cudaMemcpyDeviceToHost));
    // Inputs and scores were in range (prepare); what can still leave float32 is the sum of P V
    // over a row's keys (up to the key count times max |V|), so O is checked, never returned as Inf.
    for (size_t e = 0; e < elems; ++e) {
        if (std::isfinite(out.o.data[e])) continue;
        throw Error("cuda attention_forward: O at " + tensor_index_text(out.o.shape, e) +
                    " is not finite: its sums of P V overflow float32 (V is near float32's limit; O is linear in V:"
                    " scale V down, and O back up by the same factor)");
    }
    return out;
}

AttentionOutput CudaAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks,
                                       int64_t layer, const CudaAttentionOptions& options) {
    prepare(q, k, v, masks, layer, options);
    run();
    return download();
}

std::vector<float> CudaAttention::time_runs(int warmup, int runs) {
    return time_event_runs([&] { run(); }, impl_->start, impl_->stop, warmup, runs);
}

int CudaAttention::kernel() const { return impl_->kernel; }

// [CudaLayerMasks] the forward on the caller's tensors (attention_cuda_device.hpp)
void CudaLayerMasks::forward(const CudaDeviceCall& call, void* o, float* lse) { forward(call, o, lse, nullptr); }

void CudaLayerMasks::forward(const CudaDeviceCall& call, void* o, float* lse, const int32_t* columns) {
    Impl& s = *impl_;
    Impl::Config config = s.check("CudaLayerMasks::forward", call);
    if (o == nullptr || lse == nullptr) throw Error("CudaLayerMasks::forward: o or lse is a null pointer (pass the outputs' device addresses)");
    config.columns = columns != nullptr;
    CudaAttention::Impl& f = *s.forward.impl_;
    if (!(config == s.forward_config)) {   // checked and planned once per configuration, not per call
        if (config.columns) {
            std::set<const BlockMask*> distinct;
            for (int64_t h = 0; h < s.masks.heads; ++h) distinct.insert(&s.masks.at(s.layer, h));
            if (static_cast<int64_t>(distinct.size()) != s.masks.heads) {
                throw Error("CudaLayerMasks::forward: columns need one distinct mask per head (learn::mask_set_top_k_layout); "
                            "this layer's " + std::to_string(s.masks.heads) + " heads share " + std::to_string(distinct.size()));
            }
        }
        CudaAttentionOptions options;
        options.dtype = call.dtype;
        options.scale = config.scale;
        if (config.columns) {   // a kernel of 64-query tiles: its steps are the layout's row lengths
            for (const int k : {15, 9, 1}) {
                if (cuda_kernel_supports(k, call.dtype, call.d, s.masks.block)) {
                    options.kernel = k;
                    break;
                }
            }
        }
        f.configure(s.masks, s.layer, {call.batch, call.heads, call.n, call.d}, options);
        s.forward_config = config;
    }
    f.col_idx_ptr = columns;
    f.q_ptr = call.q;
    f.k_ptr = call.k;
    f.v_ptr = call.v;
    f.o_ptr = o;
    f.lse_ptr = lse;
    f.stream = static_cast<cudaStream_t>(call.stream);
    f.launch_kernel();
}

} // namespace sparsa
