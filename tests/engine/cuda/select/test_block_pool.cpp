// cuda_block_pool (engine/cuda/select/block_pool.hpp) against the same pooling on the host: float32 and
// bf16 inputs whose sums are exact (multiples of 1/8), so the means must match to the bit whatever
// the kernel's order; both kernels (rows read in 16-byte pieces where d and the strides allow,
// else channel by channel: a row stride that is not a multiple of 16 bytes, d = 5, d = 300), a
// strided view (rows further apart than d, heads before rows), n not a multiple of the block and
// blocks with fewer rows than the kernel's row groups, the means alone and with the bounds, and
// both through a per-head projection (its products split over the threads or a thread a column);
// a NaN is kept by the bounds. Bad calls are refused (checked with or without a GPU); without one,
// the other cases print that they skipped and pass. (fp16 and PyTorch's own pooling:
// tests/python/test_selectors.py.)
#include "engine/cuda/select/block_pool.hpp"

#include "engine/error.hpp"
#include "tests/engine/cuda/cuda_testing.hpp"

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

using namespace sparsa;
using Catch::Matchers::Contains;

namespace {

bool gpu_ready(const char* test) { return testing::gpu_ready("test_block_pool", test); }

struct Layout {
    int64_t batch, heads, n, d, block;
    int64_t stride_batch, stride_head, stride_row;   // elements
    int64_t elements() const { return (batch - 1) * stride_batch + (heads - 1) * stride_head + (n - 1) * stride_row + d; }
};

// [mean | max | min] per block on the host, from the values as floats.
std::vector<float> host_pool(const std::vector<float>& x, const Layout& l, bool bounds) {
    const int64_t blocks = (l.n + l.block - 1) / l.block, width = bounds ? 3 * l.d : l.d;
    std::vector<float> out(static_cast<size_t>(l.batch * l.heads * blocks * width));
    for (int64_t b = 0; b < l.batch; ++b)
        for (int64_t h = 0; h < l.heads; ++h)
            for (int64_t r = 0; r < blocks; ++r) {
                const int64_t rows = std::min(l.block, l.n - r * l.block);
                float* o = out.data() + ((b * l.heads + h) * blocks + r) * width;
                for (int64_t c = 0; c < l.d; ++c) {
                    float sum = 0, hi = -std::numeric_limits<float>::infinity(), lo = std::numeric_limits<float>::infinity();
                    bool nan = false;
                    for (int64_t i = 0; i < rows; ++i) {
                        const float v = x[static_cast<size_t>(b * l.stride_batch + h * l.stride_head + (r * l.block + i) * l.stride_row + c)];
                        sum += v;
                        nan |= std::isnan(v);
                        hi = std::max(hi, v);
                        lo = std::min(lo, v);
                    }
                    o[c] = sum / static_cast<float>(rows);
                    if (bounds) {
                        o[l.d + c] = nan ? std::numeric_limits<float>::quiet_NaN() : hi;
                        o[2 * l.d + c] = nan ? std::numeric_limits<float>::quiet_NaN() : lo;
                    }
                }
            }
    return out;
}

// host_pool's rows through each head's map [in_dim, width].
std::vector<float> host_project(const std::vector<float>& pooled, const std::vector<float>& map, const Layout& l, bool bounds,
                                int64_t width) {
    const int64_t blocks = (l.n + l.block - 1) / l.block, in_dim = bounds ? 3 * l.d : l.d;
    std::vector<float> out(static_cast<size_t>(l.batch * l.heads * blocks * width));
    for (int64_t item = 0; item < l.batch * l.heads * blocks; ++item) {
        const int64_t h = item / blocks % l.heads;
        for (int64_t j = 0; j < width; ++j) {
            float acc = 0;
            for (int64_t i = 0; i < in_dim; ++i)
                acc += pooled[static_cast<size_t>(item * in_dim + i)] * map[static_cast<size_t>((h * in_dim + i) * width + j)];
            out[static_cast<size_t>(item * width + j)] = acc;
        }
    }
    return out;
}

std::vector<float> device_pool(const std::vector<float>& x, const Layout& l, CudaDtype dtype, bool bounds,
                               const std::vector<float>* map = nullptr, int64_t width = 0) {
    std::vector<uint8_t> bytes;
    if (dtype == CudaDtype::float32) {
        bytes.resize(x.size() * 4);
        std::memcpy(bytes.data(), x.data(), bytes.size());
    } else {   // bf16: the values are bf16 already, so the top half of each float is exact
        bytes.resize(x.size() * 2);
        for (size_t e = 0; e < x.size(); ++e) {
            uint32_t u;
            std::memcpy(&u, &x[e], 4);
            const auto w = static_cast<uint16_t>(u >> 16);
            std::memcpy(bytes.data() + 2 * e, &w, 2);
        }
    }
    const int64_t blocks = (l.n + l.block - 1) / l.block;
    const size_t out_count = static_cast<size_t>(l.batch * l.heads * blocks * (map != nullptr ? width : (bounds ? 3 : 1) * l.d));
    void* d_x = nullptr;
    float* d_out = nullptr;
    float* d_map = nullptr;
    if (map != nullptr) {
        REQUIRE(cudaMalloc(&d_map, map->size() * sizeof(float)) == cudaSuccess);
        REQUIRE(cudaMemcpy(d_map, map->data(), map->size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
    }
    REQUIRE(cudaMalloc(&d_x, bytes.size()) == cudaSuccess);
    REQUIRE(cudaMalloc(&d_out, out_count * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMemcpy(d_x, bytes.data(), bytes.size(), cudaMemcpyHostToDevice) == cudaSuccess);
    CudaBlockPoolCall call;
    call.x = d_x;
    call.dtype = dtype;
    call.batch = l.batch;
    call.heads = l.heads;
    call.n = l.n;
    call.d = l.d;
    call.stride_batch = l.stride_batch;
    call.stride_head = l.stride_head;
    call.stride_row = l.stride_row;
    call.block = l.block;
    call.bounds = bounds;
    call.projection = d_map;
    call.width = width;
    call.out = d_out;
    cuda_block_pool(call);
    std::vector<float> out(out_count);
    REQUIRE(cudaMemcpy(out.data(), d_out, out_count * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
    cudaFree(d_x);
    cudaFree(d_out);
    cudaFree(d_map);
    return out;
}

// Multiples of 1/8 in [-8, 8]: exact in bf16, and every block's sum is exact in float32.
std::vector<float> values(size_t count, uint32_t seed) {
    std::mt19937 gen(seed);
    std::uniform_int_distribution<int> k(-64, 64);
    std::vector<float> x(count);
    for (float& v : x) v = static_cast<float>(k(gen)) / 8.0f;
    return x;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size()) return false;
    for (size_t e = 0; e < a.size(); ++e) {
        if (std::isnan(a[e]) && std::isnan(b[e])) continue;
        if (std::memcmp(&a[e], &b[e], 4) != 0) return false;
    }
    return true;
}

} // namespace

TEST_CASE("cuda_block_pool: each block's mean, largest and smallest element, as on the host", "[cuda][block_pool][small]") {
    if (!gpu_ready("block pool")) return;
    const std::vector<Layout> layouts = {
        {2, 3, 200, 128, 64, 3 * 200 * 128, 200 * 128, 128},   // contiguous, a partial last block
        {1, 4, 130, 64, 16, 0, 64, 4 * 64},                     // [batch, n, heads, d] viewed as [batch, heads, n, d]
        {2, 2, 37, 5, 16, 2 * 37 * 8, 8, 2 * 8},                // d under a warp, rows padded to 8, heads interleaved
        {1, 1, 64, 300, 64, 0, 0, 300},                         // d over the 128 threads
        {1, 2, 1, 16, 64, 0, 16, 16},                           // one row
        {1, 2, 50, 64, 16, 0, 50 * 65, 65},                     // rows not 16-byte aligned: read channel by channel
        {1, 1, 70, 1024, 64, 0, 0, 1024},                       // bf16: 128 pieces of 16 bytes, one row group
    };
    uint32_t seed = 5;
    for (const Layout& l : layouts) {
        const std::vector<float> x = values(static_cast<size_t>(l.elements()), seed++);
        for (CudaDtype dtype : {CudaDtype::float32, CudaDtype::bfloat16}) {
            for (bool bounds : {false, true}) {
                INFO("n " << l.n << ", d " << l.d << ", block " << l.block << ", dtype " << static_cast<int>(dtype) << ", bounds " << bounds);
                CHECK(same_bits(device_pool(x, l, dtype, bounds), host_pool(x, l, bounds)));
            }
        }
    }
}

TEST_CASE("cuda_block_pool: with a projection, each pooled row through its head's map", "[cuda][block_pool][small]") {
    if (!gpu_ready("block pool with a projection")) return;
    // Blocks of a power-of-two rows (the last ones too) and maps of multiples of 1/8: every mean,
    // product and sum is exact, so the host's order and the kernel's give the same bits.
    const std::vector<Layout> layouts = {
        {2, 3, 200, 128, 64, 3 * 200 * 128, 200 * 128, 128},   // the last block 8 rows
        {1, 4, 130, 64, 16, 0, 64, 4 * 64},                     // strided, the last block 2 rows
        {1, 2, 50, 64, 16, 0, 50 * 65, 65},                     // read channel by channel, the last block 2 rows
    };
    uint32_t seed = 21;
    for (const Layout& l : layouts) {
        const std::vector<float> x = values(static_cast<size_t>(l.elements()), seed++);
        for (bool bounds : {false, true}) {
            for (int64_t width : {32, 5, 130}) {   // slices of the input over 4 and 25 threads; a thread a column
                std::vector<float> map = values(static_cast<size_t>(l.heads * (bounds ? 3 : 1) * l.d * width), seed++);
                for (float& m : map) m /= 8.0f;
                INFO("n " << l.n << ", d " << l.d << ", bounds " << bounds << ", width " << width);
                CHECK(same_bits(device_pool(x, l, CudaDtype::bfloat16, bounds, &map, width),
                                host_project(host_pool(x, l, bounds), map, l, bounds, width)));
            }
        }
    }
}

TEST_CASE("cuda_block_pool: a NaN in a block is its largest and smallest element", "[cuda][block_pool][small]") {
    if (!gpu_ready("block pool, NaN")) return;
    const Layout l{1, 1, 100, 32, 64, 0, 0, 32};
    std::vector<float> x = values(static_cast<size_t>(l.elements()), 11);
    x[70 * 32 + 3] = std::numeric_limits<float>::quiet_NaN();   // block 1, channel 3
    x[0 * 32 + 4] = std::numeric_limits<float>::quiet_NaN();    // block 0's first row, channel 4
    const std::vector<float> got = device_pool(x, l, CudaDtype::float32, true);
    CHECK(same_bits(got, host_pool(x, l, true)));
    CHECK(std::isnan(got[3 * 32 + 32 + 3]));   // block 1's max, channel 3
    CHECK(std::isnan(got[0 * 96 + 64 + 4]));   // block 0's min, channel 4
}

TEST_CASE("cuda_block_pool: bad calls are refused before any launch", "[cuda][block_pool][small]") {
    // Needs no GPU: the arguments are checked before the runtime is touched.
    CudaBlockPoolCall call;
    call.x = reinterpret_cast<const void*>(uintptr_t{256});
    call.out = reinterpret_cast<float*>(uintptr_t{256});
    call.n = 64;
    call.d = 2000;
    CHECK_THROWS_WITH(cuda_block_pool(call), Contains("d <= 1024, got 1 x 1 x 64 x 2000"));
    call.d = 64;
    call.block = 0;
    CHECK_THROWS_WITH(cuda_block_pool(call), Contains("block must be >= 1"));
    call.block = 64;
    call.x = nullptr;
    CHECK_THROWS_WITH(cuda_block_pool(call), Contains("must not be null"));
    call.x = reinterpret_cast<const void*>(uintptr_t{256});
    call.projection = reinterpret_cast<const float*>(uintptr_t{256});
    call.width = 0;
    CHECK_THROWS_WITH(cuda_block_pool(call), Contains("a projection's width must be 1 to 1024, got 0"));
}
