// Host side of the CUDA engine's content-based heads (content_cuda.hpp): the public calls
// (prepare's checks and uploads, run, download, times, walk). The state and the passes (the
// bucketing: hash or anchor cosines, CUB's radix sort, chunk ids; the passes of
// content_kernels.cuh and their merge; FAVOR+ as two or four passes) are in content_cuda_impl.hpp.
#include "engine/cuda/content/content_cuda.hpp"

#include "engine/cuda/content/content_cuda_impl.hpp"   // CudaContentAttention::Impl: the buffers and the passes
#include "engine/reference.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

namespace {

// float (already rounded to the dtype, or not) -> the dtype's bits, round to nearest even.
std::vector<uint16_t> to_16bit(const std::vector<float>& x, CudaDtype dtype) {
    std::vector<uint16_t> out(x.size());
    for (size_t e = 0; e < x.size(); ++e) {
        if (dtype == CudaDtype::bfloat16) {
            const __nv_bfloat16_raw r = __nv_bfloat16(__float2bfloat16_rn(x[e]));
            out[e] = r.x;
        } else {
            const __half_raw r = __half(__float2half_rn(x[e]));
            out[e] = r.x;
        }
    }
    return out;
}

// x into buffer as the dtype's elements (float32 as they are, else rounded to 16 bits).
void upload_as(DeviceBuffer& buffer, const std::vector<float>& x, CudaDtype dtype) {
    if (dtype == CudaDtype::float32) buffer.upload(x);
    else buffer.upload(to_16bit(x, dtype));
}

bool same_parameters(const ContentSpec& a, const ContentSpec& b) {
    return a.kind == b.kind && a.buckets == b.buckets && a.rounds == b.rounds && a.chunk == b.chunk &&
           a.shared_qk == b.shared_qk && a.features == b.features && a.causal == b.causal;
}

const char* kind_name(ContentKind kind) {
    return kind == ContentKind::lsh ? "lsh" : kind == ContentKind::anchors ? "anchors" : "favor";
}

} // namespace


CudaContentAttention::CudaContentAttention() : impl_(std::make_unique<Impl>()) {
    std::string why;
    if (!cuda_device_available(&why)) throw Error("CUDA content engine: no GPU to run on (" + why + "); use the CPU engine");
    for (cudaEvent_t& e : impl_->ev) SPARSA_CUDA_CHECK(cudaEventCreate(&e));
    for (cudaEvent_t& e : impl_->fev) SPARSA_CUDA_CHECK(cudaEventCreate(&e));
    SPARSA_CUDA_CHECK(cudaDeviceGetAttribute(&impl_->sm_count, cudaDevAttrMultiProcessorCount, 0));
}

CudaContentAttention::~CudaContentAttention() {
    for (cudaEvent_t e : impl_->ev) if (e != nullptr) cudaEventDestroy(e);
    for (cudaEvent_t e : impl_->fev) if (e != nullptr) cudaEventDestroy(e);
}

void CudaContentAttention::prepare(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks, int64_t layer,
                                   const CudaContentNumbers& numbers, const CudaContentOptions& options) {
    Impl& s = *impl_;
    s.prepared = s.ran = false;
    CudaAttentionOptions check;
    check.scale = options.scale;
    check.dtype = options.dtype;
    check.kernel = options.tensor_cores ? 0 : 1;
    cuda_attention_check(q, k, v, masks, layer, check);
    setup(q.shape, masks, layer, numbers, options);
    upload_as(s.q, q.data, options.dtype);
    upload_as(s.k, k.data, options.dtype);
    upload_as(s.v, v.data, options.dtype);
    if (s.has_fixed) {
        if (!s.fixed_engine) s.fixed_engine = std::make_unique<CudaAttention>();
        CudaAttentionOptions fixed_options;
        fixed_options.scale = options.scale;
        fixed_options.dtype = options.dtype;
        fixed_options.kernel = options.tensor_cores ? 0 : 1;
        s.fixed_engine->prepare(q, k, v, masks, layer, fixed_options);
        s.upload_fixed(masks, layer);
        s.fixed_o.reserve(q.data.size() * 4);
        s.fixed_lse.reserve(static_cast<size_t>(s.bh * q.shape.n) * 4);
    }
    s.prepared = true;
}

