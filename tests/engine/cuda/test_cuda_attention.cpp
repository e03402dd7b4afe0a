// The CUDA engine against the CPU engine (engine/cpu_attention.hpp, itself checked against the
// double reference): every kernel and dtype on random masks (n not divisible by the block, a
// different mask per head, batch > 1), on masks loaded from .npz (every file in the folder
// $SPARSA_CUDA_TEST_MASKS, e.g. the example patterns compiled at n = 1000; and, when dsl/ is
// built, every examples/patterns/*.pat compiled here, found under $SPARSA_SOURCE_DIR), empty
// rows, bad calls, and inputs beyond the dtype's or float32's range (cuda_attention_check, whose
// case runs without a GPU too).
//
// Tolerances, per (batch, head), the CPU engine run on the inputs rounded to the GPU's dtype:
//   float32:     max |O - O_cpu| <= 1e-5 * max |O_cpu|;  |lse - lse_cpu| <= 1e-5 * max(1, |lse_cpu|)
//   bf16, fp16:  the same with 2e-2 (P and O are rounded to the dtype on the GPU)
//   lse is -inf exactly where the CPU's is, and every output element is finite: outputs are
//   poisoned with NaN before each run, so an element no kernel wrote fails.
// Without a GPU (CI) every case that needs one prints one line saying it skipped and why, and passes.
#include "engine/cuda/attention_cuda.hpp"

#include "engine/cpu_attention.hpp"
#include "engine/error.hpp"
#include "engine/reference.hpp"
#include "io/mask_io.hpp"
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

bool gpu_ready(const char* test) { return testing::gpu_ready("test_cuda_attention", test); }
// gpu_ready, and a GPU that runs kernels 10 to 19 (sm_90a); else says which kernels are skipped.
bool wgmma_ready(const char* test, const char* kernels) {
    if (!gpu_ready(test)) return false;
    if (cuda_device_has_wgmma()) return true;
    std::printf("test_cuda_attention: %s: skipped: kernels %s need compute capability 9.0\n", test, kernels);
    return false;
}
using testing::set_of;
using testing::patterns_folder;

constexpr double kFloat32Tolerance = 1e-5;
constexpr double kHalfTolerance = 2e-2;

double tolerance_of(CudaDtype dtype) { return dtype == CudaDtype::float32 ? kFloat32Tolerance : kHalfTolerance; }

// One engine for the whole program: its buffers are reused across calls, as users would.
CudaAttention& engine() {
    static CudaAttention cuda;
    return cuda;
}

// got against want (the CPU engine), head by head, with the tolerances above.
void check_output(const AttentionOutput& got, const AttentionOutput& want, double tolerance) {
    REQUIRE(got.o.shape == want.o.shape);
    REQUIRE(got.lse.shape == want.lse.shape);
    const TensorShape s = got.o.shape;
    for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t h = 0; h < s.heads; ++h) {
            double err = 0, size = 0, lse_err = 0;
            int64_t bad_lse = -1, not_finite = -1;
            for (int64_t i = 0; i < s.n; ++i) {
                for (int64_t j = 0; j < s.d; ++j) {
                    const float g = got.o.at(b, h, i, j), w = want.o.at(b, h, i, j);
                    if (!std::isfinite(g) && not_finite < 0) not_finite = i;
                    err = std::max(err, static_cast<double>(std::abs(g - w)));
                    size = std::max(size, static_cast<double>(std::abs(w)));
                }
                const float gl = got.lse.at(b, h, i, 0), wl = want.lse.at(b, h, i, 0);
                if (std::isinf(wl) && wl < 0) {
                    if (!(std::isinf(gl) && gl < 0) && bad_lse < 0) bad_lse = i;
                } else if (!std::isfinite(gl)) {
                    if (bad_lse < 0) bad_lse = i;
                } else {
                    lse_err = std::max(lse_err, std::abs(gl - wl) / std::max(1.0, std::abs(static_cast<double>(wl))));
                }
            }
            INFO("head [" << b << ", " << h << "]: max |O error| " << err << ", max |O_cpu| " << size
                          << ", lse relative error " << lse_err << ", first non-finite O row " << not_finite
                          << ", first wrong -inf lse row " << bad_lse);
            CHECK(not_finite == -1);
            CHECK(bad_lse == -1);
            CHECK(err <= tolerance * std::max(size, 1e-30));
            CHECK(lse_err <= tolerance);
        }
    }
}

