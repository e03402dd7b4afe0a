// libsparsa_cli_cuda.so: the CUDA engine behind the C ABI of cli/cuda_module_abi.hpp, built
// beside the sparsa executable and loaded by it (cli/cuda_module.cpp) only for --engine cuda:
// fixed layers through CudaAttention, layers with content-based heads through CudaLayer below.
// Built with hidden visibility and the static libraries' symbols kept local: the only exported
// name is sparsa_cli_cuda_api.
// GCC 12's -Wrestrict misfires inside std::string concatenation (bug 105329); the top level
// silences it, but engine/cuda's folder, which builds this file, resets the C++ flags, and the
// layer below inlines such code from engine/tensor.hpp (tensor_shape_text).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic ignored "-Wrestrict"
#endif

#include "cli/cuda_module_abi.hpp"

#include "engine/error.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

namespace {

// The text behind the last status or string returned on this thread.
thread_local std::string g_text;

SparsaCliCudaStatus status_ok() { return {sparsa_cli_cuda_ok, nullptr}; }

SparsaCliCudaStatus status_of(int32_t code, const char* message) {
    try {
        g_text = message;
    } catch (const std::bad_alloc&) {
        g_text.clear();   // the message did not fit: the code still says what happened
        return {sparsa_cli_cuda_out_of_memory, "out of memory"};
    }
    return {code, g_text.c_str()};
}

// Runs f, turning what it throws into a status: no exception leaves the module.
template <class F>
SparsaCliCudaStatus guarded(F&& f) noexcept {
    try {
        f();
        return status_ok();
    } catch (const sparsa::Error& e) {
        return status_of(sparsa_cli_cuda_error, e.what());
    } catch (const std::bad_alloc&) {
        return {sparsa_cli_cuda_out_of_memory, "out of memory"};
    } catch (const std::exception& e) {
        return status_of(sparsa_cli_cuda_internal, e.what());
    } catch (...) {
        return {sparsa_cli_cuda_internal, "an exception that is not a std::exception"};
    }
}

sparsa::CudaAttention& engine_of(void* engine) { return *static_cast<sparsa::CudaAttention*>(engine); }

int32_t kernel_count() noexcept { return sparsa::cuda_kernel_count(); }

SparsaCliCudaStatus device_available(int32_t* available, const char** why) noexcept {
    return guarded([&] {
        std::string reason;
        *available = sparsa::cuda_device_available(&reason) ? 1 : 0;
        g_text = reason;
        *why = g_text.c_str();
    });
}

SparsaCliCudaStatus device_name(const char** name) noexcept {
    return guarded([&] {
        g_text = sparsa::cuda_device_name();
        *name = g_text.c_str();
    });
}

SparsaCliCudaStatus round_to(const sparsa::Tensor* x, sparsa::CudaDtype dtype, sparsa::Tensor* out) noexcept {
    return guarded([&] { *out = sparsa::tensor_round_to(*x, dtype); });
}

SparsaCliCudaStatus engine_new(void** engine) noexcept {
    *engine = nullptr;
    return guarded([&] { *engine = new sparsa::CudaAttention(); });
}

void engine_free(void* engine) noexcept { delete static_cast<sparsa::CudaAttention*>(engine); }

SparsaCliCudaStatus engine_prepare(void* engine, const sparsa::Tensor* q, const sparsa::Tensor* k, const sparsa::Tensor* v,
                                   const sparsa::MaskSet* masks, int64_t layer,
                                   const sparsa::CudaAttentionOptions* options) noexcept {
    return guarded([&] { engine_of(engine).prepare(*q, *k, *v, *masks, layer, *options); });
}

int32_t engine_kernel(const void* engine) noexcept { return static_cast<const sparsa::CudaAttention*>(engine)->kernel(); }

SparsaCliCudaStatus engine_time_runs(void* engine, int32_t warmup, int32_t runs, float* ms) noexcept {
    return guarded([&] {
        const std::vector<float> times = engine_of(engine).time_runs(warmup, runs);
        if (static_cast<int64_t>(times.size()) != runs) {
            throw std::logic_error("CudaAttention::time_runs gave " + std::to_string(times.size()) + " times for " +
                                   std::to_string(runs) + " runs");
        }
        for (int32_t r = 0; r < runs; ++r) ms[r] = times[static_cast<size_t>(r)];
    });
}

SparsaCliCudaStatus engine_download(void* engine, sparsa::AttentionOutput* out) noexcept {
    return guarded([&] { *out = engine_of(engine).download(); });
}

// [SECTION] layers with content-based heads

// One layer on the GPU whatever its heads: they are split into calls the engines take whole
// (CudaContentAttention runs one spec's parameters a call; CudaAttention the fixed heads), each
// call on its heads' slice of Q, K, V, and the outputs put back in head order. Head indices stay
// the layer's: every head's rotations, anchors or features are drawn for the whole layer first
// (cuda_content_numbers), as the CPU engine draws them.
class CudaLayer {
public:
    void prepare(const sparsa::Tensor& q, const sparsa::Tensor& k, const sparsa::Tensor& v, const sparsa::MaskSet& masks,
                 int64_t layer, const sparsa::ContentArrays* arrays, const sparsa::CudaAttentionOptions& options) {
        using namespace sparsa;
        prepared_ = ran_ = false;
        groups_.clear();
        shape_ = q.shape;
        const CudaContentNumbers numbers = cuda_content_numbers(masks, layer, q.shape.d, arrays);
        for (int64_t h = 0; h < masks.heads; ++h) {
            const ContentSpec* spec = masks.content.empty() ? nullptr : masks.content[static_cast<size_t>(layer * masks.heads + h)].get();
            auto same = [&](const Group& g) {
                if (g.spec == nullptr || spec == nullptr) return g.spec == spec;
                return g.spec->kind == spec->kind && g.spec->buckets == spec->buckets && g.spec->rounds == spec->rounds &&
                       g.spec->chunk == spec->chunk && g.spec->shared_qk == spec->shared_qk && g.spec->features == spec->features &&
                       g.spec->causal == spec->causal;
            };
            auto it = std::find_if(groups_.begin(), groups_.end(), same);
            if (it == groups_.end()) {
                it = groups_.emplace(groups_.end());
                it->spec = spec;
            }
            it->heads.push_back(h);
        }
        for (Group& g : groups_) {
            const int64_t gh = static_cast<int64_t>(g.heads.size());
            std::vector<std::shared_ptr<const BlockMask>> group_masks;
            for (const int64_t h : g.heads) group_masks.push_back(masks.masks[static_cast<size_t>(layer * masks.heads + h)]);
            MaskSet set = mask_set_make(1, gh, std::move(group_masks));
            const Tensor gq = heads_take(q, g.heads), gk = heads_take(k, g.heads), gv = heads_take(v, g.heads);
            if (g.spec == nullptr) {
                g.fixed = std::make_unique<CudaAttention>();
                g.fixed->prepare(gq, gk, gv, set, 0, options);
                continue;
            }
            CudaContentNumbers group_numbers;
            for (const int64_t h : g.heads) {
                set.content.push_back(masks.content[static_cast<size_t>(layer * masks.heads + h)]);
                group_numbers.push_back(numbers[static_cast<size_t>(h)]);
            }
            CudaContentOptions content;
            content.scale = options.scale;
            content.dtype = options.dtype;
            content.tensor_cores = options.kernel != 1;
            content.poison_outputs = options.poison_outputs;
            g.content = std::make_unique<CudaContentAttention>();
            g.content->prepare(gq, gk, gv, set, 0, group_numbers, content);
        }
        if (start_ == nullptr) check(cudaEventCreate(&start_), "cudaEventCreate");
        if (stop_ == nullptr) check(cudaEventCreate(&stop_), "cudaEventCreate");
        prepared_ = true;
    }

