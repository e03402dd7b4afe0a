// Host side of the CUDA backward: checks the call as the CPU engine's attention_backward does,
// uploads the tensors and one layer's masks twice (by query block for the dQ pass, transposed
// for the dK / dV pass), and launches D = rowsum(dO * O) and the two passes of
// attn_bwd_kernels.cuh.
#include "engine/cuda/attention_cuda_backward.hpp"

#include "engine/cuda/attn_bwd_kernels.cuh"
#include "engine/cuda/cuda_host.hpp"
#include "engine/cuda/layer_masks_impl.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace sparsa {

using namespace cuda_host;

namespace {

// The distinct masks of one layer concatenated as the device reads them (cuda::DeviceMasks):
// row_ptr absolute into col_idx, partial_idx into bits. With `transposed`, each mask by key
// block: row r lists the query blocks that keep key block r (ascending), and bit (j * B + i) of
// a bitmask says whether query i may attend to key j (the partial blocks keep their numbers).
struct HostMasks {
    std::vector<int64_t> row_ptr;
    std::vector<int32_t> col_idx, partial_idx, head_mask;
    std::vector<uint64_t> bits;
};

HostMasks layer_masks(const MaskSet& masks, int64_t layer, bool transposed) {
    HostMasks out;
    std::map<const BlockMask*, int32_t> index;
    const int64_t B = masks.block, words = B * B / 64;
    for (int64_t h = 0; h < masks.heads; ++h) {
        const BlockMask& m = masks.at(layer, h);
        auto [it, fresh] = index.emplace(&m, static_cast<int32_t>(index.size()));
        out.head_mask.push_back(it->second);
        if (!fresh) continue;
        const auto base = static_cast<int64_t>(out.col_idx.size());
        const auto partial_base = static_cast<int32_t>(out.bits.size() / static_cast<size_t>(words));
        const int64_t blocks = m.q_blocks();
        if (!transposed) {
            for (int64_t r : m.row_ptr) out.row_ptr.push_back(base + r);
            out.col_idx.insert(out.col_idx.end(), m.col_idx.begin(), m.col_idx.end());
            for (int32_t p : m.partial_idx) out.partial_idx.push_back(p < 0 ? -1 : partial_base + p);
            out.bits.insert(out.bits.end(), m.bits.begin(), m.bits.end());
            continue;
        }
        std::vector<int64_t> col_ptr(static_cast<size_t>(blocks + 1), 0);
        for (int32_t kb : m.col_idx) ++col_ptr[static_cast<size_t>(kb) + 1];
        for (size_t kb = 0; kb + 1 < col_ptr.size(); ++kb) col_ptr[kb + 1] += col_ptr[kb];
        for (int64_t c : col_ptr) out.row_ptr.push_back(base + c);
        out.col_idx.resize(out.col_idx.size() + m.col_idx.size());
        out.partial_idx.resize(out.partial_idx.size() + m.col_idx.size());
        std::vector<int64_t> fill(col_ptr.begin(), col_ptr.end() - 1);
        for (int64_t qb = 0; qb < blocks; ++qb) {   // rows in order: each column comes out ascending
            for (int64_t e = m.row_ptr[static_cast<size_t>(qb)]; e < m.row_ptr[static_cast<size_t>(qb) + 1]; ++e) {
                const auto at = static_cast<size_t>(base + fill[static_cast<size_t>(m.col_idx[static_cast<size_t>(e)])]++);
                const int32_t p = m.partial_idx[static_cast<size_t>(e)];
                out.col_idx[at] = static_cast<int32_t>(qb);
                out.partial_idx[at] = p < 0 ? -1 : partial_base + p;
            }
        }
        const size_t first = out.bits.size();
        out.bits.resize(first + m.bits.size(), 0);
        for (int64_t p = 0; p < m.partial_blocks(); ++p) {
            const uint64_t* src = m.partial_bits(p);
            uint64_t* dst = out.bits.data() + first + static_cast<size_t>(p * words);
            for (int64_t t = 0; t < B * B; ++t) {
                if (((src[t / 64] >> (t % 64)) & 1) == 0) continue;
                const int64_t u = (t % B) * B + t / B;   // (i, j) -> (j, i)
                dst[u / 64] |= uint64_t{1} << (u % 64);
            }
        }
    }
    return out;
}

// Kernel 3's work for one pass over `m` (either layout): every (head, 64-row tile) with its
// steps (kept blocks of its mask row times B / 64); a tile of more than `cap` steps is cut into
// chunks of at most cap, each a work item writing to its own workspace slot. Launch order:
// by the power of two of the steps, largest first, then head by head, later tiles first.
struct Plan {
    std::vector<cuda::WorkItem> items;
    std::vector<cuda::SplitTile> splits;
    int32_t slots = 0;
};

Plan plan_pass(const HostMasks& m, int64_t heads, int64_t n, int32_t block, int64_t cap_given, int sm_count) {
    const int64_t tiles = (n + 63) / 64, q_blocks = (n + block - 1) / block, sub_tiles = block / 64;
    struct Tile {
        int64_t e, steps;
        int32_t pair;
    };
    std::vector<Tile> all;
    int64_t total = 0;
    for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = int64_t{m.head_mask[static_cast<size_t>(h)]} * (q_blocks + 1);
        for (int64_t t = tiles - 1; t >= 0; --t) {
            const int64_t r = t * 64 / block;
            const int64_t e0 = m.row_ptr[static_cast<size_t>(base + r)], e1 = m.row_ptr[static_cast<size_t>(base + r + 1)];
            all.push_back({e0, (e1 - e0) * sub_tiles, static_cast<int32_t>(h * tiles + t)});
            total += (e1 - e0) * sub_tiles;
        }
    }
    const int64_t cap = cap_given > 0 ? cap_given : std::max<int64_t>(64, total / (4 * 2 * int64_t{sm_count}));
    Plan plan;
    for (const Tile& t : all) {
        if (t.steps <= cap) {
            plan.items.push_back({t.e, 0, t.pair, 0, static_cast<int32_t>(t.steps), -1});
            continue;
        }
        const int64_t chunks = (t.steps + cap - 1) / cap, len = (t.steps + chunks - 1) / chunks;
        plan.splits.push_back({t.pair, plan.slots, static_cast<int32_t>(chunks)});
        for (int64_t done = 0; done < t.steps; done += len) {
            plan.items.push_back({t.e + done / sub_tiles, 0, t.pair, static_cast<int32_t>(done % sub_tiles),
                                  static_cast<int32_t>(std::min(len, t.steps - done)), plan.slots++});
        }
    }
    std::stable_sort(plan.items.begin(), plan.items.end(), [](const cuda::WorkItem& a, const cuda::WorkItem& b) {
        return std::bit_width(static_cast<uint32_t>(a.steps)) > std::bit_width(static_cast<uint32_t>(b.steps));
    });
    return plan;
}

