// The C ABI between the sparsa executable and libsparsa_cli_cuda.so, the module that holds the
// CLI's CUDA engine (engine/cuda/attention_cuda.hpp) so that sparsa maps its 8 MB of kernels and
// CUDA runtime only when a command asks for the GPU (issue 17: under ulimit -v 10240 a sparsa
// with them linked in could not even be started). cli/cuda_module.hpp is the side the CLI calls.
//
// One entry point, sparsa_cli_cuda_api(), returns a table of plain functions. No C++ exception
// crosses the boundary: the module catches everything and returns a status; the executable
// rethrows it as its own sparsa::Error (the module's copy of that type is hidden, not shared).
// The sparsa types passed by pointer (Tensor, MaskSet, AttentionOutput, CudaAttentionOptions,
// ContentArrays, ContentBuckets, CudaContentTimes) come from the same headers and the same build on both sides; `layout` checks that at load.
#pragma once

#include "engine/content/buckets.hpp"
#include "engine/content/content_arrays.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/cuda/attention_cuda.hpp"
#include "engine/cuda/content/content_cuda.hpp"

#include <cstdint>

extern "C" {

// Bump when a function is added, removed or changes its arguments. 2: layers with content-based
// heads (the layer_* functions). The table only grows: version and layout stay its first fields,
// so any version's module can be read far enough to be refused.
#define SPARSA_CLI_CUDA_VERSION 2
#define SPARSA_CLI_CUDA_ENTRY "sparsa_cli_cuda_api"

// What a call that can fail returns. message: the error's one line (valid until the next call of
// the module on this thread), nullptr when code is ok.
enum SparsaCliCudaCode : int32_t {
    sparsa_cli_cuda_ok = 0,
    sparsa_cli_cuda_error = 1,           // a sparsa::Error: bad input, no GPU, a failed CUDA call
    sparsa_cli_cuda_out_of_memory = 2,   // std::bad_alloc on the host
    sparsa_cli_cuda_internal = 3,        // any other exception (a bug: "please report it")
};
struct SparsaCliCudaStatus {
    int32_t code;
    const char* message;
};

// Each function is the engine's call of the same name (attention_cuda.hpp); strings returned
// through `const char**` stay valid until the next call of the module on this thread.
struct SparsaCliCudaApi {
    int32_t version;   // SPARSA_CLI_CUDA_VERSION of the module's build
    uint64_t layout;   // sparsa_cli_cuda_layout() of the module's build
    int32_t (*kernel_count)();
    SparsaCliCudaStatus (*device_available)(int32_t* available, const char** why);
    SparsaCliCudaStatus (*device_name)(const char** name);
    // x: any shape; *out: x rounded to dtype and back.
    SparsaCliCudaStatus (*round_to)(const sparsa::Tensor* x, sparsa::CudaDtype dtype, sparsa::Tensor* out);
    // A CudaAttention, freed by engine_free (nullptr is fine).
    SparsaCliCudaStatus (*engine_new)(void** engine);
    void (*engine_free)(void* engine);
    SparsaCliCudaStatus (*engine_prepare)(void* engine, const sparsa::Tensor* q, const sparsa::Tensor* k,
                                          const sparsa::Tensor* v, const sparsa::MaskSet* masks, int64_t layer,
                                          const sparsa::CudaAttentionOptions* options);
    int32_t (*engine_kernel)(const void* engine);
    // ms: room for `runs` floats, the milliseconds of each timed run.
    SparsaCliCudaStatus (*engine_time_runs)(void* engine, int32_t warmup, int32_t runs, float* ms);
    SparsaCliCudaStatus (*engine_download)(void* engine, sparsa::AttentionOutput* out);

    // Version 2. A layer whatever its heads (lsh, anchors, favor and fixed, mixed): the fixed heads
    // through CudaAttention, each set of content heads of equal parameters through
    // CudaContentAttention (engine/cuda/content/content_cuda.hpp), freed by layer_free (nullptr is fine).
    SparsaCliCudaStatus (*layer_new)(void** layer);
    void (*layer_free)(void* layer);
    // arrays: the files the layer's specs name (io/content_files.hpp), or nullptr. options: dtype,
    // kernel (1: the simple kernels, for the content heads too), scale, poison_outputs.
    SparsaCliCudaStatus (*layer_prepare)(void* layer, const sparsa::Tensor* q, const sparsa::Tensor* k, const sparsa::Tensor* v,
                                         const sparsa::MaskSet* masks, int64_t layer_index, const sparsa::ContentArrays* arrays,
                                         const sparsa::CudaAttentionOptions* options);
    // ms: room for `runs` floats, the milliseconds of each timed run of the whole layer.
    SparsaCliCudaStatus (*layer_time_runs)(void* layer, int32_t warmup, int32_t runs, float* ms);
    // out: o [batch, heads, n, d], lse [batch, heads, n, 1] (NaN on favor heads, as the CPU engine gives it).
    SparsaCliCudaStatus (*layer_download)(void* layer, sparsa::AttentionOutput* out);
    // Of the last run: the content heads' phases, summed over their calls.
    SparsaCliCudaStatus (*layer_times)(void* layer, sparsa::CudaContentTimes* times);
    // Of the last run: the buckets the GPU drew for the lsh and anchors heads (ContentBuckets).
    SparsaCliCudaStatus (*layer_buckets)(void* layer, sparsa::ContentBuckets* buckets);
};

// The module's one exported symbol. Never null.
typedef const SparsaCliCudaApi* (*SparsaCliCudaEntry)();

} // extern "C"

// The sizes of the types passed by pointer, packed: a module built from other headers than the
// executable (a stale copy) is refused at load instead of reading the wrong fields.
constexpr uint64_t sparsa_cli_cuda_layout() {
    return (uint64_t{sizeof(sparsa::Tensor)} << 48) ^ (uint64_t{sizeof(sparsa::MaskSet)} << 32) ^
           (uint64_t{sizeof(sparsa::AttentionOutput)} << 16) ^ uint64_t{sizeof(sparsa::CudaAttentionOptions)} ^
           (uint64_t{sizeof(sparsa::TensorShape)} << 56) ^ (uint64_t{sizeof(sparsa::ContentArrays)} << 8) ^
           (uint64_t{sizeof(sparsa::ContentBuckets)} << 24) ^ (uint64_t{sizeof(sparsa::CudaContentTimes)} << 40) ^
           (uint64_t{sizeof(sparsa::ContentSpec)} << 4);
}
