// CudaLayerMasks (attention_cuda_device.hpp), the path sparsa.torch takes on CUDA tensors:
// on tensors uploaded by the test and a stream of its own, the forward and backward must give
// bit for bit what CudaAttention::forward and CudaAttentionBackward::backward give on the same
// inputs (the same kernels, chosen the same way), for bf16, fp16 and float32, batch 2, a mask per
// head; a second call with another batch re-plans; bad calls are refused. Without a GPU each case
// prints that it skipped and passes.
#include "engine/cuda/attention_cuda_device.hpp"

#include "engine/cuda/attention_cuda_backward.hpp"
#include "engine/error.hpp"
#include "tests/engine/cuda/cuda_testing.hpp"
#include "tests/engine/cuda/device_testing.hpp"
#include "tests/engine/mask_testing.hpp"

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

using namespace sparsa;
using Catch::Matchers::Contains;

namespace {

bool gpu_ready(const char* test) { return testing::gpu_ready("test_cuda_device", test); }
using testing::bytes_of;
using testing::Device;
using testing::download;
using testing::set_of;

} // namespace

TEST_CASE("cuda device path: the same bits as the host-tensor engines, on a stream of its own", "[cuda][device][small]") {
    if (!gpu_ready("device path")) return;
    const MaskSet masks = set_of({testing::mask_random(500, 64, 3), testing::mask_random(500, 64, 4)});
    cudaStream_t stream = nullptr;
    REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
    CudaLayerMasks device(masks, 0);
    for (int64_t batch : {2, 1}) {   // the second batch size re-plans the forward's work
        for (CudaDtype dtype : {CudaDtype::bfloat16, CudaDtype::float16, CudaDtype::float32}) {
            INFO(cuda_dtype_name(dtype) << ", batch " << batch);
            const TensorShape shape{batch, 2, 500, 128};
            const Tensor q = tensor_round_to(tensor_random(shape, 1), dtype), k = tensor_round_to(tensor_random(shape, 2), dtype);
            const Tensor v = tensor_round_to(tensor_random(shape, 3), dtype), d_o = tensor_round_to(tensor_random(shape, 4), dtype);
            CudaAttention host_forward;
            CudaAttentionOptions fo;
            fo.dtype = dtype;
            const AttentionOutput want = host_forward.forward(q, k, v, masks, 0, fo);
            CudaAttentionBackward host_backward;
            CudaBackwardOptions bo;
            bo.dtype = dtype;
            const AttentionGrads want_g = host_backward.backward(q, k, v, want.o, want.lse, d_o, masks, 0, bo);

            const size_t bytes = bytes_of(q, dtype).size(), rows = static_cast<size_t>(batch * 2 * 500);
            Device dq_in(bytes), dk_in(bytes), dv_in(bytes), d_out(bytes), d_lse(rows * 4), d_do(bytes), dq(bytes), dk(bytes),
                dv(bytes), delta(rows * 4);
            REQUIRE(cudaMemcpy(dq_in.ptr, bytes_of(q, dtype).data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess);
            REQUIRE(cudaMemcpy(dk_in.ptr, bytes_of(k, dtype).data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess);
            REQUIRE(cudaMemcpy(dv_in.ptr, bytes_of(v, dtype).data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess);
            REQUIRE(cudaMemcpy(d_do.ptr, bytes_of(d_o, dtype).data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess);
            CudaDeviceCall call;
            call.q = dq_in.ptr;
            call.k = dk_in.ptr;
            call.v = dv_in.ptr;
            call.batch = batch;
            call.heads = 2;
            call.n = 500;
            call.d = 128;
            call.dtype = dtype;
            call.stream = stream;
            device.forward(call, d_out.ptr, static_cast<float*>(d_lse.ptr));
            device.backward(call, d_out.ptr, static_cast<float*>(d_lse.ptr), d_do.ptr, dq.ptr, dk.ptr, dv.ptr,
                            static_cast<float*>(delta.ptr));
            REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
            CHECK(download(d_out, bytes) == bytes_of(want.o, dtype));
            std::vector<float> lse(rows);
            REQUIRE(cudaMemcpy(lse.data(), d_lse.ptr, rows * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
            CHECK(std::memcmp(lse.data(), want.lse.data.data(), rows * 4) == 0);
            CHECK(download(dq, bytes) == bytes_of(want_g.dq, dtype));
            CHECK(download(dk, bytes) == bytes_of(want_g.dk, dtype));
            CHECK(download(dv, bytes) == bytes_of(want_g.dv, dtype));
        }
    }
    cudaStreamDestroy(stream);
}

TEST_CASE("cuda device path: bad calls are refused", "[cuda][device]") {
    if (!gpu_ready("device bad calls")) return;
    const MaskSet masks = set_of({testing::mask_random(100, 64, 3)});
    CHECK_THROWS_WITH(CudaLayerMasks(masks, 1), Contains("layer 1 is out of range"));
    CudaLayerMasks device(masks, 0);
    Device x(1 << 16);
    CudaDeviceCall call;
    call.q = call.k = call.v = x.ptr;
    call.n = 99;
    call.d = 64;
    CHECK_THROWS_WITH(device.forward(call, x.ptr, static_cast<float*>(x.ptr)), Contains("masks are for n = 100"));
    call.n = 100;
    call.scale = -1;
    CHECK_THROWS_WITH(device.forward(call, x.ptr, static_cast<float*>(x.ptr)), Contains("must be positive"));
    call.scale = 0;
    call.d = 300;
    CHECK_THROWS_WITH(device.forward(call, x.ptr, static_cast<float*>(x.ptr)), Contains("d = 300"));
}