    ~CudaLayer() {
        if (start_ != nullptr) cudaEventDestroy(start_);
        if (stop_ != nullptr) cudaEventDestroy(stop_);
    }

    // Each run of the whole layer between two CUDA events (the fixed part of a content head
    // passes through the host inside it: content_cuda.hpp says so).
    std::vector<float> time_runs(int32_t warmup, int32_t runs) {
        if (!prepared_) throw sparsa::Error("CUDA layer: nothing prepared");
        for (int32_t w = 0; w < warmup; ++w) run();
        std::vector<float> ms;
        for (int32_t r = 0; r < runs; ++r) {
            check(cudaEventRecord(start_), "cudaEventRecord");
            run();
            check(cudaEventRecord(stop_), "cudaEventRecord");
            check(cudaEventSynchronize(stop_), "cudaEventSynchronize");
            float t = 0;
            check(cudaEventElapsedTime(&t, start_, stop_), "cudaEventElapsedTime");
            ms.push_back(t);
        }
        return ms;
    }

    sparsa::AttentionOutput download() {
        using namespace sparsa;
        if (!ran_) throw Error("CUDA layer: nothing ran");
        AttentionOutput out{tensor_zeros<float>(shape_), tensor_zeros<float>({shape_.batch, shape_.heads, shape_.n, 1})};
        for (Group& g : groups_) {
            const AttentionOutput part = g.content ? g.content->download() : g.fixed->download();
            const bool favor = g.spec != nullptr && g.spec->kind == ContentKind::favor;
            for (int64_t b = 0; b < shape_.batch; ++b) {
                for (size_t i = 0; i < g.heads.size(); ++i) {
                    const int64_t h = g.heads[i], gi = static_cast<int64_t>(i);
                    std::copy(part.o.row(b, gi, 0), part.o.row(b, gi, 0) + shape_.n * shape_.d, out.o.row(b, h, 0));
                    for (int64_t t = 0; t < shape_.n; ++t) out.lse.at(b, h, t, 0) = favor ? NAN : part.lse.at(b, gi, t, 0);
                }
            }
        }
        return out;
    }

