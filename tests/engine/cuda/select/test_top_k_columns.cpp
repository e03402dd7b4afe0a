// cuda_top_k_columns (engine/cuda/select/top_k_columns.hpp) against a stable sort on the host: random
// score grids with ties, -0 and +0, infinities and NaNs, rows shorter and longer than `keep`, keep
// 1 and keep = blocks, up to the largest grid it ranks; the rows entry (each query row scored
// against the key blocks in the kernel, log-sum-exp pooled) against the same on the host. Bad arguments are refused (checked with or without a GPU); without one, the other cases
// print that they skipped and pass.
#include "engine/cuda/select/top_k_columns.hpp"

#include "engine/error.hpp"
#include "tests/engine/cuda/cuda_testing.hpp"

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <iterator>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

using namespace sparsa;
using Catch::Matchers::Contains;

namespace {

bool gpu_ready(const char* test) { return testing::gpu_ready("test_top_k_columns", test); }

// Row r's kept blocks as the layout lists them: r and the keep - 1 best c < r by a stable
// descending sort (NaN first, -0 == +0, ties to the lower block), ascending.
std::vector<int32_t> reference(const std::vector<float>& scores, int64_t grids, int64_t blocks, int64_t keep) {
    std::vector<int32_t> out;
    for (int64_t g = 0; g < grids; ++g) {
        for (int64_t r = 0; r < blocks; ++r) {
            const float* row = scores.data() + (g * blocks + r) * blocks;
            std::vector<int32_t> c(static_cast<size_t>(r));
            std::iota(c.begin(), c.end(), 0);
            std::stable_sort(c.begin(), c.end(), [&](int32_t a, int32_t b) {
                const bool na = std::isnan(row[a]), nb = std::isnan(row[b]);
                if (na || nb) return na && !nb;
                return row[a] > row[b];
            });
            c.resize(static_cast<size_t>(std::min<int64_t>(keep, r + 1) - 1));
            std::sort(c.begin(), c.end());
            c.push_back(static_cast<int32_t>(r));
            out.insert(out.end(), c.begin(), c.end());
        }
    }
    return out;
}

// Scores drawn from few values (ties are common), with specials sprinkled in.
std::vector<float> scores_of(int64_t grids, int64_t blocks, uint32_t seed) {
    std::mt19937 gen(seed);
    std::uniform_int_distribution<int> level(-6, 6), special(0, 199);
    std::vector<float> s(static_cast<size_t>(grids * blocks * blocks));
    for (float& x : s) {
        x = 0.25f * static_cast<float>(level(gen));
        switch (special(gen)) {
            case 0: x = std::numeric_limits<float>::quiet_NaN(); break;
            case 1: x = std::numeric_limits<float>::infinity(); break;
            case 2: x = -std::numeric_limits<float>::infinity(); break;
            case 3: x = -0.0f; break;
            default: break;
        }
    }
    return s;
}

std::vector<int32_t> on_gpu(const std::vector<float>& scores, int64_t grids, int64_t blocks, int64_t keep) {
    const int64_t entries = grids * top_k_columns_per_head(blocks, keep);
    float* d_scores = nullptr;
    int32_t* d_columns = nullptr;
    REQUIRE(cudaMalloc(&d_scores, scores.size() * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMalloc(&d_columns, static_cast<size_t>(entries) * sizeof(int32_t)) == cudaSuccess);
    REQUIRE(cudaMemcpy(d_scores, scores.data(), scores.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
    REQUIRE(cudaMemset(d_columns, 0xff, static_cast<size_t>(entries) * sizeof(int32_t)) == cudaSuccess);
    cuda_top_k_columns(d_scores, grids, blocks, keep, d_columns, nullptr);
    std::vector<int32_t> out(static_cast<size_t>(entries));
    REQUIRE(cudaMemcpy(out.data(), d_columns, out.size() * sizeof(int32_t), cudaMemcpyDeviceToHost) == cudaSuccess);
    cudaFree(d_scores);
    cudaFree(d_columns);
    return out;
}

// a and b uploaded, run(a, b, columns) launched, `entries` columns read back.
template <typename Run>
std::vector<int32_t> on_gpu_from(const std::vector<float>& a, const std::vector<float>& b, int64_t entries, Run run) {
    float *d_a = nullptr, *d_b = nullptr;
    int32_t* d_columns = nullptr;
    REQUIRE(cudaMalloc(&d_a, a.size() * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMalloc(&d_b, b.size() * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMalloc(&d_columns, static_cast<size_t>(entries) * sizeof(int32_t)) == cudaSuccess);
    REQUIRE(cudaMemcpy(d_a, a.data(), a.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
    REQUIRE(cudaMemcpy(d_b, b.data(), b.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
    run(static_cast<const float*>(d_a), static_cast<const float*>(d_b), d_columns);
    std::vector<int32_t> out(static_cast<size_t>(entries));
    REQUIRE(cudaMemcpy(out.data(), d_columns, out.size() * sizeof(int32_t), cudaMemcpyDeviceToHost) == cudaSuccess);
    cudaFree(d_a);
    cudaFree(d_b);
    cudaFree(d_columns);
    return out;
}

} // namespace

TEST_CASE("cuda_top_k_columns: the layout's columns of a stable descending sort", "[cuda][top_k][small]") {
    if (!gpu_ready("top-k columns")) return;
    struct Case {
        int64_t grids, blocks, keep;
    };
    const std::vector<Case> cases = {{1, 1, 1}, {3, 5, 1}, {3, 5, 2}, {3, 5, 5}, {2, 64, 17}, {4, 256, 17}, {2, 256, 256},
                                     {2, 300, 129}, {1, 1000, 66}, {2, 129, 128}};
    uint32_t seed = 1;
    for (const Case& c : cases) {
        INFO("grids " << c.grids << ", blocks " << c.blocks << ", keep " << c.keep);
        const std::vector<float> s = scores_of(c.grids, c.blocks, seed++);
        CHECK(on_gpu(s, c.grids, c.blocks, c.keep) == reference(s, c.grids, c.blocks, c.keep));
    }
}

TEST_CASE("cuda_top_k_columns_rows: each block's rows against a key block, pooled by log-sum-exp", "[cuda][top_k][small]") {
    if (!gpu_ready("top-k columns from query rows")) return;
    // Random rows and keys; the host pools in double. The kernel's float32 log-sum-exp may order two
    // blocks whose scores agree to about 1e-5 otherwise: such a row may differ, no other.
    for (const auto& [n, row_block, width, keep] : std::vector<std::array<int64_t, 4>>{{200, 16, 8, 4}, {1000, 64, 32, 9}, {4096, 64, 32, 17}}) {
        const int64_t grids = 2, blocks = (n + row_block - 1) / row_block;
        INFO("n " << n << ", block " << row_block << ", width " << width << ", keep " << keep);
        std::mt19937 gen(static_cast<uint32_t>(n));
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> a(static_cast<size_t>(grids * n * width)), b(static_cast<size_t>(grids * blocks * width));
        for (float& x : a) x = normal(gen);
        for (float& x : b) x = normal(gen);
        const double divisor = std::sqrt(static_cast<double>(width));
        std::vector<float> scores(static_cast<size_t>(grids * blocks * blocks), 0.0f);
        std::vector<double> exact(scores.size(), 0.0);
        for (int64_t g = 0; g < grids; ++g)
            for (int64_t r = 0; r < blocks; ++r)
                for (int64_t c = 0; c < blocks; ++c) {
                    std::vector<double> x;
                    for (int64_t i = r * row_block; i < std::min(n, (r + 1) * row_block); ++i) {
                        double dot = 0;
                        for (int64_t j = 0; j < width; ++j)
                            dot += static_cast<double>(a[static_cast<size_t>((g * n + i) * width + j)]) * b[static_cast<size_t>((g * blocks + c) * width + j)];
                        x.push_back(dot / divisor);
                    }
                    const double top = *std::max_element(x.begin(), x.end());
                    double sum = 0;
                    for (double v : x) sum += std::exp(v - top);
                    const size_t at = static_cast<size_t>((g * blocks + r) * blocks + c);
                    exact[at] = top + std::log(sum);
                    scores[at] = static_cast<float>(exact[at]);
                }
        const std::vector<int32_t> got = on_gpu_from(a, b, grids * top_k_columns_per_head(blocks, keep), [&](auto da, auto db, auto dc) {
            cuda_top_k_columns_rows(da, db, width, static_cast<float>(divisor), grids, n, row_block, keep, dc, nullptr);
        });
        const std::vector<int32_t> want = reference(scores, grids, blocks, keep);
        REQUIRE(got.size() == want.size());
        size_t at = 0;
        int64_t differ = 0;
        for (int64_t g = 0; g < grids; ++g)
            for (int64_t r = 0; r < blocks; ++r) {
                const size_t len = static_cast<size_t>(std::min(keep, r + 1));
                std::vector<int32_t> x(got.begin() + static_cast<long>(at), got.begin() + static_cast<long>(at + len)),
                    y(want.begin() + static_cast<long>(at), want.begin() + static_cast<long>(at + len));
                at += len;
                if (x == y) continue;
                ++differ;
                std::vector<int32_t> odd;
                std::set_symmetric_difference(x.begin(), x.end(), y.begin(), y.end(), std::back_inserter(odd));
                double lo = INFINITY, hi = -INFINITY;
                for (int32_t c : odd) {
                    lo = std::min(lo, exact[static_cast<size_t>((g * blocks + r) * blocks + c)]);
                    hi = std::max(hi, exact[static_cast<size_t>((g * blocks + r) * blocks + c)]);
                }
                CHECK(hi - lo <= 1e-4 * std::max(1.0, std::abs(hi)));
            }
        CHECK(differ <= grids * blocks / 100 + 1);
    }
    int32_t* columns = reinterpret_cast<int32_t*>(uintptr_t{256});
    const float* p = reinterpret_cast<const float*>(uintptr_t{256});
    CHECK_THROWS_WITH(cuda_top_k_columns_rows(p, p, 256, 1.0f, 1, 1000, 64, 4, columns, nullptr), Contains("block x width at most 8192"));
}

TEST_CASE("cuda_top_k_columns: the largest grid it ranks", "[cuda][top_k]") {
    if (!gpu_ready("top-k columns, 4,096 blocks")) return;
    const int64_t blocks = kTopKColumnsMaxBlocks, keep = 257;
    const std::vector<float> s = scores_of(1, blocks, 99);
    CHECK(on_gpu(s, 1, blocks, keep) == reference(s, 1, blocks, keep));
}

TEST_CASE("cuda_top_k_columns: bad arguments are refused before any launch", "[cuda][top_k][small]") {
    // Needs no GPU: the arguments are checked before the runtime is touched.
    float* scores = reinterpret_cast<float*>(uintptr_t{256});   // never read: every call below throws first
    int32_t* columns = reinterpret_cast<int32_t*>(uintptr_t{256});
    CHECK_THROWS_WITH(cuda_top_k_columns(scores, 0, 4, 2, columns, nullptr), Contains("grids must be >= 1"));
    CHECK_THROWS_WITH(cuda_top_k_columns(scores, 1, kTopKColumnsMaxBlocks + 1, 2, columns, nullptr), Contains("blocks must be 1 to 4096"));
    CHECK_THROWS_WITH(cuda_top_k_columns(scores, 1, 4, 0, columns, nullptr), Contains("keep must be 1 to blocks = 4"));
    CHECK_THROWS_WITH(cuda_top_k_columns(scores, 1, 4, 5, columns, nullptr), Contains("keep must be 1 to blocks = 4"));
    CHECK_THROWS_WITH(cuda_top_k_columns(nullptr, 1, 4, 2, columns, nullptr), Contains("must not be null"));
    CHECK_THROWS_WITH(cuda_top_k_columns_rows(scores, nullptr, 8, 1.0f, 1, 64, 16, 2, columns, nullptr), Contains("must not be null"));
    CHECK_THROWS_WITH(cuda_top_k_columns_rows(scores, scores, 0, 1.0f, 1, 64, 16, 2, columns, nullptr), Contains("width must be 1 to 1024"));
    CHECK_THROWS_WITH(cuda_top_k_columns_rows(scores, scores, 8, 0.0f, 1, 64, 16, 2, columns, nullptr),
                      Contains("divisor must be finite and positive"));
}

TEST_CASE("cuda_top_k_columns: entries a head", "[top_k]") {
    // Needs no GPU: the count the layout and the kernel share.
    for (int64_t blocks : {1, 2, 7, 256}) {
        for (int64_t keep = 1; keep <= blocks; ++keep) {
            int64_t sum = 0;
            for (int64_t r = 0; r < blocks; ++r) sum += std::min(keep, r + 1);
            CHECK(top_k_columns_per_head(blocks, keep) == sum);
        }
    }
}
