// Host-side pieces every CUDA translation unit of the engine shares (nvcc only: it needs the
// CUDA runtime and fp16 headers): checked CUDA calls, growing device buffers, and the bf16 /
// fp16 conversions and range checks of what is uploaded.
#pragma once

#include "engine/cuda/attention_cuda.hpp"
#include "engine/error.hpp"
#include "engine/reference.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace sparsa::cuda_host {

// Every CUDA call goes through this: a failure throws naming the call and what it said.
inline void cuda_check(cudaError_t err, const char* call) {
    if (err != cudaSuccess) {
        throw Error(std::string("CUDA engine: ") + call + " failed: " + cudaGetErrorString(err) +
                    " (check the GPU with nvidia-smi; rerun with compute-sanitizer to find a bad access)");
    }
}
#define SPARSA_CUDA_CHECK(call) cuda_check((call), #call)

// float -> bf16 bits, round to nearest even (inputs are finite: checked before).
inline uint16_t bf16_bits(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}
inline float bf16_value(uint16_t bits) {
    const uint32_t u = uint32_t{bits} << 16;
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
inline uint16_t fp16_bits(float x) {
    const __half_raw r = __half(__float2half_rn(x));
    return r.x;
}
inline float fp16_value(uint16_t bits) {
    __half_raw r;
    r.x = bits;
    return __half2float(__half(r));
}

// The tensor as the GPU stores it: float32 as is, else 16-bit words; with `negate`, -x (exact
// in every dtype: how a negative scale reaches the kernels, see prepare).
inline std::vector<uint16_t> tensor_to_16bit(const Tensor& x, CudaDtype dtype, bool negate = false) {
    std::vector<uint16_t> out(x.data.size());
    for (size_t e = 0; e < out.size(); ++e) {
        const float value = negate ? -x.data[e] : x.data[e];
        out[e] = dtype == CudaDtype::bfloat16 ? bf16_bits(value) : fp16_bits(value);
    }
    return out;
}

// Throws when an element of x (finite: checked before) rounds to infinity in `dtype`: fp16's
// largest value is 65504 (from 65520 up a float rounds to inf), bf16's 3.39e38 (from 3.3962e38,
// just below FLT_MAX). Names the tensor, the index and the value, and what to do instead.
inline void tensor_check_dtype_range(const std::string& what, const Tensor& x, const char* name, CudaDtype dtype) {
    if (dtype == CudaDtype::float32) return;
    const bool half = dtype == CudaDtype::float16;
    for (size_t e = 0; e < x.data.size(); ++e) {
        const float rounded = half ? fp16_value(fp16_bits(x.data[e])) : bf16_value(bf16_bits(x.data[e]));
        if (std::isfinite(rounded)) continue;
        char value[32];
        std::snprintf(value, sizeof value, "%g", static_cast<double>(x.data[e]));
        throw Error(what + ": " + name + tensor_index_text(x.shape, e) + " = " + value + " is beyond " +
                    cuda_dtype_name(dtype) + "'s range (largest " + (half ? "65504" : "3.39e38") +
                    ") and would be inf on the GPU (" +
                    (half ? "use dtype bf16, which has float32's range, or scale " + std::string(name) + " down"
                          : "scale " + std::string(name) + " down, or use dtype float32") + ")");
    }
}

// Device memory that grows on demand and is kept across calls.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() {
        if (ptr_ != nullptr) cudaFree(ptr_);   // no throw from a destructor
    }
    void* reserve(size_t bytes) {
        bytes = bytes == 0 ? 16 : bytes;
        if (bytes > bytes_) {
            if (ptr_ != nullptr) SPARSA_CUDA_CHECK(cudaFree(ptr_));
            ptr_ = nullptr;
            bytes_ = 0;
            SPARSA_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
            bytes_ = bytes;
        }
        return ptr_;
    }
    template <typename T> T* upload(const T* data, size_t count) {
        void* p = reserve(count * sizeof(T));
        if (count > 0) SPARSA_CUDA_CHECK(cudaMemcpy(p, data, count * sizeof(T), cudaMemcpyHostToDevice));
        return static_cast<T*>(p);
    }
    template <typename T> T* upload(const std::vector<T>& v) { return upload(v.data(), v.size()); }
    template <typename T> T* as() const { return static_cast<T*>(ptr_); }
    void* get() const { return ptr_; }

private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

template <int V> using Int = std::integral_constant<int, V>;

// The one switch from a call's runtime dtype to the element type the kernels are built for:
// f(x) with x a float, __nv_bfloat16 or __half (its value unused).
template <typename F> void with_dtype(CudaDtype dtype, F&& f) {
    switch (dtype) {
    case CudaDtype::float32: f(float{}); break;
    case CudaDtype::bfloat16: f(__nv_bfloat16{}); break;
    case CudaDtype::float16: f(__half{}); break;
    }
}

// The tensor-core kernels' head dim (64, else 128) and mask block (64, 128, else 256) as template
// parameters: f(Int<D>{}, Int<B>{}). The callers have checked that the kernel runs them.
template <typename F> void with_tensor_core_shape(int64_t d, int32_t block, F&& f) {
    const auto with_dim = [&](auto d_tag) {
        switch (block) {
        case 64: f(d_tag, Int<64>{}); break;
        case 128: f(d_tag, Int<128>{}); break;
        default: f(d_tag, Int<256>{}); break;
        }
    };
    if (d == 64) with_dim(Int<64>{});
    else with_dim(Int<128>{});
}

// Milliseconds of each of `runs` calls of run() (CUDA events around each on the default stream),
// after `warmup` untimed ones: the engines' time_runs.
template <typename Run> std::vector<float> time_event_runs(Run&& run, cudaEvent_t start, cudaEvent_t stop, int warmup, int runs) {
    for (int i = 0; i < warmup; ++i) run();
    SPARSA_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> ms;
    for (int i = 0; i < runs; ++i) {
        SPARSA_CUDA_CHECK(cudaEventRecord(start));
        run();
        SPARSA_CUDA_CHECK(cudaEventRecord(stop));
        SPARSA_CUDA_CHECK(cudaEventSynchronize(stop));
        float t = 0;
        SPARSA_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
        ms.push_back(t);
    }
    return ms;
}

} // namespace sparsa::cuda_host
