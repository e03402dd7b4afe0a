// CudaLayerMasks's state (attention_cuda_device.hpp), shared by the translation units that
// define its calls: CudaLayerMasks::forward is in attention_cuda.cu and CudaLayerMasks::backward
// in attention_cuda_backward.cu, beside the engines whose private state they set (the callers'
// pointers and stream in place of the engines' own buffers); the rest in attention_cuda_device.cu.
#pragma once

#include "engine/cuda/attention_cuda.hpp"
#include "engine/cuda/attention_cuda_backward.hpp"
#include "engine/cuda/attention_cuda_device.hpp"
#include "engine/error.hpp"
#include "engine/reference.hpp"

#include <string>

namespace sparsa {

struct CudaLayerMasks::Impl {
    MaskSet masks;
    int64_t layer = 0;
    CudaAttention forward;
    CudaAttentionBackward backward;
    // what each engine was configured for (re-planned when one changes)
    struct Config {
        int64_t batch = -1, d = -1;
        CudaDtype dtype = CudaDtype::bfloat16;
        float scale = 0;
        bool columns = false;   // forward with columns: a 64-query-tile kernel
        bool operator==(const Config&) const = default;
    };
    Config forward_config, backward_config;

    // Checks what costs no copy from the GPU; returns the call's configuration (scale resolved).
    Config check(const std::string& what, const CudaDeviceCall& call) const {
        if (call.n != masks.n || call.heads != masks.heads) {
            throw Error(what + ": q is [" + std::to_string(call.batch) + ", " + std::to_string(call.heads) + ", " +
                        std::to_string(call.n) + ", " + std::to_string(call.d) + "] but the masks are for n = " +
                        std::to_string(masks.n) + " and " + std::to_string(masks.heads) +
                        " heads (compile the masks for this n and head count)");
        }
        if (call.batch < 1 || call.batch > 65535 || call.heads > 65535) {
            throw Error(what + ": batch is " + std::to_string(call.batch) + " and heads " + std::to_string(call.heads) +
                        " (each from 1 to 65535: split the call)");
        }
        if (call.q == nullptr || call.k == nullptr || call.v == nullptr) {
            throw Error(what + ": q, k or v is a null pointer (pass the tensors' device addresses)");
        }
        if (!cuda_kernel_supports(1, call.dtype, call.d, masks.block)) {
            throw Error(what + ": head dim d = " + std::to_string(call.d) + " is not run on the GPU (d from 1 to 256; "
                        "the tensor-core kernels take d = 64 or 128 in bf16 or fp16)");
        }
        const double scale = attention_scale(what, call.scale, call.d);
        if (!(scale > 0)) {
            throw Error(what + ": scale = " + std::to_string(scale) +
                        " is negative; on tensors already on the GPU the scale must be positive (negate K instead)");
        }
        return {call.batch, call.d, call.dtype, static_cast<float>(scale)};
    }
};

} // namespace sparsa