void CudaContentAttention::forward_device(const CudaContentDeviceCall& call, const MaskSet& masks, int64_t layer,
                                          const CudaContentNumbers& numbers, const CudaContentOptions& options) {
    Impl& s = *impl_;
    const std::string what = "cuda content attention (device)";
    s.prepared = s.ran = false;
    if (call.q == nullptr || call.k == nullptr || call.v == nullptr || call.o == nullptr || call.lse == nullptr) {
        throw Error(what + ": a null pointer among q, k, v, o, lse");
    }
    const TensorShape shape{call.batch, call.heads, call.n, call.d};
    attention_check_shapes(what, shape, shape, shape, masks, layer);
    setup(shape, masks, layer, numbers, options);
    if (s.has_fixed) {
        throw Error(what + ": layer " + std::to_string(layer) + " has fixed blocks beside its content heads; their pass "
                    "goes through the host: run the layer with forward");
    }
    const size_t bytes = static_cast<size_t>(shape.size()) * (options.dtype == CudaDtype::float32 ? 4 : 2);
    for (auto [buffer, from] : {std::pair{&s.q, call.q}, std::pair{&s.k, call.k}, std::pair{&s.v, call.v}}) {
        SPARSA_CUDA_CHECK(cudaMemcpy(buffer->reserve(bytes), from, bytes, cudaMemcpyDeviceToDevice));
    }
    s.prepared = true;
    run();
    SPARSA_CUDA_CHECK(cudaMemcpy(call.o, s.o.get(), bytes, cudaMemcpyDeviceToDevice));
    SPARSA_CUDA_CHECK(cudaMemcpy(call.lse, s.lse.get(), static_cast<size_t>(s.bh * shape.n) * 4, cudaMemcpyDeviceToDevice));
}