// Runs `kernels` (and each dtype they take) on layer `layer` of `masks` with fresh random inputs
// [batch, heads, n, d] and compares each with the CPU engine on the same (rounded) inputs.
void check_kernels(const MaskSet& masks, int64_t layer, int64_t batch, int64_t d, uint64_t seed,
                   std::vector<int> kernels = {},   // {}: every kernel
                   int64_t split_steps = 0,         // kernels 7 to 16: CudaAttentionOptions::split_steps
                   int64_t persistent_blocks = 0) { // kernels 13 and 19: CudaAttentionOptions::persistent_blocks
    if (kernels.empty()) {
        for (int kernel = 1; kernel <= cuda_kernel_count(); ++kernel) kernels.push_back(kernel);
    }
    const TensorShape shape{batch, masks.heads, masks.n, d};
    const Tensor q = tensor_random(shape, seed), k = tensor_random(shape, seed + 1), v = tensor_random(shape, seed + 2);
    for (CudaDtype dtype : {CudaDtype::float32, CudaDtype::bfloat16, CudaDtype::float16}) {
        const Tensor qr = tensor_round_to(q, dtype), kr = tensor_round_to(k, dtype), vr = tensor_round_to(v, dtype);
        const AttentionOutput want = attention_forward(qr, kr, vr, masks, layer);
        for (int kernel : kernels) {
            if (!cuda_kernel_supports(kernel, dtype, d, masks.block)) continue;
            INFO("kernel " << kernel << ", " << cuda_dtype_name(dtype) << ", n " << masks.n << ", block " << masks.block
                           << ", d " << d << ", batch " << batch << ", heads " << masks.heads << ", layer " << layer
                           << ", split_steps " << split_steps << ", persistent_blocks " << persistent_blocks);
            CudaAttentionOptions options;
            options.dtype = dtype;
            options.kernel = kernel;
            options.split_steps = split_steps;
            options.persistent_blocks = persistent_blocks;
            check_output(engine().forward(q, k, v, masks, layer, options), want, tolerance_of(dtype));
        }
    }
}

} // namespace

TEST_CASE("cuda: small sizes, every kernel (the sanitizer runs this)", "[cuda][small]") {
    if (!gpu_ready("small sizes")) return;
    std::printf("test_cuda_attention: kernels 10 to 19 (wgmma) %s\n",
                cuda_device_has_wgmma() ? "run here and are checked" : "skipped: this GPU is not compute capability 9.0");
    // n = 200 (B = 64, short last block), n = 300 with B = 128: the last 64-key tile lies past n.
    check_kernels(set_of({testing::mask_random(200, 64, 1), testing::mask_random(200, 64, 2)}), 0, 1, 64, 11);
    check_kernels(set_of({testing::mask_random(300, 128, 3), testing::mask_random(300, 128, 4)}), 0, 2, 128, 12);
}

TEST_CASE("cuda: random masks, n not divisible by the block, a mask per head, batch 2", "[cuda]") {
    if (!gpu_ready("random masks")) return;
    uint64_t seed = 100;
    for (int32_t block : {64, 128, 256}) {
        for (int64_t n : {1000, 300}) {
            for (int64_t d : {64, 128}) {
                std::vector<BlockMask> masks;
                for (int h = 0; h < 3; ++h) masks.push_back(testing::mask_random(n, block, ++seed));
                check_kernels(set_of(masks), 0, 2, d, ++seed);
            }
        }
    }
    // kernel 1 alone takes other head dims and small blocks
    check_kernels(set_of({testing::mask_random(500, 16, 7), testing::mask_random(500, 16, 8)}), 0, 1, 40, 21, {1});
    check_kernels(set_of({testing::mask_random(500, 32, 9)}), 0, 2, 256, 22, {1});
}

TEST_CASE("cuda: long rows split into chunks and merged (kernels 7 to 19)", "[cuda][small]") {
    if (!gpu_ready("split rows")) return;
    // Chunks of 1, 3 and 5 key tiles: every row with more is split, with chunks that end inside
    // a 128- or 256-token block, rows of the union of two mask rows (kernel 7, B = 64), an
    // empty mask (no chunk at all) and a dense one (every row split), batch 2.
    const int64_t n = 700;
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 1);
    for (int32_t block : {64, 128, 256}) {
        const MaskSet masks = set_of({testing::mask_random(n, block, 71 + static_cast<uint64_t>(block)),
                                      block_mask_empty(n, block), block_mask_from_dense(n, block, dense.data()),
                                      testing::mask_random(n, block, 72 + static_cast<uint64_t>(block))});
        for (int64_t split : {1, 3, 5}) {
            check_kernels(masks, 0, 2, block == 128 ? 128 : 64, 90 + static_cast<uint64_t>(split), {7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19}, split);
        }
    }
}

