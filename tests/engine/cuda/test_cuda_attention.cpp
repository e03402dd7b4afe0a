// The CUDA engine against the CPU engine (engine/cpu_attention.hpp, itself checked against the
// double reference): every kernel and dtype on random masks (n not divisible by the block, a
// different mask per head, batch > 1), on masks loaded from .npz (every file in the folder
// $SPARSA_CUDA_TEST_MASKS, e.g. the example patterns compiled at n = 1000; and, when dsl/ is
// built, every examples/patterns/*.pat compiled here), empty rows, and bad calls.
//
// Tolerances, per (batch, head), the CPU engine run on the inputs rounded to the GPU's dtype:
//   float32:     max |O - O_cpu| <= 1e-5 * max |O_cpu|;  |lse - lse_cpu| <= 1e-5 * max(1, |lse_cpu|)
//   bf16, fp16:  the same with 2e-2 (P and O are rounded to the dtype on the GPU)
//   lse is -inf exactly where the CPU's is, and every output element is finite: outputs are
//   poisoned with NaN before each run, so an element no kernel wrote fails.
// Without a GPU (CI) every case prints one line saying it skipped and why, and passes.
#include "engine/cuda/attention_cuda.hpp"

#include "engine/cpu_attention.hpp"
#include "engine/error.hpp"
#include "io/mask_io.hpp"
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

constexpr double kFloat32Tolerance = 1e-5;
constexpr double kHalfTolerance = 2e-2;

double tolerance_of(CudaDtype dtype) { return dtype == CudaDtype::float32 ? kFloat32Tolerance : kHalfTolerance; }

// Whether this machine has a GPU; if not, prints why on one line for `test` and the case passes.
bool gpu_ready(const char* test) {
    std::string why;
    if (cuda_device_available(&why)) return true;
    std::printf("test_cuda_attention: \"%s\" skipped: no CUDA GPU here (%s)\n", test, why.c_str());
    return false;
}

// One engine for the whole program: its buffers are reused across calls, as users would.
CudaAttention& engine() {
    static CudaAttention cuda;
    return cuda;
}

// A set of one layer whose head h uses masks[h].
MaskSet set_of(const std::vector<BlockMask>& masks) {
    std::vector<std::shared_ptr<const BlockMask>> ptrs;
    for (const BlockMask& m : masks) ptrs.push_back(std::make_shared<BlockMask>(m));
    return mask_set_make(1, static_cast<int64_t>(masks.size()), ptrs);
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
                   int64_t split_steps = 0,         // kernels 7 to 15: CudaAttentionOptions::split_steps
                   int64_t persistent_blocks = 0) { // kernel 13: CudaAttentionOptions::persistent_blocks
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
    std::printf("test_cuda_attention: kernels 10 to 15 (wgmma) %s\n",
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

TEST_CASE("cuda: long rows split into chunks and merged (kernels 7 to 15)", "[cuda][small]") {
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
            check_kernels(masks, 0, 2, block == 128 ? 128 : 64, 90 + static_cast<uint64_t>(split), {7, 8, 9, 10, 11, 12, 13, 14, 15}, split);
        }
    }
}

TEST_CASE("cuda: kernel 13 with few thread blocks, each running many work items", "[cuda][small]") {
    if (!gpu_ready("persistent blocks")) return;
    if (!cuda_device_has_wgmma()) {
        std::printf("test_cuda_attention: persistent blocks: skipped: kernel 13 needs compute capability 9.0\n");
        return;
    }
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
                check_kernels(masks, 0, 2, block == 128 ? 128 : 64, 190 + static_cast<uint64_t>(blocks), {13}, split, blocks);
            }
        }
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
    uint64_t seed = 80;
    for (const auto& e : std::filesystem::directory_iterator(std::string(SPARSA_SOURCE_DIR) + "/examples/patterns")) {
        if (e.path().extension() != ".pat") continue;
        INFO(e.path().filename().string());
        const MaskSet masks = dsl::script_compile(*dsl::script_load(e.path().string()), {.n = 1000}).masks;
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
    // kernel 0 in bf16: with wgmma 15 on every mask; else 128-query tiles (7) where a tile's two
    // halves keep the same blocks, 64-query tiles (9) where they keep different ones
    const bool wgmma = cuda_device_has_wgmma();
    CHECK((wgmma ? engine().kernel() == 15 : engine().kernel() == 7 || engine().kernel() == 9));
    const int64_t n = 1024;
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 1), diagonal(static_cast<size_t>(n * n), 0);
    for (int64_t q = 0; q < n; ++q) diagonal[static_cast<size_t>(q * n + q)] = 1;
    for (int64_t d : {64, 128}) {
        const Tensor z = tensor_random({1, 1, n, d}, 4);
        engine().prepare(z, z, z, set_of({block_mask_from_dense(n, 64, dense.data())}), 0, options);
        CHECK(engine().kernel() == (wgmma ? 15 : 7));
        engine().prepare(z, z, z, set_of({block_mask_from_dense(n, 64, diagonal.data())}), 0, options);
        CHECK(engine().kernel() == (wgmma ? 15 : 9));
    }
    if (!wgmma) {   // kernels 10 to 15 (sm_90a) refuse other GPUs, saying so
        for (int wgmma_kernel : {10, 11, 12, 13, 14, 15}) {
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