void CudaContentAttention::setup(const TensorShape& shape, const MaskSet& masks, int64_t layer,
                                 const CudaContentNumbers& numbers, const CudaContentOptions& options) {
    Impl& s = *impl_;
    const std::string what = "cuda content attention";
    const int64_t n = shape.n, d = shape.d, heads = shape.heads;
    if (d > 256) throw Error(what + ": d = " + std::to_string(d) + " is above 256 (split the head dimension)");
    if (shape.batch * heads > 65535) throw Error(what + ": batch * heads = " + std::to_string(shape.batch * heads) + " is above 65535 (split the call)");
    if (masks.content.size() != static_cast<size_t>(masks.layers * masks.heads) || masks.content[static_cast<size_t>(layer * heads)] == nullptr) {
        throw Error(what + ": head 0 of layer " + std::to_string(layer) + " has no content-based spec (run it with CudaAttention)");
    }
    const ContentSpec& spec = *masks.content[static_cast<size_t>(layer * heads)];
    for (int64_t h = 1; h < heads; ++h) {
        const auto& other = masks.content[static_cast<size_t>(layer * heads + h)];
        if (other == nullptr || !same_parameters(*other, spec)) {
            throw Error(what + ": head " + std::to_string(h) + " of layer " + std::to_string(layer) +
                        " differs from head 0 (a head without a spec, or other parameters); the GPU runs one spec per call:"
                        " give such heads their own call");
        }
    }
    if (numbers.size() != static_cast<size_t>(heads)) {
        throw Error(what + ": numbers for " + std::to_string(numbers.size()) + " heads, the layer has " + std::to_string(heads));
    }
    s.spec = spec;
    s.shape = shape;
    s.dtype = options.dtype;
    s.bh = shape.batch * heads;
    s.scale = static_cast<float>(attention_scale(what, options.scale, d));
    s.tensor_cores = options.tensor_cores && options.dtype != CudaDtype::float32 && (d == 64 || d == 128);
    if (options.version < 0 || options.version > 4) {
        throw Error(what + ": version " + std::to_string(options.version) + " (give 1, 2, 3 or 4, or 0 for the newest)");
    }
    s.version = options.version == 0 ? 4 : options.version;
    std::vector<float> mats;
    int64_t want = 0;
    std::string meaning;
    if (spec.kind == ContentKind::favor) {
        if (spec.features < 1) throw Error(what + ": favor needs features >= 1 (got " + std::to_string(spec.features) + ")");
        if (s.scale <= 0) throw Error(what + ": favor needs a scale > 0 (its features take sqrt(scale)); got " + std::to_string(s.scale));
        s.features = spec.features;
        s.rounds = 0;
        want = s.features * d;
        meaning = "features [m, d]";
    } else {
        s.rounds = spec.rounds;
        s.chunk = spec.chunk > 0 ? spec.chunk : masks.block;
        if (s.rounds < 1) throw Error(what + ": rounds must be >= 1 (got " + std::to_string(s.rounds) + ")");
        if (spec.kind == ContentKind::lsh && (spec.buckets < 2 || spec.buckets % 2 != 0)) {
            throw Error(what + ": lsh needs an even number of buckets >= 2 (got " + std::to_string(spec.buckets) + ")");
        }
        if (spec.buckets < 1 || spec.buckets > n) {
            throw Error(what + ": " + kind_name(spec.kind) + " has " + std::to_string(spec.buckets) + " buckets but n = " +
                        std::to_string(n) + " (at most one bucket a token: use fewer buckets)");
        }
        s.cols = spec.kind == ContentKind::lsh ? spec.buckets / 2 : spec.buckets;
        want = s.rounds * d * s.cols;
        meaning = spec.kind == ContentKind::lsh ? "rotations [rounds, d, buckets / 2]" : "anchors [rounds, k, d]";
    }
    for (int64_t h = 0; h < heads; ++h) {
        const auto& x = numbers[static_cast<size_t>(h)];
        if (static_cast<int64_t>(x.size()) != want) {
            throw Error(what + ": head " + std::to_string(h) + "'s numbers have " + std::to_string(x.size()) + " values, its " +
                        meaning + " need " + std::to_string(want));
        }
        if (spec.kind == ContentKind::anchors) {   // [rounds, k, d] -> [rounds, d, k]: columns as lsh's rotations
            for (int64_t r = 0; r < s.rounds; ++r)
                for (int64_t i = 0; i < d; ++i)
                    for (int64_t a = 0; a < s.cols; ++a) mats.push_back(x[static_cast<size_t>((r * s.cols + a) * d + i)]);
        } else {
            mats.insert(mats.end(), x.begin(), x.end());
        }
    }

    const size_t elems = static_cast<size_t>(shape.size());
    const size_t elem_bytes = options.dtype == CudaDtype::float32 ? 4 : 2;
    s.o.reserve(elems * elem_bytes);
    s.lse.reserve(static_cast<size_t>(s.bh * n) * 4);
    if (options.poison_outputs) {
        SPARSA_CUDA_CHECK(cudaMemset(s.o.as<void>(), 0xff, elems * elem_bytes));
        SPARSA_CUDA_CHECK(cudaMemset(s.lse.as<void>(), 0xff, static_cast<size_t>(s.bh * n) * 4));
    }

    if (spec.kind == ContentKind::favor) {
        upload_as(s.omega, mats, options.dtype);
        const int64_t m = s.features, chunks = (n + 63) / 64;
        s.bias.reserve(static_cast<size_t>(s.bh * n) * 4);
        const int64_t splits = (n + s.favor_key_split() - 1) / s.favor_key_split();
        s.o_part.reserve(static_cast<size_t>(splits * s.bh * m * d) * 4);
        s.lse_part.reserve(static_cast<size_t>(splits * s.bh * m) * 4);
        s.o1.reserve(static_cast<size_t>(s.bh * m * d) * elem_bytes);
        s.lse1.reserve(static_cast<size_t>(s.bh * m) * 4);
        if (spec.causal) {
            s.prefix_v.reserve(static_cast<size_t>(s.bh * chunks * m * d) * elem_bytes);
            s.prefix_lse.reserve(static_cast<size_t>(s.bh * chunks * m) * 4);
            s.o_part2.reserve(static_cast<size_t>(2 * s.bh * n * d) * 4);
            s.lse_part2.reserve(static_cast<size_t>(2 * s.bh * n) * 4);
            s.phi_q.reserve(static_cast<size_t>(s.bh * n * m) * 4);
            s.phi_k.reserve(static_cast<size_t>(s.bh * n * m) * 4);
            s.c_q.reserve(static_cast<size_t>(s.bh * n) * 4);
            s.c_k.reserve(static_cast<size_t>(s.bh * n) * 4);
        }
        s.has_fixed = false;
        return;
    }

    s.mats.upload(mats);
    s.pieces_made = false;
    if (s.version >= 4 && spec.kind == ContentKind::lsh && s.tensor_cores && s.cols >= 8 && s.cols <= 64 &&
        std::has_single_bit(static_cast<uint64_t>(s.cols))) {
        // content_hash_tc's pieces (an fp16 piece past its range leaves the hashing to content_hash3)
        const std::vector<float> pieces = lsh_rotation_pieces(mats, heads, s.rounds, s.cols, d, options.dtype);
        if (!pieces.empty()) {
            s.pieces.upload(to_16bit(pieces, options.dtype));
            s.pieces_made = true;
        }
    }
    s.segs_q = s.rounds * s.bh;
    s.segs = spec.shared_qk ? s.segs_q : 2 * s.segs_q;
    s.bucket_bits = std::bit_width(static_cast<uint64_t>(spec.buckets - 1));
    s.key_bits = s.bucket_bits + std::bit_width(static_cast<uint64_t>(s.segs - 1));
    if (s.key_bits > 64) throw Error(what + ": too many buckets and segments for a 64-bit sort key (split the call)");
    const size_t total = static_cast<size_t>(s.total());
    s.keys_in.reserve(total * 8);
    s.keys_out.reserve(total * 8);
    s.values.reserve(total * 4);
    s.order.reserve(total * 4);
    s.chunk_of.reserve(total * 4);
    s.sorted_chunk.reserve(total * static_cast<size_t>(s.rounds) * 4);   // [sides][rounds][rounds][bh][n]
    if (spec.kind == ContentKind::anchors) {
        if (s.total() >= (int64_t{1} << 31)) throw Error(what + ": anchors over " + std::to_string(s.total()) + " tokens of all rounds and heads (at most 2^31 - 1 a call: split it)");
        if (s.cols > 24 * 1024) throw Error(what + ": anchors(" + std::to_string(s.cols) + ") has more anchors than the GPU's assignment holds (24,576)");
        s.cosines.reserve(total * static_cast<size_t>(s.cols) * 8);
        s.best.reserve(total * 8);
        s.best_sorted.reserve(total * 8);
        s.anchor_token.reserve(total * 4);
        s.anchor_by.reserve(total * 4);
        std::vector<int32_t> offsets(static_cast<size_t>(s.segs + 1));
        for (int64_t g = 0; g <= s.segs; ++g) offsets[static_cast<size_t>(g)] = static_cast<int32_t>(g * n);
        s.seg_offsets.upload(offsets);
        s.seg_sort_temp_bytes = 0;
        const int32_t* o = s.seg_offsets.as<int32_t>();
        SPARSA_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
            nullptr, s.seg_sort_temp_bytes, s.best.as<double>(), s.best_sorted.as<double>(), s.anchor_token.as<int32_t>(),
            s.anchor_by.as<int32_t>(), static_cast<int>(total), static_cast<int>(s.segs), o, o + 1));
        s.seg_sort_temp.reserve(s.seg_sort_temp_bytes);
    }
    cuda::content::content_iota<<<static_cast<unsigned>((total + 255) / 256), 256>>>(s.values.as<int32_t>(), static_cast<int64_t>(total), n);
    SPARSA_CUDA_CHECK(cudaGetLastError());
    s.sort_temp_bytes = 0;
    if (s.keys32()) {
        SPARSA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, s.sort_temp_bytes, s.keys_in.as<uint32_t>(), s.keys_out.as<uint32_t>(),
                                                          s.values.as<int32_t>(), s.order.as<int32_t>(), s.total(), 0, s.key_bits));
    } else {
        SPARSA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, s.sort_temp_bytes, s.keys_in.as<uint64_t>(), s.keys_out.as<uint64_t>(),
                                                          s.values.as<int32_t>(), s.order.as<int32_t>(), s.total(), 0, s.key_bits));
    }
    s.sort_temp.reserve(s.sort_temp_bytes);
    s.o_part.reserve(static_cast<size_t>(s.rounds * s.bh * n * d) * 4);
    s.lse_part.reserve(static_cast<size_t>(s.rounds * s.bh * n) * 4);

    s.has_fixed = false;
    for (int64_t h = 0; h < heads; ++h) s.has_fixed = s.has_fixed || masks.at(layer, h).row_ptr.back() > 0;
}