struct DeviceMaskBuffers {
    DeviceBuffer row_ptr, col_idx, partial_idx, bits, head_mask, work, splits;

    cuda::DeviceMasks upload(const HostMasks& m, int32_t block, int64_t q_blocks, const Plan* plan) {
        return {row_ptr.upload(m.row_ptr), col_idx.upload(m.col_idx), partial_idx.upload(m.partial_idx),
                bits.upload(m.bits), head_mask.upload(m.head_mask), nullptr, block, q_blocks,
                plan != nullptr ? work.upload(plan->items) : nullptr, plan != nullptr ? splits.upload(plan->splits) : nullptr};
    }
};

} // namespace

int cuda_backward_kernel_count() { return 9; }

int cuda_backward_kernel_choice(int kernel, CudaDtype dtype, int64_t d, int32_t block) {
    if (kernel != 0) return kernel;
    // 8 on compute capability 9.0 (on the H100 14-17% faster than kernel 6 on window, Longformer
    // and BigBird, 0.9-1.2% slower on dense and causal; 6 1.2-4.1% faster than 5, 5 1.6-1.8x
    // kernel 3's rate: bench/cuda-notes.md), else 3 (kernel 2 with long rows split), else the
    // simple kernel 1. Kernel 9 (written 2026-12-08) is not chosen until it is measured against 8.
    if (cuda_backward_kernel_supports(8, dtype, d, block)) return 8;
    return cuda_backward_kernel_supports(3, dtype, d, block) ? 3 : 1;
}