    sparsa::CudaContentTimes times() {
        sparsa::CudaContentTimes sum;
        if (!ran_) throw sparsa::Error("CUDA layer: nothing ran");
        for (Group& g : groups_) {
            if (!g.content) continue;
            const sparsa::CudaContentTimes t = g.content->times();
            sum.fixed_ms += t.fixed_ms;
            sum.bucketing_ms += t.bucketing_ms;
            sum.attention_ms += t.attention_ms;
            sum.merge_ms += t.merge_ms;
            sum.total_ms += t.total_ms;
        }
        return sum;
    }

    sparsa::ContentBuckets buckets() {
        using namespace sparsa;
        if (!ran_) throw Error("CUDA layer: nothing ran");
        ContentBuckets out;
        const size_t items = static_cast<size_t>(shape_.batch * shape_.heads);
        out.q.resize(items);
        out.k.resize(items);
        for (Group& g : groups_) {
            if (!g.content || g.spec->kind == ContentKind::favor) continue;
            const CudaContentWalk w = g.content->walk();   // [rounds, batch * group heads, n]
            const int64_t gh = static_cast<int64_t>(g.heads.size()), n = shape_.n;
            for (int64_t b = 0; b < shape_.batch; ++b) {
                for (int64_t i = 0; i < gh; ++i) {
                    const size_t item = static_cast<size_t>(b * shape_.heads + g.heads[static_cast<size_t>(i)]);
                    for (int64_t r = 0; r < w.rounds; ++r) {
                        const int64_t from = (r * shape_.batch * gh + b * gh + i) * n;
                        out.q[item].insert(out.q[item].end(), w.q_bucket.begin() + from, w.q_bucket.begin() + from + n);
                        if (!w.shared_qk) out.k[item].insert(out.k[item].end(), w.k_bucket.begin() + from, w.k_bucket.begin() + from + n);
                    }
                }
            }
        }
        return out;
    }

private:
    struct Group {
        const sparsa::ContentSpec* spec = nullptr;   // nullptr: the fixed heads
        std::vector<int64_t> heads;                  // the layer's head indices, ascending
        std::unique_ptr<sparsa::CudaContentAttention> content;
        std::unique_ptr<sparsa::CudaAttention> fixed;
    };

