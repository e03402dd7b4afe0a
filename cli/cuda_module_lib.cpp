// libsparsa_cli_cuda.so: the CUDA engine behind the C ABI of cli/cuda_module_abi.hpp, built
// beside the sparsa executable and loaded by it (cli/cuda_module.cpp) only for --engine cuda.
// Built with hidden visibility and the static libraries' symbols kept local: the only exported
// name is sparsa_cli_cuda_api.
#include "cli/cuda_module_abi.hpp"

#include "engine/error.hpp"

#include <exception>
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

const SparsaCliCudaApi kApi = {
    SPARSA_CLI_CUDA_VERSION, sparsa_cli_cuda_layout(),
    kernel_count,   device_available, device_name,     round_to,       engine_new, engine_free,
    engine_prepare, engine_kernel,    engine_time_runs, engine_download,
};

} // namespace

extern "C" __attribute__((visibility("default"))) const SparsaCliCudaApi* sparsa_cli_cuda_api() { return &kApi; }