bool cuda_backward_kernel_supports(int kernel, CudaDtype dtype, int64_t d, int32_t block) {
    if (kernel == 1) return d >= 1 && d <= 32 * cuda::kKernel1MaxChunks && block_size_valid(block);
    const bool tensor_core_shape = dtype != CudaDtype::float32 && (d == 64 || d == 128) && (block == 64 || block == 128 || block == 256);
    if (kernel >= 2 && kernel <= 4) return tensor_core_shape;
    if (kernel >= 5 && kernel <= 9) return tensor_core_shape && cuda_device_has_wgmma();
    return false;
}

struct CudaAttentionBackward::Impl {
    DeviceBuffer q, k, v, o, d_o, lse, delta, p_sum, dq, dk, dv;
    DeviceMaskBuffers rows, cols;
    DeviceBuffer part_a, part_b;   // kernels 3 and 4's workspace
    DeviceBuffer dq_accum;         // kernel 4: float32 dQ
    int32_t slots_q = 0, slots_k = 0;
    int64_t items_q = 0, items_k = 0, splits_q = 0, splits_k = 0, split_steps = 0;
    int sm_count = 0;
    cuda::DeviceMasks rows_view{}, cols_view{};
    TensorShape shape;
    CudaDtype dtype = CudaDtype::bfloat16;
    int kernel = 0;
    int32_t block = 64;
    float scale = 0;
    bool prepared = false, check_lse = true;
    // for the lse check after the run: the inputs as the GPU saw them
    Tensor q_seen, k_seen, v_seen, lse_seen;
    MaskSet masks;
    int64_t layer = 0;
    cudaEvent_t start = nullptr, stop = nullptr;
    // CudaLayerMasks (attention_cuda_device.hpp): the caller's tensors and stream instead of the
    // buffers above (all set, or none); nullptr: the buffers, the default stream
    struct Pointers {
        const void *q, *k, *v, *o, *d_o;
        const float* lse;
        float* delta;
        void *dq, *dk, *dv;
    };
    const Pointers* given = nullptr;
    cudaStream_t stream = nullptr;

    template <typename T> cuda::BwdParams<T> params() const {
        cuda::BwdParams<T> p{};
        p.q = static_cast<const T*>(given != nullptr ? given->q : q.get());
        p.k = static_cast<const T*>(given != nullptr ? given->k : k.get());
        p.v = static_cast<const T*>(given != nullptr ? given->v : v.get());
        p.o = static_cast<const T*>(given != nullptr ? given->o : o.get());
        p.d_o = static_cast<const T*>(given != nullptr ? given->d_o : d_o.get());
        p.lse = given != nullptr ? given->lse : static_cast<const float*>(lse.get());
        p.delta = given != nullptr ? given->delta : static_cast<float*>(delta.get());
        p.p_sum = check_lse && given == nullptr ? static_cast<float*>(p_sum.get()) : nullptr;
        p.dq = static_cast<T*>(given != nullptr ? given->dq : dq.get());
        p.dk = static_cast<T*>(given != nullptr ? given->dk : dk.get());
        p.dv = static_cast<T*>(given != nullptr ? given->dv : dv.get());
        p.batch = shape.batch;
        p.heads = shape.heads;
        p.n = shape.n;
        p.d = static_cast<int32_t>(shape.d);
        p.scale = scale;
        p.rows = rows_view;
        p.cols = cols_view;
        p.part_a = static_cast<float*>(part_a.get());
        p.part_b = static_cast<float*>(part_b.get());
        p.dq_accum = static_cast<float*>(dq_accum.get());
        p.slots_q = slots_q;
        p.slots_k = slots_k;
        p.items_q = items_q;
        p.items_k = items_k;
        return p;
    }

    // The merge of a pass's split tiles (kernels 3 to 9), kCombineBlocks thread blocks a tile.
    // With one block a tile (before 2026-12-08), each waiting on its chunks' loads element after
    // element, BigBird's merges took 0.10 ms (dK / dV) and 0.09 ms (dQ) of backward kernel 6's
    // 3.8 ms at n = 65,536 (bench/cuda-notes.md, "The profile of backward kernel 6").
    static constexpr unsigned kCombineBlocks = 16;
    template <typename T, int D> void combine(const cuda::BwdParams<T>& p, int64_t splits, bool dq_pass) const {
        if (splits == 0) return;
        cuda::attn_bwd_combine<T, D><<<dim3(static_cast<unsigned>(splits), kCombineBlocks, static_cast<unsigned>(shape.batch)),
                                       128, 0, stream>>>(p, dq_pass);
        SPARSA_CUDA_CHECK(cudaGetLastError());
    }

