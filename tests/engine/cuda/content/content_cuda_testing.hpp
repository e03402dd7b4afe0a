// Helpers of the CUDA content engine's tests (test_content_cuda.cpp, test_content_cuda_device.cpp):
// a layer of content heads with a fixed mask beside them, a window as a dense mask, and the one
// engine the test binary shares.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/content/content_spec.hpp"
#include "engine/cuda/content/content_cuda.hpp"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

namespace sparsa::testing {

inline CudaContentAttention& content_engine() {
    static CudaContentAttention cuda;
    return cuda;
}

// One layer of `heads` heads, each with fixed mask `fixed` ([n, n] bytes, empty: no pairs) and spec.
inline MaskSet content_set(int64_t n, int64_t heads, const std::vector<uint8_t>& fixed, const ContentSpec& spec) {
    std::vector<uint8_t> none(static_cast<size_t>(n * n), 0);
    const auto mask = std::make_shared<BlockMask>(block_mask_from_dense(n, 64, fixed.empty() ? none.data() : fixed.data()));
    MaskSet set = mask_set_make(1, heads, std::vector<std::shared_ptr<const BlockMask>>(static_cast<size_t>(heads), mask));
    for (int64_t h = 0; h < heads; ++h) set.content.push_back(std::make_shared<ContentSpec>(spec));
    return set;
}

// |q - k| <= w (and k <= q when causal), as a dense [n, n] mask.
inline std::vector<uint8_t> window_mask(int64_t n, int64_t w, bool causal) {
    std::vector<uint8_t> m(static_cast<size_t>(n * n), 0);
    for (int64_t q = 0; q < n; ++q)
        for (int64_t k = std::max<int64_t>(0, q - w); k <= std::min(n - 1, q + w); ++k) m[static_cast<size_t>(q * n + k)] = !causal || k <= q;
    return m;
}

} // namespace sparsa::testing
