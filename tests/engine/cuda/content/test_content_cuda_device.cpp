// CudaContentAttention::forward_device, the path sparsa.torch takes for content-based layers of
// CUDA tensors: on inputs the test uploads, o and lse must be forward's (host tensors) bit for bit
// (the same kernels on the same values) for lsh and favor, bf16 and float32, causal or not, batch 2;
// a layer with fixed blocks beside its content heads, shapes the masks lack and null pointers are
// refused. Without a GPU the case prints that it skipped and passes.
#include "engine/cuda/content/content_cuda.hpp"

#include "engine/cuda/attention_cuda.hpp"
#include "engine/error.hpp"
#include "engine/tensor.hpp"
#include "tests/engine/cuda/content/content_cuda_testing.hpp"
#include "tests/engine/cuda/cuda_testing.hpp"
#include "tests/engine/cuda/device_testing.hpp"

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

using namespace sparsa;
using Catch::Matchers::Contains;
using testing::bytes_of;
using testing::content_set;
using testing::Device;
using testing::download;
using testing::window_mask;

TEST_CASE("cuda content: the device path gives forward's bits on the caller's memory", "[cuda][content][device][small]") {
    if (!testing::gpu_ready("test_content_cuda", "device path")) return;
    const int64_t n = 300, d = 64, heads = 2, batch = 2;
    const TensorShape shape{batch, heads, n, d};
    for (const CudaDtype dtype : {CudaDtype::bfloat16, CudaDtype::float32}) {
        for (const ContentKind kind : {ContentKind::lsh, ContentKind::favor}) {
            for (const bool causal : {false, true}) {
                ContentSpec spec;
                spec.kind = kind;
                spec.buckets = 8;
                spec.rounds = 2;
                spec.chunk = 64;
                spec.features = 32;
                spec.seed = 4;
                spec.causal = causal;
                const MaskSet set = content_set(n, heads, {}, spec);
                const CudaContentNumbers numbers = cuda_content_numbers(set, 0, d, nullptr);
                INFO((kind == ContentKind::lsh ? "lsh" : "favor") << " causal " << causal << " " << cuda_dtype_name(dtype));
                const Tensor q = tensor_round_to(tensor_random(shape, 31), dtype);
                const Tensor k = tensor_round_to(tensor_random(shape, 32), dtype);
                const Tensor v = tensor_round_to(tensor_random(shape, 33), dtype);
                CudaContentOptions options;
                options.dtype = dtype;
                const AttentionOutput want = testing::content_engine().forward(q, k, v, set, 0, numbers, options);
                const size_t bytes = bytes_of(q, dtype).size(), lse_bytes = static_cast<size_t>(batch * heads * n) * 4;
                const Device dq(bytes), dk(bytes), dv(bytes), o(bytes), lse(lse_bytes);
                REQUIRE(cudaMemcpy(dq.ptr, bytes_of(q, dtype).data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess);
                REQUIRE(cudaMemcpy(dk.ptr, bytes_of(k, dtype).data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess);
                REQUIRE(cudaMemcpy(dv.ptr, bytes_of(v, dtype).data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess);
                CudaContentDeviceCall call{dq.ptr, dk.ptr, dv.ptr, o.ptr, static_cast<float*>(lse.ptr), batch, heads, n, d};
                testing::content_engine().forward_device(call, set, 0, numbers, options);
                REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
                CHECK(download(o, bytes) == bytes_of(want.o, dtype));   // forward's o holds the dtype's values as floats
                CHECK(download(lse, lse_bytes) == bytes_of(want.lse, CudaDtype::float32));
            }
        }
    }
    // refused: a fixed part beside the content heads (its pass needs host tensors), shapes the masks lack, null pointers
    ContentSpec spec;
    spec.buckets = 8;
    spec.rounds = 1;
    const MaskSet windowed = content_set(n, heads, window_mask(n, 16, false), spec);
    const CudaContentNumbers numbers = cuda_content_numbers(windowed, 0, d, nullptr);
    const Device x(static_cast<size_t>(shape.size()) * 2), lse(static_cast<size_t>(batch * heads * n) * 4);
    CudaContentDeviceCall call{x.ptr, x.ptr, x.ptr, x.ptr, static_cast<float*>(lse.ptr), batch, heads, n, d};
    CHECK_THROWS_WITH(testing::content_engine().forward_device(call, windowed, 0, numbers), Contains("fixed blocks"));
    const MaskSet plain = content_set(n, heads, {}, spec);
    call.n = n + 1;
    CHECK_THROWS_WITH(testing::content_engine().forward_device(call, plain, 0, numbers), Contains("n"));
    call.n = n;
    call.lse = nullptr;
    CHECK_THROWS_WITH(testing::content_engine().forward_device(call, plain, 0, numbers), Contains("null pointer"));
}