void CudaContentAttention::run() {
    Impl& s = *impl_;
    if (!s.prepared) throw Error("CudaContentAttention::run: nothing prepared (call prepare first)");
    if (s.has_fixed) {
        // The fixed pass: CudaAttention keeps its buffers to itself, so its o and lse come back
        // through the host (not counted in the times; a device-side hand-over is left to do).
        SPARSA_CUDA_CHECK(cudaEventRecord(s.fev[0]));
        s.fixed_engine->run();
        SPARSA_CUDA_CHECK(cudaEventRecord(s.fev[1]));
        const AttentionOutput fixed = s.fixed_engine->download();
        s.fixed_o.upload(fixed.o.data);
        s.fixed_lse.upload(fixed.lse.data);
    }
    const bool favor = s.spec.kind == ContentKind::favor;
    switch (s.dtype) {
    case CudaDtype::float32: favor ? s.run_favor<float>() : s.run_buckets<float>(); break;
    case CudaDtype::bfloat16: favor ? s.run_favor<__nv_bfloat16>() : s.run_buckets<__nv_bfloat16>(); break;
    case CudaDtype::float16: favor ? s.run_favor<__half>() : s.run_buckets<__half>(); break;
    }
    s.ran = true;
}

AttentionOutput CudaContentAttention::download() {
    const Impl& s = *impl_;
    if (!s.ran) throw Error("CudaContentAttention::download: nothing ran (call prepare and run first)");
    SPARSA_CUDA_CHECK(cudaDeviceSynchronize());
    AttentionOutput out;
    out.o = tensor_zeros<float>(s.shape);
    out.lse = tensor_zeros<float>({s.shape.batch, s.shape.heads, s.shape.n, 1});
    const size_t elems = out.o.data.size();
    if (s.dtype == CudaDtype::float32) {
        SPARSA_CUDA_CHECK(cudaMemcpy(out.o.data.data(), s.o.as<void>(), elems * 4, cudaMemcpyDeviceToHost));
    } else {
        std::vector<uint16_t> raw(elems);
        SPARSA_CUDA_CHECK(cudaMemcpy(raw.data(), s.o.as<void>(), elems * 2, cudaMemcpyDeviceToHost));
        for (size_t e = 0; e < elems; ++e) {
            if (s.dtype == CudaDtype::bfloat16) {
                __nv_bfloat16_raw r;
                r.x = raw[e];
                out.o.data[e] = __bfloat162float(__nv_bfloat16(r));
            } else {
                __half_raw r;
                r.x = raw[e];
                out.o.data[e] = __half2float(__half(r));
            }
        }
    }
    SPARSA_CUDA_CHECK(cudaMemcpy(out.lse.data.data(), s.lse.as<void>(), out.lse.data.size() * 4, cudaMemcpyDeviceToHost));
    for (size_t e = 0; e < elems; ++e) {
        if (std::isfinite(out.o.data[e])) continue;
        throw Error("cuda content attention: O at " + tensor_index_text(out.o.shape, e) +
                    " is not finite (V near float32's limit: scale V down, and O back up by the same factor)");
    }
    return out;
}