TEST_CASE("cuda: kernels 13 and 19 with few thread blocks, each running many work items", "[cuda][small]") {
    if (!wgmma_ready("persistent blocks", "13 and 19")) return;
    // 1, 2 and 5 blocks over every (batch, head, tile): a block's next tile after a tile with
    // steps, after an empty row (no step), after a split chunk, and across the batch; with and
    // without split rows.
    const int64_t n = 700;
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 1);
    for (int32_t block : {64, 128}) {
        const MaskSet masks = set_of({testing::mask_random(n, block, 171 + static_cast<uint64_t>(block)),
                                      block_mask_empty(n, block), block_mask_from_dense(n, block, dense.data())});
        for (int64_t blocks : {1, 2, 5}) {
            for (int64_t split : {0, 3}) {
                check_kernels(masks, 0, 2, block == 128 ? 128 : 64, 190 + static_cast<uint64_t>(blocks), {13, 19}, split, blocks);
            }
        }
    }
}

TEST_CASE("cuda: kernels 17 to 19 on rows longer than their ring of stages", "[cuda][small][ring]") {
    if (!wgmma_ready("ring of stages", "17 to 19")) return;
    // n = 1,000: a dense row is 16 key tiles, 16 steps of 17 and 8 of 18 and 19 against 3 stages, so
    // every stage is refilled (its K, V and the producer's mask records written again) while
    // consumers read the others; 19 with one block runs every item through one ring. The sanitizer's
    // racecheck runs this case ("[ring]"): the split and small cases have rows of 3 steps at most
    // for 18, which never reuse a stage.
    const int64_t n = 1000;
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 1);
    for (int32_t block : {64, 128}) {
        const MaskSet masks = set_of({block_mask_from_dense(n, block, dense.data()), testing::mask_random(n, block, 281 + static_cast<uint64_t>(block))});
        const int64_t d = block == 128 ? 128 : 64;
        check_kernels(masks, 0, 1, d, 290 + static_cast<uint64_t>(block), {17, 18, 19});
        check_kernels(masks, 0, 1, d, 291 + static_cast<uint64_t>(block), {19}, 0, 1);
    }
}

TEST_CASE("cuda: empty rows give zeros and lse = -inf; dense and causal blocks", "[cuda]") {
    if (!gpu_ready("empty rows")) return;
    const int64_t n = 700;
    std::vector<uint8_t> causal(static_cast<size_t>(n * n), 0), dense(static_cast<size_t>(n * n), 1);
    for (int64_t q = 0; q < n; ++q) {
        for (int64_t k = 0; k <= q; ++k) causal[static_cast<size_t>(q * n + k)] = 1;
    }
    for (int32_t block : {64, 128}) {
        const MaskSet masks = set_of({block_mask_empty(n, block), block_mask_from_dense(n, block, causal.data()),
                                      block_mask_from_dense(n, block, dense.data())});
        check_kernels(masks, 0, 1, 128, 31 + static_cast<uint64_t>(block));
        const Tensor x = tensor_random({1, 3, n, 64}, 5);
        CudaAttentionOptions options;
        for (int kernel = 1; kernel <= cuda_kernel_count(); ++kernel) {
            options.kernel = kernel;
            const AttentionOutput out = engine().forward(x, x, x, masks, 0, options);
            bool zeros = true, minus_inf = true;
            for (int64_t i = 0; i < n; ++i) {
                minus_inf = minus_inf && std::isinf(out.lse.at(0, 0, i, 0)) && out.lse.at(0, 0, i, 0) < 0;
                for (int64_t j = 0; j < 64; ++j) zeros = zeros && out.o.at(0, 0, i, j) == 0.f;
            }
            INFO("kernel " << kernel << ", block " << block);
            CHECK(zeros);
            CHECK(minus_inf);
        }
    }
}

