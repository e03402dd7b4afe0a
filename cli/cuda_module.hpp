// sparsa run's CUDA engine, the calls of engine/cuda/attention_cuda.hpp made through
// libsparsa_cli_cuda.so (cli/cuda_module_abi.hpp), which is loaded from the executable's own
// folder on the first call: a sparsa that never touches the GPU never maps the engine's 8 MB of
// kernels and CUDA runtime (issue 17: under ulimit -v 10240 it could not even start with them).
// Compiled only into a sparsa built with the CUDA engine (SPARSA_HAVE_CUDA).
#pragma once

#include "engine/content/buckets.hpp"
#include "engine/content/content_arrays.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/cuda/attention_cuda.hpp"
#include "engine/cuda/content/content_cuda.hpp"

#include <string>
#include <vector>

namespace sparsa::cli::cuda {

// The module's file name, and the folder it is loaded from (the folder of /proc/self/exe).
inline constexpr const char* kModuleName = "libsparsa_cli_cuda.so";

// Loads the module now (later calls load it when needed). Throws sparsa::Error when it cannot be
// loaded: "--engine cuda: this sparsa was built with the CUDA engine but libsparsa_cli_cuda.so
// could not be loaded from DIR: <dlerror> (rebuild, or copy it beside sparsa)". Every call below
// throws what the engine threw (sparsa::Error with its message, std::bad_alloc), or that.
void load();

int kernel_count();
bool device_available(std::string* why);
std::string device_name();
Tensor round_to(const Tensor& x, CudaDtype dtype);   // x: any shape

// A CudaAttention living in the module: the same calls.
class Attention {
public:
    Attention();   // throws sparsa::Error when no GPU is usable
    ~Attention();
    Attention(const Attention&) = delete;
    Attention& operator=(const Attention&) = delete;

    void prepare(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks, int64_t layer,
                 const CudaAttentionOptions& options);
    std::vector<float> time_runs(int warmup, int runs);
    AttentionOutput download();
    int kernel() const;

private:
    void* engine_ = nullptr;
};

// A layer with content-based heads (lsh, anchors, favor, with fixed heads or not), living in the
// module: the fixed heads through CudaAttention, the content heads through CudaContentAttention
// (engine/cuda/content/content_cuda.hpp). options: dtype, kernel (1: the simple kernels), scale, poison.
class Layer {
public:
    Layer();   // throws sparsa::Error when no GPU is usable
    ~Layer();
    Layer(const Layer&) = delete;
    Layer& operator=(const Layer&) = delete;

    void prepare(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks, int64_t layer,
                 const ContentArrays* arrays, const CudaAttentionOptions& options);
    std::vector<float> time_runs(int warmup, int runs);   // milliseconds of each run of the whole layer
    AttentionOutput download();                          // lse NaN on favor heads
    CudaContentTimes times();                            // the last run's phases, over the content heads
    ContentBuckets buckets();                            // the last run's buckets (lsh, anchors heads)

private:
    void* layer_ = nullptr;
};

} // namespace sparsa::cli::cuda
