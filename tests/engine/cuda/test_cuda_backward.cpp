// The CUDA backward against the CPU engine's backward (itself checked against the double
// reference by test_cpu_attention): every backward kernel and dtype on random masks (n not
// divisible by the block, a different mask per head, batch 2), every example pattern, empty
// rows, long rows split into chunks (kernels 3 to 9), dQ by atomics (kernel 4), wgmma (kernels 5 to 9,
// on compute capability 9.0), a negative scale, the GPU forward's lse fed to the
// GPU backward, and bad calls.
//
// Tolerances, per (batch, head) and gradient, the CPU engine run on the inputs rounded to the
// GPU's dtype (Q, K, V, O, dO; lse from the CPU forward on the rounded Q, K, V):
//   float32:     max |g - g_cpu| <= 1e-4 * max |g_cpu|
//   bf16, fp16:  max |g - g_cpu| <= 2e-2 * max |g_cpu|  (P, dS and the gradients are rounded to the dtype)
// Every element must be finite: the gradients are poisoned with NaN before each run, so an
// element no kernel wrote fails. Without a GPU (CI) every case that needs one prints one line
// saying it skipped and why, and passes.
#include "engine/cuda/attention_cuda_backward.hpp"

#include "engine/cpu_attention.hpp"
#include "engine/error.hpp"
#include "tests/engine/cuda/cuda_testing.hpp"
#include "tests/engine/mask_testing.hpp"
#ifdef SPARSA_HAVE_DSL
#include "dsl/script.hpp"
#endif

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

using namespace sparsa;
using Catch::Matchers::Contains;

namespace {

bool gpu_ready(const char* test) { return testing::gpu_ready("test_cuda_backward", test); }
using testing::set_of;
using testing::patterns_folder;

CudaAttentionBackward& engine() {
    static CudaAttentionBackward cuda;
    return cuda;
}

// got against want, head by head and gradient by gradient.
void check_grads(const AttentionGrads& got, const AttentionGrads& want, double tolerance) {
    const std::pair<const Tensor*, const Tensor*> pairs[] = {{&got.dq, &want.dq}, {&got.dk, &want.dk}, {&got.dv, &want.dv}};
    const char* names[] = {"dQ", "dK", "dV"};
    for (int g = 0; g < 3; ++g) {
        const Tensor& a = *pairs[g].first;
        const Tensor& w = *pairs[g].second;
        REQUIRE(a.shape == w.shape);
        const TensorShape s = a.shape;
        for (int64_t b = 0; b < s.batch; ++b) {
            for (int64_t h = 0; h < s.heads; ++h) {
                double err = 0, size = 0;
                int64_t not_finite = -1;
                for (int64_t i = 0; i < s.n; ++i) {
                    for (int64_t j = 0; j < s.d; ++j) {
                        const float x = a.at(b, h, i, j), y = w.at(b, h, i, j);
                        if (!std::isfinite(x) && not_finite < 0) not_finite = i;
                        err = std::max(err, static_cast<double>(std::abs(x - y)));
                        size = std::max(size, static_cast<double>(std::abs(y)));
                    }
                }
                INFO(names[g] << " of head [" << b << ", " << h << "]: max |error| " << err << ", max |CPU| " << size
                              << ", first non-finite row " << not_finite);
                CHECK(not_finite == -1);
                CHECK(err <= tolerance * std::max(size, 1e-30));
            }
        }
    }
}

// Every backward kernel from `first` on.
std::vector<int> kernels_from(int first) {
    std::vector<int> kernels;
    for (int k = first; k <= cuda_backward_kernel_count(); ++k) kernels.push_back(k);
    return kernels;
}

// Runs `kernels` (and each dtype they take; by default every kernel) on layer `layer` of `masks`
// with fresh random inputs and compares each with the CPU engine's backward on the same rounded inputs.
void check_backward(const MaskSet& masks, int64_t layer, int64_t batch, int64_t d, uint64_t seed,
                    std::vector<int> kernels = kernels_from(1), float scale = 0, int64_t split_steps = 0) {
    const TensorShape shape{batch, masks.heads, masks.n, d};
    const Tensor q = tensor_random(shape, seed), k = tensor_random(shape, seed + 1), v = tensor_random(shape, seed + 2);
    const Tensor d_o = tensor_random(shape, seed + 3);
    for (CudaDtype dtype : {CudaDtype::float32, CudaDtype::bfloat16, CudaDtype::float16}) {
        const Tensor qr = tensor_round_to(q, dtype), kr = tensor_round_to(k, dtype), vr = tensor_round_to(v, dtype);
        const Tensor dor = tensor_round_to(d_o, dtype);
        AttentionOptions cpu;
        cpu.scale = scale;
        const AttentionOutput fwd = attention_forward(qr, kr, vr, masks, layer, cpu);
        const Tensor orr = tensor_round_to(fwd.o, dtype);
        const AttentionGrads want = attention_backward(qr, kr, vr, orr, fwd.lse, dor, masks, layer, cpu);
        for (int kernel : kernels) {
            if (!cuda_backward_kernel_supports(kernel, dtype, d, masks.block)) continue;
            INFO("backward kernel " << kernel << ", " << cuda_dtype_name(dtype) << ", n " << masks.n << ", block "
                                    << masks.block << ", d " << d << ", batch " << batch << ", heads " << masks.heads
                                    << ", scale " << scale << ", split_steps " << split_steps);
            CudaBackwardOptions options;
            options.dtype = dtype;
            options.kernel = kernel;
            options.scale = scale;
            options.split_steps = split_steps;
            check_grads(engine().backward(qr, kr, vr, orr, fwd.lse, dor, masks, layer, options), want,
                        dtype == CudaDtype::float32 ? 1e-4 : 2e-2);
        }
    }
}

} // namespace