TEST_CASE("cuda: masks saved to and loaded from .npz, two layers, shared masks", "[cuda]") {
    if (!gpu_ready("masks from .npz")) return;
    const int64_t n = 1000;
    std::vector<std::shared_ptr<const BlockMask>> ptrs;
    for (int i = 0; i < 8; ++i) ptrs.push_back(std::make_shared<BlockMask>(testing::mask_random(n, 64, 40 + i % 3)));
    const MaskSet saved = mask_set_make(2, 4, ptrs);
    testing::TempDir dir;
    mask_set_save(saved, dir.file("masks.npz"));
    const MaskSet masks = mask_set_load(dir.file("masks.npz"));
    check_kernels(masks, 0, 2, 64, 51);
    check_kernels(masks, 1, 1, 128, 52);
}

TEST_CASE("cuda: every .npz in $SPARSA_CUDA_TEST_MASKS (example patterns compiled elsewhere)", "[cuda][patterns]") {
    if (!gpu_ready("masks of $SPARSA_CUDA_TEST_MASKS")) return;
    const char* folder = std::getenv("SPARSA_CUDA_TEST_MASKS");
    if (folder == nullptr || !std::filesystem::is_directory(folder)) {
        std::printf("test_cuda_attention: $SPARSA_CUDA_TEST_MASKS is not a folder: no .npz masks checked\n");
        return;
    }
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(folder)) {
        if (e.path().extension() == ".npz") files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    REQUIRE(!files.empty());
    uint64_t seed = 60;
    for (const auto& file : files) {
        const MaskSet masks = mask_set_load(file.string());
        INFO(file.filename().string());
        for (int64_t layer = 0; layer < masks.layers; ++layer) check_kernels(masks, layer, 1, 64, seed += 3);
    }
}

#ifdef SPARSA_HAVE_DSL
TEST_CASE("cuda: every example pattern compiled at n = 1000", "[cuda][patterns]") {
    if (!gpu_ready("example patterns")) return;
    const std::filesystem::path patterns = patterns_folder();
    INFO("examples/patterns: " << patterns.string());
    REQUIRE(std::filesystem::is_directory(patterns));
    uint64_t seed = 80;
    for (const auto& e : std::filesystem::directory_iterator(patterns)) {
        if (e.path().extension() != ".pat") continue;
        INFO(e.path().filename().string());
        const MaskSet masks = dsl::script_compile(*dsl::script_load(e.path().string()), {.n = 1000, .content = true}).masks;
        if (!masks.content.empty()) continue;  // lsh, anchors, favor: test_content_cuda covers them
        for (int64_t layer = 0; layer < masks.layers; ++layer) check_kernels(masks, layer, 1, 64, seed += 3);
    }
}
#endif

TEST_CASE("cuda: calls a kernel cannot run are refused with what to use", "[cuda]") {
    if (!gpu_ready("bad calls")) return;
    const MaskSet masks = set_of({testing::mask_random(100, 64, 1)});
    const Tensor x = tensor_random({1, 1, 100, 96}, 1);
    CudaAttentionOptions options;
    options.kernel = 2;
    CHECK_THROWS_WITH(engine().forward(x, x, x, masks, 0, options), Contains("kernel 1 runs any"));
    const Tensor y = tensor_random({1, 1, 100, 64}, 2);
    options.dtype = CudaDtype::float32;
    CHECK_THROWS_WITH(engine().forward(y, y, y, masks, 0, options), Contains("does not run dtype float32"));
    options.kernel = 0;   // picks kernel 1 for float32
    engine().prepare(y, y, y, masks, 0, options);
    CHECK(engine().kernel() == 1);
    options.dtype = CudaDtype::bfloat16;
    engine().prepare(y, y, y, masks, 0, options);
    // kernel 0 in bf16 (cuda_auto_kernel): with wgmma 15 at d = 64 and on short rows, 19 on long
    // uniform ones at d = 128; else 128-query tiles (7) where a tile's two halves keep the same
    // blocks, 64-query tiles (9) where they keep different ones
    const bool wgmma = cuda_device_has_wgmma();
    CHECK((wgmma ? engine().kernel() == 15 : engine().kernel() == 7 || engine().kernel() == 9));
    const int64_t n = 1024;
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 1), diagonal(static_cast<size_t>(n * n), 0);
    for (int64_t q = 0; q < n; ++q) diagonal[static_cast<size_t>(q * n + q)] = 1;
    for (int64_t d : {64, 128}) {
        const Tensor z = tensor_random({1, 1, n, d}, 4);
        engine().prepare(z, z, z, set_of({block_mask_from_dense(n, 64, dense.data())}), 0, options);   // 16 key tiles a row
        CHECK(engine().kernel() == (wgmma ? (d == 128 ? 19 : 15) : 7));
        engine().prepare(z, z, z, set_of({block_mask_from_dense(n, 64, diagonal.data())}), 0, options);
        CHECK(engine().kernel() == (wgmma ? 15 : 9));
    }
    if (!wgmma) {   // kernels 10 to 19 (sm_90a) refuse other GPUs, saying so
        for (int wgmma_kernel : {10, 11, 12, 13, 14, 15, 16, 17, 18, 19}) {
            options.kernel = wgmma_kernel;
            CHECK_THROWS_WITH(engine().forward(y, y, y, masks, 0, options), Contains("compute capability 9.0"));
        }
        options.kernel = 0;
    }
    options.persistent_blocks = -1;
    CHECK_THROWS_WITH(engine().forward(y, y, y, masks, 0, options), Contains("persistent_blocks is -1"));
    options.persistent_blocks = 0;
    options.split_steps = -2;
    CHECK_THROWS_WITH(engine().forward(y, y, y, masks, 0, options), Contains("split_steps is -2"));
    options.split_steps = 0;
    const Tensor wrong = tensor_random({1, 2, 100, 64}, 3);
    CHECK_THROWS_AS(engine().forward(wrong, wrong, wrong, masks, 0, options), Error);
}