AttentionOutput CudaContentAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks,
                                              int64_t layer, const CudaContentNumbers& numbers,
                                              const CudaContentOptions& options) {
    prepare(q, k, v, masks, layer, numbers, options);
    run();
    return download();
}

CudaContentTimes CudaContentAttention::times() {
    const Impl& s = *impl_;
    if (!s.ran) throw Error("CudaContentAttention::times: nothing ran");
    SPARSA_CUDA_CHECK(cudaEventSynchronize(s.ev[3]));
    CudaContentTimes t;
    SPARSA_CUDA_CHECK(cudaEventElapsedTime(&t.bucketing_ms, s.ev[0], s.ev[1]));
    SPARSA_CUDA_CHECK(cudaEventElapsedTime(&t.attention_ms, s.ev[1], s.ev[2]));
    SPARSA_CUDA_CHECK(cudaEventElapsedTime(&t.merge_ms, s.ev[2], s.ev[3]));
    if (s.has_fixed) SPARSA_CUDA_CHECK(cudaEventElapsedTime(&t.fixed_ms, s.fev[0], s.fev[1]));
    t.total_ms = t.fixed_ms + t.bucketing_ms + t.attention_ms + t.merge_ms;
    return t;
}

CudaContentTimes CudaContentAttention::run_median(int runs) {
    std::vector<float> fixed, bucketing, attention, merge, total;
    for (int r = 0; r < std::max(1, runs); ++r) {
        run();
        const CudaContentTimes t = times();
        fixed.push_back(t.fixed_ms);
        bucketing.push_back(t.bucketing_ms);
        attention.push_back(t.attention_ms);
        merge.push_back(t.merge_ms);
        total.push_back(t.total_ms);
    }
    const auto median = [](std::vector<float> x) {
        std::sort(x.begin(), x.end());
        return x[x.size() / 2];
    };
    return {median(fixed), median(bucketing), median(attention), median(merge), median(total)};
}