    static void check(cudaError_t err, const char* call) {
        if (err != cudaSuccess) throw sparsa::Error(std::string("CUDA layer: ") + call + " failed: " + cudaGetErrorString(err));
    }

    // x [batch, heads, n, d] -> [batch, heads.size(), n, d], those heads in that order.
    static sparsa::Tensor heads_take(const sparsa::Tensor& x, const std::vector<int64_t>& heads) {
        sparsa::Tensor out = sparsa::tensor_zeros<float>({x.shape.batch, static_cast<int64_t>(heads.size()), x.shape.n, x.shape.d});
        for (int64_t b = 0; b < x.shape.batch; ++b) {
            for (size_t i = 0; i < heads.size(); ++i) {
                std::copy(x.row(b, heads[i], 0), x.row(b, heads[i], 0) + x.shape.n * x.shape.d, out.row(b, static_cast<int64_t>(i), 0));
            }
        }
        return out;
    }

    void run() {
        for (Group& g : groups_) g.content ? g.content->run() : g.fixed->run();
        ran_ = true;
    }

    std::vector<Group> groups_;
    sparsa::TensorShape shape_;
    bool prepared_ = false, ran_ = false;
    cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

CudaLayer& layer_of(void* layer) { return *static_cast<CudaLayer*>(layer); }

SparsaCliCudaStatus layer_new(void** layer) noexcept {
    *layer = nullptr;
    return guarded([&] {
        std::string why;
        if (!sparsa::cuda_device_available(&why)) throw sparsa::Error("CUDA layer: no GPU to run on (" + why + ")");
        *layer = new CudaLayer();
    });
}

void layer_free(void* layer) noexcept { delete static_cast<CudaLayer*>(layer); }

SparsaCliCudaStatus layer_prepare(void* layer, const sparsa::Tensor* q, const sparsa::Tensor* k, const sparsa::Tensor* v,
                                  const sparsa::MaskSet* masks, int64_t layer_index, const sparsa::ContentArrays* arrays,
                                  const sparsa::CudaAttentionOptions* options) noexcept {
    return guarded([&] { layer_of(layer).prepare(*q, *k, *v, *masks, layer_index, arrays, *options); });
}

SparsaCliCudaStatus layer_time_runs(void* layer, int32_t warmup, int32_t runs, float* ms) noexcept {
    return guarded([&] {
        const std::vector<float> times = layer_of(layer).time_runs(warmup, runs);
        std::copy(times.begin(), times.end(), ms);
    });
}

SparsaCliCudaStatus layer_download(void* layer, sparsa::AttentionOutput* out) noexcept {
    return guarded([&] { *out = layer_of(layer).download(); });
}

SparsaCliCudaStatus layer_times(void* layer, sparsa::CudaContentTimes* times) noexcept {
    return guarded([&] { *times = layer_of(layer).times(); });
}

SparsaCliCudaStatus layer_buckets(void* layer, sparsa::ContentBuckets* buckets) noexcept {
    return guarded([&] { *buckets = layer_of(layer).buckets(); });
}

const SparsaCliCudaApi kApi = {
    SPARSA_CLI_CUDA_VERSION, sparsa_cli_cuda_layout(),
    kernel_count,   device_available, device_name,     round_to,       engine_new,      engine_free,
    engine_prepare, engine_kernel,    engine_time_runs, engine_download, layer_new,       layer_free,
    layer_prepare,  layer_time_runs,  layer_download,   layer_times,     layer_buckets,
};

} // namespace

extern "C" __attribute__((visibility("default"))) const SparsaCliCudaApi* sparsa_cli_cuda_api() { return &kApi; }