// [SECTION] inputs the GPU's dtypes or float32 cannot hold, and scales that are not numbers

TEST_CASE("cuda_auto_kernel (no GPU needed): kernel 0's choice from the mask's 128-row tiles", "[cuda][checks]") {
    // n = 2,048, blocks of 64: 32 key blocks a row. Dense (every tile 32 steps) and a band of 9
    // blocks a row (window(256): a tile's two rows visit 10) give uniform tiles; causal spreads
    // them from 1 to 32.
    const int64_t n = 2048;
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 1), causal(dense.size(), 0), band(dense.size(), 0);
    for (int64_t q = 0; q < n; ++q) {
        for (int64_t k = 0; k < n; ++k) {
            causal[static_cast<size_t>(q * n + k)] = k / 64 <= q / 64;
            band[static_cast<size_t>(q * n + k)] = std::abs(q / 64 - k / 64) <= 4;
        }
    }
    const MaskSet dense_set = set_of({block_mask_from_dense(n, 64, dense.data())});
    const MaskSet causal_set = set_of({block_mask_from_dense(n, 64, causal.data())});
    const MaskSet band_set = set_of({block_mask_from_dense(n, 64, band.data())});
    const auto bf16 = CudaDtype::bfloat16;
    // with wgmma, d = 128: 19 for uniform long tiles, 18 for spread ones, 15 for short ones
    CHECK(cuda_auto_kernel(dense_set, 0, bf16, 128, true) == 19);
    CHECK(cuda_auto_kernel(causal_set, 0, CudaDtype::float16, 128, true) == 18);
    CHECK(cuda_auto_kernel(band_set, 0, bf16, 128, true) == 15);
    // d = 64 and blocks of 128: 15 (18 and 19 not timed there)
    CHECK(cuda_auto_kernel(dense_set, 0, bf16, 64, true) == 15);
    CHECK(cuda_auto_kernel(set_of({block_mask_from_dense(n, 128, dense.data())}), 0, bf16, 128, true) == 15);
    // without wgmma: 7 or 9 by the step counts (dense: 128-row tiles, 7); float32 or d = 96: 1
    CHECK(cuda_auto_kernel(dense_set, 0, bf16, 128, false) == 7);
    CHECK(cuda_auto_kernel(dense_set, 0, CudaDtype::float32, 128, true) == 1);
    CHECK(cuda_auto_kernel(dense_set, 0, bf16, 96, true) == 1);
}

