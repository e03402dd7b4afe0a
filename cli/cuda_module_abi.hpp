// The C ABI between the sparsa executable and libsparsa_cli_cuda.so, the module that holds the
// CLI's CUDA engine (engine/cuda/attention_cuda.hpp) so that sparsa maps its 8 MB of kernels and
// CUDA runtime only when a command asks for the GPU (issue 17: under ulimit -v 10240 a sparsa
// with them linked in could not even be started). cli/cuda_module.hpp is the side the CLI calls.
//
// One entry point, sparsa_cli_cuda_api(), returns a table of plain functions. No C++ exception
// crosses the boundary: the module catches everything and returns a status; the executable
// rethrows it as its own sparsa::Error (the module's copy of that type is hidden, not shared).
// The sparsa types passed by pointer (Tensor, MaskSet, AttentionOutput, CudaAttentionOptions)
// come from the same headers and the same build on both sides; `layout` checks that at load.
#pragma once

#include "engine/cpu_attention.hpp"
#include "engine/cuda/attention_cuda.hpp"

#include <cstdint>

extern "C" {

// Bump when a function is added, removed or changes its arguments.
#define SPARSA_CLI_CUDA_VERSION 1
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
};

// The module's one exported symbol. Never null.
typedef const SparsaCliCudaApi* (*SparsaCliCudaEntry)();

} // extern "C"

// The sizes of the types passed by pointer, packed: a module built from other headers than the
// executable (a stale copy) is refused at load instead of reading the wrong fields.
constexpr uint64_t sparsa_cli_cuda_layout() {
    return (uint64_t{sizeof(sparsa::Tensor)} << 48) ^ (uint64_t{sizeof(sparsa::MaskSet)} << 32) ^
           (uint64_t{sizeof(sparsa::AttentionOutput)} << 16) ^ uint64_t{sizeof(sparsa::CudaAttentionOptions)} ^
           (uint64_t{sizeof(sparsa::TensorShape)} << 56);
}