    // Kernels 2 and 3: the dK / dV pass, then the dQ pass (each with its merge, kernel 3).
    template <typename T, int D, int B> void launch_kernel2() const {
        const cuda::BwdParams<T> p = params<T>();
        constexpr int smem = cuda::BwdTraits<D, B>::kSmemBytes;
        if (kernel == 4) {
            launch_kernel4<T, D, B>();
            return;
        }
        if (kernel >= 5) {
            SPARSA_CUDA_CHECK((cuda::attn_bwd_wgmma_launch<T, D, B>(p, false, kernel, stream)));
            combine<T, D>(p, splits_k, false);
            SPARSA_CUDA_CHECK((cuda::attn_bwd_wgmma_launch<T, D, B>(p, true, kernel, stream)));
            combine<T, D>(p, splits_q, true);
            return;
        }
        const auto run = [&](auto split_tag) {
            constexpr bool Split = decltype(split_tag)::value;
            SPARSA_CUDA_CHECK(cudaFuncSetAttribute(cuda::attn_bwd_kernel2_dkdv<T, D, B, Split, false>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            SPARSA_CUDA_CHECK(cudaFuncSetAttribute(cuda::attn_bwd_kernel2_dq<T, D, B, Split>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            const auto grid = [&](int64_t items) {
                return Split ? dim3(static_cast<unsigned>(items), 1, static_cast<unsigned>(shape.batch))
                             : dim3(static_cast<unsigned>((shape.n + 63) / 64), static_cast<unsigned>(shape.heads),
                                    static_cast<unsigned>(shape.batch));
            };
            if (!Split || items_k > 0) cuda::attn_bwd_kernel2_dkdv<T, D, B, Split, false><<<grid(items_k), 128, smem, stream>>>(p);
            SPARSA_CUDA_CHECK(cudaGetLastError());
            if (Split) combine<T, D>(p, splits_k, false);
            if (!Split || items_q > 0) cuda::attn_bwd_kernel2_dq<T, D, B, Split><<<grid(items_q), 128, smem, stream>>>(p);
            SPARSA_CUDA_CHECK(cudaGetLastError());
            if (Split) combine<T, D>(p, splits_q, true);
        };
        if (kernel == 3) run(std::true_type{});
        else run(std::false_type{});
    }

    // Kernel 4: dQ (and the sums of P) zeroed, the dK / dV pass adding dQ by atomics, the merge of
    // split columns, dQ converted to the dtype.
    template <typename T, int D, int B> void launch_kernel4() const {
        const cuda::BwdParams<T> p = params<T>();
        constexpr int smem = cuda::BwdTraits<D, B>::kSmemBytesAtomicDq;
        const size_t rows_all = static_cast<size_t>(shape.batch * shape.heads * shape.n);
        SPARSA_CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, rows_all * static_cast<size_t>(shape.d) * 4, stream));
        if (p.p_sum != nullptr) SPARSA_CUDA_CHECK(cudaMemsetAsync(p.p_sum, 0, rows_all * 4, stream));
        SPARSA_CUDA_CHECK(cudaFuncSetAttribute(cuda::attn_bwd_kernel2_dkdv<T, D, B, true, true>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        if (items_k > 0) {
            cuda::attn_bwd_kernel2_dkdv<T, D, B, true, true>
                <<<dim3(static_cast<unsigned>(items_k), 1, static_cast<unsigned>(shape.batch)), 128, smem, stream>>>(p);
            SPARSA_CUDA_CHECK(cudaGetLastError());
        }
        combine<T, D>(p, splits_k, false);
        const int64_t count = static_cast<int64_t>(rows_all) * shape.d;
        cuda::attn_bwd_dq_convert<T><<<static_cast<unsigned>(std::min<int64_t>((count + 255) / 256, 4096)), 256, 0, stream>>>(p);
        SPARSA_CUDA_CHECK(cudaGetLastError());
    }

    void launch() const {
        auto with_type = [&](auto type_tag) {
            using T = decltype(type_tag);
            const cuda::BwdParams<T> p = params<T>();
            const int64_t rows_all = shape.batch * shape.heads * shape.n;
            cuda::attn_bwd_delta<T><<<static_cast<unsigned>((rows_all + 3) / 4), 128, 0, stream>>>(p);
            SPARSA_CUDA_CHECK(cudaGetLastError());
            if (kernel == 1) {
                const dim3 grid(static_cast<unsigned>((shape.n + cuda::kBwd1Warps - 1) / cuda::kBwd1Warps),
                                static_cast<unsigned>(shape.heads), static_cast<unsigned>(shape.batch));
                cuda::attn_bwd_kernel1_dkdv<T><<<grid, 32 * cuda::kBwd1Warps, 0, stream>>>(p);
                SPARSA_CUDA_CHECK(cudaGetLastError());
                cuda::attn_bwd_kernel1_dq<T><<<grid, 32 * cuda::kBwd1Warps, 0, stream>>>(p);
                SPARSA_CUDA_CHECK(cudaGetLastError());
                return;
            }
            if constexpr (!std::is_same_v<T, float>) {
                with_tensor_core_shape(shape.d, block, [&](auto d_tag, auto b_tag) {
                    launch_kernel2<T, decltype(d_tag)::value, decltype(b_tag)::value>();
                });
            }
        };
        with_dtype(dtype, with_type);
    }

    // The call's shape and kernel, and layer `layer` of `masks` on the device, both ways.
    void configure(const MaskSet& masks, int64_t layer, const TensorShape& shape_in, CudaDtype dtype_in,
                   int kernel_in, float scale_in) {
        shape = shape_in;
        dtype = dtype_in;
        kernel = kernel_in;
        block = masks.block;
        scale = scale_in;
        const int64_t q_blocks = (shape.n + masks.block - 1) / masks.block;
        const HostMasks by_rows = layer_masks(masks, layer, false), by_cols = layer_masks(masks, layer, true);
        if (kernel == 4) dq_accum.reserve(static_cast<size_t>(shape.batch * shape.heads * shape.n * shape.d) * 4);
        if (kernel < 3) {
            rows_view = rows.upload(by_rows, masks.block, q_blocks, nullptr);
            cols_view = cols.upload(by_cols, masks.block, q_blocks, nullptr);
            return;
        }
        if (sm_count == 0) SPARSA_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, 0));
        const Plan plan_q = plan_pass(by_rows, shape.heads, shape.n, masks.block, split_steps, sm_count);
        const Plan plan_k = plan_pass(by_cols, shape.heads, shape.n, masks.block, split_steps, sm_count);
        rows_view = rows.upload(by_rows, masks.block, q_blocks, &plan_q);
        cols_view = cols.upload(by_cols, masks.block, q_blocks, &plan_k);
        slots_q = plan_q.slots;
        slots_k = plan_k.slots;
        items_q = static_cast<int64_t>(plan_q.items.size());
        items_k = static_cast<int64_t>(plan_k.items.size());
        splits_q = static_cast<int64_t>(plan_q.splits.size());
        splits_k = static_cast<int64_t>(plan_k.splits.size());
        const size_t slot_rows = static_cast<size_t>(shape.batch) * static_cast<size_t>(std::max(slots_q, slots_k)) * 64;
        part_a.reserve(slot_rows * static_cast<size_t>(shape.d) * 4);
        part_b.reserve(slot_rows * static_cast<size_t>(shape.d) * 4);
    }

    void upload(DeviceBuffer& buffer, const Tensor& x) {
        if (dtype == CudaDtype::float32) buffer.upload(x.data);
        else buffer.upload(tensor_to_16bit(x, dtype));
    }

    Tensor download_tensor(const DeviceBuffer& buffer) const {
        Tensor out = tensor_zeros<float>(shape);
        const size_t elems = out.data.size();
        if (dtype == CudaDtype::float32) {
            SPARSA_CUDA_CHECK(cudaMemcpy(out.data.data(), buffer.get(), elems * 4, cudaMemcpyDeviceToHost));
            return out;
        }
        std::vector<uint16_t> raw(elems);
        SPARSA_CUDA_CHECK(cudaMemcpy(raw.data(), buffer.get(), elems * 2, cudaMemcpyDeviceToHost));
        for (size_t e = 0; e < elems; ++e) out.data[e] = dtype == CudaDtype::bfloat16 ? bf16_value(raw[e]) : fp16_value(raw[e]);
        return out;
    }
};

CudaAttentionBackward::CudaAttentionBackward() : impl_(std::make_unique<Impl>()) {
    std::string why;
    if (!cuda_device_available(&why)) throw Error("CUDA engine: no GPU to run on (" + why + "); use the CPU engine");
    SPARSA_CUDA_CHECK(cudaEventCreate(&impl_->start));
    SPARSA_CUDA_CHECK(cudaEventCreate(&impl_->stop));
}

CudaAttentionBackward::~CudaAttentionBackward() {
    if (impl_->start != nullptr) cudaEventDestroy(impl_->start);
    if (impl_->stop != nullptr) cudaEventDestroy(impl_->stop);
}

void CudaAttentionBackward::prepare(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                    const Tensor& lse, const Tensor& d_o, const MaskSet& masks, int64_t layer,
                                    const CudaBackwardOptions& options) {
    Impl& s = *impl_;
    s.prepared = false;
    const std::string what = "cuda attention_backward";
    attention_check_shapes(what, q.shape, k.shape, v.shape, masks, layer);
    const TensorShape shape = q.shape;
    auto same_shape = [&](const char* name, const TensorShape& got, const TensorShape& want, const char* why) {
        if (!(got == want)) {
            throw Error(what + ": " + name + " is " + tensor_shape_text(got) + " but should be " + tensor_shape_text(want) +
                        " (" + why + ")");
        }
    };
    same_shape("O", o.shape, shape, "the forward's output has Q's shape");
    same_shape("dO", d_o.shape, shape, "the gradient of O has O's shape");
    same_shape("lse", lse.shape, {shape.batch, shape.heads, shape.n, 1}, "one value per query, from the forward");
    const double scale = attention_scale(what, options.scale, shape.d);
    for (const auto& [t, name] : {std::pair{&q, "Q"}, {&k, "K"}, {&v, "V"}, {&o, "O"}, {&d_o, "dO"}}) {
        tensor_check_finite(*t, name);
        tensor_check_dtype_range(what, *t, name, options.dtype);
    }
    for (size_t e = 0; e < lse.data.size(); ++e) {
        if (std::isnan(lse.data[e]) || lse.data[e] == INFINITY) {
            throw Error(what + ": lse" + tensor_index_text(lse.shape, e) + " is " + std::to_string(lse.data[e]) +
                        " (lse is finite, or -inf for an empty row: pass the forward's lse)");
        }
    }
    const int kernel = cuda_backward_kernel_choice(options.kernel, options.dtype, shape.d, masks.block);
    if (!cuda_backward_kernel_supports(kernel, options.dtype, shape.d, masks.block)) {
        throw Error(what + ": kernel " + std::to_string(kernel) + " does not run dtype " + cuda_dtype_name(options.dtype) +
                    " with d = " + std::to_string(shape.d) + " and mask block " + std::to_string(masks.block) +
                    " (kernels 2 to 9: bf16 or fp16, d = 64 or 128, blocks 64, 128 or 256, and kernels 5 to 9 a GPU of compute"
                    " capability 9.0; kernel 1 runs any d up to 256;"
                    " kernel 0 picks one)");
    }
    if (shape.heads > 65535 || shape.batch > 65535) {
        throw Error(what + ": batch and heads must be at most 65535 (got " + tensor_shape_text(shape) + "); split the call");
    }
    attention_check_score_range(what, tensor_row_norms(q), tensor_row_norms(k), scale,
                                kernel >= 2 ? ScoreEngine::cuda_tensor_cores : ScoreEngine::cuda);

    if (options.split_steps < 0) {
        throw Error(what + ": split_steps is " + std::to_string(options.split_steps) +
                    " (give 0 for the automatic choice, or the most steps a chunk may take)");
    }
    s.given = nullptr;
    s.stream = nullptr;
    s.split_steps = options.split_steps;
    s.configure(masks, layer, shape, options.dtype, kernel, static_cast<float>(scale));
    s.check_lse = options.check_lse;
    s.upload(s.q, q);
    s.upload(s.k, k);
    s.upload(s.v, v);
    s.upload(s.o, o);
    s.upload(s.d_o, d_o);
    s.lse.upload(lse.data);
    const size_t rows = static_cast<size_t>(shape.batch * shape.heads * shape.n);
    const size_t bytes = q.data.size() * (options.dtype == CudaDtype::float32 ? 4 : 2);
    s.delta.reserve(rows * 4);
    s.p_sum.reserve(rows * 4);
    for (DeviceBuffer* g : {&s.dq, &s.dk, &s.dv}) {
        g->reserve(bytes);
        if (options.poison_outputs) SPARSA_CUDA_CHECK(cudaMemset(g->get(), 0xff, bytes));   // NaN in every dtype
    }
    if (s.check_lse) {
        s.q_seen = tensor_round_to(q, options.dtype);
        s.k_seen = tensor_round_to(k, options.dtype);
        s.v_seen = tensor_round_to(v, options.dtype);
        s.lse_seen = lse;
        s.masks = masks;
        s.layer = layer;
    }
    s.prepared = true;
}

void CudaAttentionBackward::run() {
    if (!impl_->prepared) throw Error("CudaAttentionBackward::run: nothing prepared (call prepare first)");
    impl_->launch();
}

AttentionGrads CudaAttentionBackward::download() {
    const Impl& s = *impl_;
    if (!s.prepared) throw Error("CudaAttentionBackward::download: nothing prepared (call prepare first)");
    const std::string what = "cuda attention_backward";
    SPARSA_CUDA_CHECK(cudaDeviceSynchronize());
    if (s.check_lse) {
        std::vector<float> sums(static_cast<size_t>(s.shape.batch * s.shape.heads * s.shape.n));
        SPARSA_CUDA_CHECK(cudaMemcpy(sums.data(), s.p_sum.get(), sums.size() * 4, cudaMemcpyDeviceToHost));
        attention_check_p_sums(what, s.q_seen, s.k_seen, s.v_seen, s.lse_seen, s.masks, s.layer, s.scale,
                               std::vector<double>(sums.begin(), sums.end()));
    }
    AttentionGrads g;
    g.dq = s.download_tensor(s.dq);
    g.dk = s.download_tensor(s.dk);
    g.dv = s.download_tensor(s.dv);
    // Inputs and scores were in range (prepare); what can still leave the dtype's range is a sum
    // over many pairs, and each gradient is linear in dO.
    for (const auto& [t, name] : {std::pair{&g.dq, "dQ"}, {&g.dk, "dK"}, {&g.dv, "dV"}}) {
        for (size_t e = 0; e < t->data.size(); ++e) {
            if (std::isfinite(t->data[e])) continue;
            throw Error(what + ": " + name + " at " + tensor_index_text(t->shape, e) + " is not finite: its sums leave " +
                        cuda_dtype_name(s.dtype) + "'s range (" + name +
                        " is linear in dO: scale dO down, and the gradients back up by the same factor)");
        }
    }
    return g;
}

AttentionGrads CudaAttentionBackward::backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                               const Tensor& lse, const Tensor& d_o, const MaskSet& masks,
                                               int64_t layer, const CudaBackwardOptions& options) {
    prepare(q, k, v, o, lse, d_o, masks, layer, options);
    run();
    return download();
}

std::vector<float> CudaAttentionBackward::time_runs(int warmup, int runs) {
    return time_event_runs([&] { run(); }, impl_->start, impl_->stop, warmup, runs);
}

int CudaAttentionBackward::kernel() const { return impl_->kernel; }

// [CudaLayerMasks] the backward on the caller's tensors (attention_cuda_device.hpp)
void CudaLayerMasks::backward(const CudaDeviceCall& call, const void* o, const float* lse, const void* d_o, void* dq,
                              void* dk, void* dv, float* delta) {
    Impl& s = *impl_;
    const Impl::Config config = s.check("CudaLayerMasks::backward", call);
    if (o == nullptr || lse == nullptr || d_o == nullptr || dq == nullptr || dk == nullptr || dv == nullptr || delta == nullptr) {
        throw Error("CudaLayerMasks::backward: a null pointer among o, lse, d_o, dq, dk, dv, delta (pass device addresses)");
    }
    CudaAttentionBackward::Impl& b = *s.backward.impl_;
    if (!(config == s.backward_config)) {
        const int kernel = cuda_backward_kernel_choice(0, call.dtype, call.d, s.masks.block);
        b.configure(s.masks, s.layer, {call.batch, call.heads, call.n, call.d}, call.dtype, kernel, config.scale);
        s.backward_config = config;
    }
    const CudaAttentionBackward::Impl::Pointers pointers{call.q, call.k, call.v, o, d_o, lse, delta, dq, dk, dv};
    b.given = &pointers;
    b.stream = static_cast<cudaStream_t>(call.stream);
    b.check_lse = false;
    b.launch();
    b.given = nullptr;
}

} // namespace sparsa