TEST_CASE("cuda_attention_check (no GPU needed): values beyond fp16 or bf16, scores beyond float32, a NaN scale", "[cuda][checks]") {
    const MaskSet masks = set_of({testing::mask_random(100, 64, 1)});
    const Tensor x = tensor_random({1, 1, 100, 64}, 1);
    CudaAttentionOptions fp16;
    fp16.dtype = CudaDtype::float16;
    CHECK_NOTHROW(cuda_attention_check(x, x, x, masks, 0, fp16));
    Tensor v = x;
    v.at(0, 0, 3, 5) = 1e5f;   // the case: finite in float32, inf in fp16
    CHECK_THROWS_WITH(cuda_attention_check(x, x, v, masks, 0, fp16),
                      Contains("cuda attention_forward: V[0, 0, 3, 5] = 100000 is beyond fp16's range (largest 65504)") &&
                          Contains("would be inf on the GPU") && Contains("use dtype bf16") && Contains("or scale V down"));
    v.at(0, 0, 3, 5) = 65519.0f;   // rounds down to 65504: taken
    CHECK_NOTHROW(cuda_attention_check(x, x, v, masks, 0, fp16));
    v.at(0, 0, 3, 5) = -65520.0f;   // rounds to -inf
    CHECK_THROWS_WITH(cuda_attention_check(x, x, v, masks, 0, fp16), Contains("V[0, 0, 3, 5] = -65520 is beyond fp16's range"));
    Tensor q = x;
    q.at(0, 0, 0, 0) = 7e4f;
    CHECK_THROWS_WITH(cuda_attention_check(q, x, x, masks, 0, fp16), Contains("Q[0, 0, 0, 0] = 70000 is beyond fp16's range"));
    CudaAttentionOptions bf16;   // bf16 holds 1e5, and all of float32 but its last 0.2%
    CHECK_NOTHROW(cuda_attention_check(x, x, v, masks, 0, bf16));
    v.at(0, 0, 9, 1) = 3.4e38f;
    CHECK_THROWS_WITH(cuda_attention_check(x, x, v, masks, 0, bf16),
                      Contains("V[0, 0, 9, 1] = 3.4e+38 is beyond bf16's range") && Contains("scale V down, or use dtype float32"));
    CudaAttentionOptions f32;
    f32.dtype = CudaDtype::float32;
    CHECK_NOTHROW(cuda_attention_check(x, x, v, masks, 0, f32));
    // Q = K = 1e20: scores of 8e40
    Tensor huge = tensor_zeros<float>(x.shape);
    std::fill(huge.data.begin(), huge.data.end(), 1e20f);
    for (const CudaAttentionOptions& options : {bf16, f32}) {
        CHECK_THROWS_WITH(cuda_attention_check(huge, huge, x, masks, 0, options),
                          Contains("cuda attention_forward: Q row [0, 0, 0] and K row [0, 0, 0] have norms 8e+20 and 8e+20") &&
                              Contains("scores up to 8e+40 overflow float32") && Contains("scale Q or K down"));
    }
    // the kernels form Q K^T before the scale: with a small scale that product must fit too
    Tensor big = tensor_zeros<float>(x.shape);
    std::fill(big.data.begin(), big.data.end(), 3e18f);   // q.k = 64 * 9e36 = 5.8e38
    CudaAttentionOptions small_scale = f32;
    small_scale.scale = 1e-10f;
    CHECK_THROWS_WITH(cuda_attention_check(big, big, x, masks, 0, small_scale),
                      Contains("their dot products, up to") && Contains("overflow float32 before the scale"));
    // kernel 0 in bf16 at d = 64, block 64 picks a tensor-core kernel: scores up to 2^29 (5.4e8)
    std::fill(big.data.begin(), big.data.end(), 1e4f);   // scores 64 * 1e8 / 8 = 8e8
    CHECK_THROWS_WITH(cuda_attention_check(big, big, x, masks, 0, bf16),
                      Contains("scores up to 8e+08 are beyond the 5.36871e+08 that the tensor-core kernels (2 to 19) take") &&
                          Contains("or use kernel 1"));
    CudaAttentionOptions kernel1 = bf16;
    kernel1.kernel = 1;
    CHECK_NOTHROW(cuda_attention_check(big, big, x, masks, 0, kernel1));
    CHECK_NOTHROW(cuda_attention_check(big, big, x, masks, 0, f32));   // kernel 0 in float32 is kernel 1
    for (float bad : {NAN, INFINITY}) {
        CudaAttentionOptions options;
        options.scale = bad;
        CHECK_THROWS_WITH(cuda_attention_check(x, x, x, masks, 0, options),
                          Contains("cuda attention_forward: scale is") && Contains("give a finite softmax scale"));
    }
}