CudaContentWalk CudaContentAttention::walk() {
    const Impl& s = *impl_;
    if (!s.ran || s.spec.kind == ContentKind::favor) throw Error("CudaContentAttention::walk: no lsh or anchors run");
    SPARSA_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<uint64_t> keys(static_cast<size_t>(s.total()));
    if (s.keys32()) {
        std::vector<uint32_t> keys32(keys.size());
        SPARSA_CUDA_CHECK(cudaMemcpy(keys32.data(), s.keys_in.as<void>(), keys32.size() * 4, cudaMemcpyDeviceToHost));
        std::copy(keys32.begin(), keys32.end(), keys.begin());
    } else {
        SPARSA_CUDA_CHECK(cudaMemcpy(keys.data(), s.keys_in.as<void>(), keys.size() * 8, cudaMemcpyDeviceToHost));
    }
    CudaContentWalk w;
    w.rounds = s.rounds;
    w.shared_qk = s.spec.shared_qk;
    w.hashing = s.spec.kind == ContentKind::anchors ? "anchors"
                : s.hash_tc()                       ? "content_hash_tc"
                : s.hash3()                         ? "content_hash3"
                : s.version >= 2                    ? "content_project2"
                                                    : "content_project";
    const uint64_t mask = (uint64_t{1} << s.bucket_bits) - 1;
    const size_t half = static_cast<size_t>(s.segs_q * s.shape.n);
    for (size_t i = 0; i < keys.size(); ++i) (i < half ? w.q_bucket : w.k_bucket).push_back(static_cast<int32_t>(keys[i] & mask));
    return w;
}

} // namespace sparsa
