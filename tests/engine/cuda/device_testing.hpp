// Device memory for the CUDA tests of the device paths (test_cuda_device.cpp, test_content_cuda_device.cpp):
// a buffer freed at the end of its scope, a tensor's values as the dtype's words to upload, and a
// buffer's bytes downloaded, to compare bit for bit.
#pragma once

#include "engine/cuda/attention_cuda.hpp"
#include "engine/tensor.hpp"

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace sparsa::testing {

// Device memory for the test, freed at the end of the scope.
struct Device {
    void* ptr = nullptr;
    explicit Device(size_t bytes) { REQUIRE(cudaMalloc(&ptr, bytes) == cudaSuccess); }
    ~Device() { cudaFree(ptr); }
    Device(const Device&) = delete;
    Device& operator=(const Device&) = delete;
};

// x (already rounded to dtype) as the dtype's words.
inline std::vector<uint8_t> bytes_of(const Tensor& x, CudaDtype dtype) {
    std::vector<uint8_t> out(x.data.size() * (dtype == CudaDtype::float32 ? 4 : 2));
    for (size_t e = 0; e < x.data.size(); ++e) {
        uint32_t u;
        std::memcpy(&u, &x.data[e], 4);
        if (dtype == CudaDtype::float32) {
            std::memcpy(out.data() + 4 * e, &u, 4);
            continue;
        }
        uint16_t w;
        if (dtype == CudaDtype::bfloat16) {
            w = static_cast<uint16_t>(u >> 16);   // exact: x is already bf16
        } else {
            // fp16 from a float that is exactly an fp16 value (normal or subnormal)
            const float f = x.data[e];
            const uint32_t sign = (u >> 16) & 0x8000u;
            const float a = std::abs(f);
            if (a == 0) w = static_cast<uint16_t>(sign);
            else if (a < 6.103515625e-05f) w = static_cast<uint16_t>(sign | static_cast<uint32_t>(a / 5.9604644775390625e-08f));
            else {
                const int32_t exponent = static_cast<int32_t>((u >> 23) & 0xff) - 127 + 15;
                w = static_cast<uint16_t>(sign | (static_cast<uint32_t>(exponent) << 10) | ((u >> 13) & 0x3ffu));
            }
        }
        std::memcpy(out.data() + 2 * e, &w, 2);
    }
    return out;
}

inline std::vector<uint8_t> download(const Device& d, size_t bytes) {
    std::vector<uint8_t> out(bytes);
    REQUIRE(cudaMemcpy(out.data(), d.ptr, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
    return out;
}

} // namespace sparsa::testing