TEST_CASE("cuda backward: small sizes, both kernels (the sanitizer runs this)", "[cuda][backward][small]") {
    if (!gpu_ready("small sizes")) return;
    check_backward(set_of({testing::mask_random(200, 64, 1), testing::mask_random(200, 64, 2)}), 0, 1, 64, 11);
    check_backward(set_of({testing::mask_random(300, 128, 3), testing::mask_random(300, 128, 4)}), 0, 2, 128, 12);
}

TEST_CASE("cuda backward: random masks, n not divisible by the block, a mask per head, batch 2", "[cuda][backward]") {
    if (!gpu_ready("random masks")) return;
    uint64_t seed = 100;
    for (int32_t block : {64, 128, 256}) {
        for (int64_t n : {1000, 300}) {
            for (int64_t d : {64, 128}) {
                std::vector<BlockMask> masks;
                for (int h = 0; h < 3; ++h) masks.push_back(testing::mask_random(n, block, ++seed));
                check_backward(set_of(masks), 0, 2, d, ++seed);
            }
        }
    }
    // kernel 1 alone takes other head dims and small blocks
    check_backward(set_of({testing::mask_random(500, 16, 7), testing::mask_random(500, 16, 8)}), 0, 1, 40, 21, {1});
    check_backward(set_of({testing::mask_random(500, 32, 9)}), 0, 2, 256, 22, {1});
}

TEST_CASE("cuda backward: long rows and columns split into chunks and merged (kernels 3 to 9)", "[cuda][backward][small]") {
    if (!gpu_ready("split rows")) return;
    // Chunks of 1, 3 and 5 steps: every row and column with more is split, with chunks that end
    // inside a 128- or 256-token block, an empty mask (no step at all) and a dense one (every
    // row and column split), batch 2.
    const int64_t n = 700;
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 1);
    for (int32_t block : {64, 128, 256}) {
        const MaskSet masks = set_of({testing::mask_random(n, block, 71 + static_cast<uint64_t>(block)),
                                      block_mask_empty(n, block), block_mask_from_dense(n, block, dense.data()),
                                      testing::mask_random(n, block, 72 + static_cast<uint64_t>(block))});
        for (int64_t split : {1, 3, 5}) {
            check_backward(masks, 0, 2, block == 128 ? 128 : 64, 90 + static_cast<uint64_t>(split), kernels_from(3), 0, split);
        }
    }
}

TEST_CASE("cuda backward: empty rows and an empty mask give zero gradients; dense; a negative scale", "[cuda][backward][small]") {
    if (!gpu_ready("empty rows")) return;
    const int64_t n = 333;
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 1), some(static_cast<size_t>(n * n), 0);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j <= i; ++j) some[static_cast<size_t>(i * n + j)] = i % 3 != 0;   // every third row empty
    }
    const MaskSet masks = set_of({block_mask_empty(n, 64), block_mask_from_dense(n, 64, dense.data()),
                                  block_mask_from_dense(n, 64, some.data())});
    check_backward(masks, 0, 1, 64, 31);
    check_backward(masks, 0, 1, 128, 32, kernels_from(1), -0.07f);
    // the empty head's gradients are exactly zero
    const TensorShape shape{1, 3, n, 64};
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3), d_o = tensor_random(shape, 4);
    const AttentionOutput fwd = attention_forward(q, k, v, masks, 0);
    CudaBackwardOptions options;
    options.dtype = CudaDtype::float32;
    const AttentionGrads g = engine().backward(q, k, v, fwd.o, fwd.lse, d_o, masks, 0, options);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < 64; ++j) {
            REQUIRE(g.dq.at(0, 0, i, j) == 0.f);
            REQUIRE(g.dk.at(0, 0, i, j) == 0.f);
            REQUIRE(g.dv.at(0, 0, i, j) == 0.f);
            if (i % 3 == 0) REQUIRE(g.dq.at(0, 2, i, j) == 0.f);
        }
    }
}