TEST_CASE("cuda: the checks run before the upload; a negative scale and scores near float32's limit match the CPU engine", "[cuda][small]") {
    if (!gpu_ready("range checks")) return;
    const MaskSet masks = set_of({testing::mask_random(300, 64, 3), testing::mask_random(300, 64, 4)});
    const TensorShape shape{1, 2, 300, 64};
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
    CudaAttentionOptions options;
    options.dtype = CudaDtype::float16;
    Tensor v_big = v;
    v_big.at(0, 1, 17, 9) = 1e5f;   // the issue: fp16 makes it inf; refused, naming it
    CHECK_THROWS_WITH(engine().forward(q, k, v_big, masks, 0, options), Contains("V[0, 1, 17, 9] = 100000 is beyond fp16's range"));
    options.scale = NAN;
    CHECK_THROWS_WITH(engine().forward(q, k, v, masks, 0, options), Contains("scale is nan"));
    // A negative scale (the kernels run |scale| with -K); Q = K scaled so that the scores reach
    // half of a kernel's limit (the softmax is one-hot) or twice the tensor cores' limit.
    const TensorD norms = tensor_row_norms(q);
    const double q_max = *std::max_element(norms.data.begin(), norms.data.end());
    auto scaled = [&](double norm_squared) {   // q with max |q_i|^2 = norm_squared
        Tensor x = q;
        for (float& e : x.data) e = static_cast<float>(e * std::sqrt(norm_squared) / q_max);
        return x;
    };
    const double scale = attention_default_scale(64);
    const Tensor near_k1 = scaled(0.5 * kMaxScore), near_tc = scaled(0.5 * kMaxTensorCoreScore / scale),
                 over_tc = scaled(2 * kMaxTensorCoreScore / scale);
    for (CudaDtype dtype : {CudaDtype::float32, CudaDtype::bfloat16, CudaDtype::float16}) {
        const Tensor vr = tensor_round_to(v, dtype);
        auto cpu = [&](const Tensor& x, const Tensor& y, float s) {
            AttentionOptions o;
            o.scale = s;
            return attention_forward(tensor_round_to(x, dtype), tensor_round_to(y, dtype), vr, masks, 0, o);
        };
        const AttentionOutput want_negative = cpu(q, k, -0.2f), want_tc = cpu(near_tc, near_tc, 0);
        const bool k1_fits = dtype != CudaDtype::float16;   // fp16 cannot hold near_k1 or over_tc
        AttentionOutput want_k1, want_over;
        if (k1_fits) {
            want_k1 = cpu(near_k1, near_k1, 0);
            want_over = cpu(over_tc, over_tc, 0);
        }
        for (int kernel = 1; kernel <= cuda_kernel_count(); ++kernel) {
            if (!cuda_kernel_supports(kernel, dtype, 64, masks.block)) continue;
            CudaAttentionOptions run;
            run.dtype = dtype;
            run.kernel = kernel;
            run.scale = -0.2f;
            INFO("kernel " << kernel << ", " << cuda_dtype_name(dtype));
            {
                INFO("scale -0.2");
                check_output(engine().forward(q, k, v, masks, 0, run), want_negative, tolerance_of(dtype));
            }
            run.scale = 0;
            {
                INFO("scores up to 2^28");
                check_output(engine().forward(near_tc, near_tc, v, masks, 0, run), want_tc, tolerance_of(dtype));
            }
            if (kernel == 1 && k1_fits) {
                INFO("scores up to FLT_MAX / 8, and 2^30");
                check_output(engine().forward(near_k1, near_k1, v, masks, 0, run), want_k1, tolerance_of(dtype));
                check_output(engine().forward(over_tc, over_tc, v, masks, 0, run), want_over, tolerance_of(dtype));
            } else if (kernel >= 2 && k1_fits) {
                CHECK_THROWS_WITH(engine().forward(over_tc, over_tc, v, masks, 0, run),
                                  Contains("that the tensor-core kernels (2 to 19) take") && Contains("use kernel 1"));
            }
        }
    }
    // V near FLT_MAX in float32: sum P V leaves float32 on the GPU; refused, not returned as Inf
    Tensor zero = tensor_zeros<float>(shape), v_max = tensor_zeros<float>(shape);
    std::fill(v_max.data.begin(), v_max.data.end(), 3e38f);
    CudaAttentionOptions f32;
    f32.dtype = CudaDtype::float32;
    f32.kernel = 1;
    CHECK_THROWS_WITH(engine().forward(zero, zero, v_max, masks, 0, f32),
                      Contains("cuda attention_forward: O at [0, 0, ") && Contains("overflow float32") && Contains("scale V down"));
}
