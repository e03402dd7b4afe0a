// What the CUDA engine's tests share: whether a GPU is here (else one line saying the case
// skipped, so CI without a GPU passes), a one-layer MaskSet of given masks, and the
// examples/patterns folder of the tree the test runs in.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/cuda/attention_cuda.hpp"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace sparsa::testing {

// Whether this machine has a GPU; if not, prints "<program>: "<test>" skipped: ..." and the case passes.
inline bool gpu_ready(const char* program, const char* test) {
    std::string why;
    if (cuda_device_available(&why)) return true;
    std::printf("%s: \"%s\" skipped: no CUDA GPU here (%s)\n", program, test, why.c_str());
    return false;
}

// A set of one layer whose head h uses masks[h].
inline MaskSet set_of(const std::vector<BlockMask>& masks) {
    std::vector<std::shared_ptr<const BlockMask>> ptrs;
    for (const BlockMask& m : masks) ptrs.push_back(std::make_shared<BlockMask>(m));
    return mask_set_make(1, static_cast<int64_t>(masks.size()), ptrs);
}

// examples/patterns of the source tree: under $SPARSA_SOURCE_DIR when set (bench/run_gpu.sh sets
// it to the tree it runs in: a binary built on one machine runs on another, where the tree has
// another path), else under the tree this binary was built from, else under the current folder.
inline std::filesystem::path patterns_folder() {
    const char* env = std::getenv("SPARSA_SOURCE_DIR");
    if (env != nullptr && *env != '\0') return std::filesystem::path(env) / "examples" / "patterns";
    const std::filesystem::path built = std::filesystem::path(SPARSA_SOURCE_DIR) / "examples" / "patterns";
    if (std::filesystem::is_directory(built)) return built;
    return std::filesystem::current_path() / "examples" / "patterns";
}

} // namespace sparsa::testing