TEST_CASE("cuda backward: the GPU forward's O and lse feed the GPU backward", "[cuda][backward][small]") {
    if (!gpu_ready("GPU forward then backward")) return;
    const MaskSet masks = set_of({testing::mask_random(700, 64, 41), testing::mask_random(700, 64, 42)});
    const TensorShape shape{2, 2, 700, 128};
    const Tensor q = tensor_random(shape, 5), k = tensor_random(shape, 6), v = tensor_random(shape, 7), d_o = tensor_random(shape, 8);
    for (CudaDtype dtype : {CudaDtype::bfloat16, CudaDtype::float16}) {
        CudaAttention forward;
        CudaAttentionOptions fo;
        fo.dtype = dtype;
        const AttentionOutput gpu = forward.forward(q, k, v, masks, 0, fo);
        CudaBackwardOptions bo;
        bo.dtype = dtype;
        const AttentionGrads got = engine().backward(q, k, v, gpu.o, gpu.lse, d_o, masks, 0, bo);
        const Tensor qr = tensor_round_to(q, dtype), kr = tensor_round_to(k, dtype), vr = tensor_round_to(v, dtype);
        const AttentionOutput cpu = attention_forward(qr, kr, vr, masks, 0);
        const AttentionGrads want = attention_backward(qr, kr, vr, tensor_round_to(cpu.o, dtype), cpu.lse,
                                                       tensor_round_to(d_o, dtype), masks, 0);
        INFO(cuda_dtype_name(dtype));
        check_grads(got, want, 2e-2);
    }
}

#ifdef SPARSA_HAVE_DSL
TEST_CASE("cuda backward: every example pattern compiled at n = 1000", "[cuda][backward][patterns]") {
    if (!gpu_ready("example patterns")) return;
    const std::filesystem::path patterns = patterns_folder();
    INFO("examples/patterns: " << patterns.string());
    REQUIRE(std::filesystem::is_directory(patterns));
    uint64_t seed = 80;
    for (const auto& e : std::filesystem::directory_iterator(patterns)) {
        if (e.path().extension() != ".pat") continue;
        INFO(e.path().filename().string());
        const MaskSet masks = dsl::script_compile(*dsl::script_load(e.path().string()), {.n = 1000, .content = true}).masks;
        if (!masks.content.empty()) continue;   // content-based heads: their own engines
        for (int64_t layer = 0; layer < masks.layers; ++layer) check_backward(masks, layer, 1, 64, seed += 4);
    }
}
#endif

TEST_CASE("cuda backward: bad calls are refused before anything runs", "[cuda][backward]") {
    if (!gpu_ready("bad calls")) return;
    const MaskSet masks = set_of({testing::mask_random(100, 64, 1)});
    const TensorShape shape{1, 1, 100, 64};
    const Tensor x = tensor_random(shape, 1);
    const AttentionOutput fwd = attention_forward(x, x, x, masks, 0);
    CudaBackwardOptions options;
    options.dtype = CudaDtype::float32;
    options.kernel = 2;
    CHECK_THROWS_WITH(engine().backward(x, x, x, fwd.o, fwd.lse, x, masks, 0, options), Contains("does not run dtype float32"));
    options.kernel = 0;
    const Tensor wrong = tensor_random({1, 1, 99, 64}, 2);
    CHECK_THROWS_WITH(engine().backward(x, x, x, fwd.o, fwd.lse, wrong, masks, 0, options), Contains("dO is"));
    // an lse that is not the forward's: the row and both values are named
    Tensor lse = fwd.lse;
    for (float& l : lse.data) l += 1.0f;
    CHECK_THROWS_WITH(engine().backward(x, x, x, fwd.o, lse, x, masks, 0, options), Contains("lse does not match"));
    lse.data[3] = std::nanf("");
    CHECK_THROWS_WITH(engine().backward(x, x, x, fwd.o, lse, x, masks, 0, options), Contains("lse[0, 0, 3, 0]"));
    options.dtype = CudaDtype::float16;
    Tensor big = x;
    big.data[5] = 1e6f;
    CHECK_THROWS_WITH(engine().backward(x, x, x, fwd.o, fwd.lse, big, masks, 0, options), Contains("beyond fp16's range"));
}
