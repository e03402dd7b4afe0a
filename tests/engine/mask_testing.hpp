// Random masks for the engine tests and the numpy check: a dense [n, n] matrix whose blocks are
// empty, full, or partial in the awkward ways (one pair, all but one pair), made canonical.
#pragma once

#include "engine/block_mask.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace sparsa::testing {

// A random dense mask: dense[q * n + k] is 0 or 1. Each B x B block is, at random, empty, full,
// a random fill, one pair, or all pairs but one, so every kind of block occurs.
inline std::vector<uint8_t> dense_random(int64_t n, int32_t block, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<uint8_t> dense(static_cast<size_t>(n * n), 0);
    const int64_t blocks = (n + block - 1) / block;
    for (int64_t qb = 0; qb < blocks; ++qb) {
        for (int64_t kb = 0; kb < blocks; ++kb) {
            const int64_t q0 = qb * block, q1 = std::min(n, q0 + block), k0 = kb * block, k1 = std::min(n, k0 + block);
            const int kind = static_cast<int>(rng() % 6);
            const double fill = static_cast<double>(rng() % 1000) / 1000.0;
            const int64_t q_pick = q0 + static_cast<int64_t>(rng() % static_cast<uint64_t>(q1 - q0));
            const int64_t k_pick = k0 + static_cast<int64_t>(rng() % static_cast<uint64_t>(k1 - k0));
            for (int64_t q = q0; q < q1; ++q) {
                for (int64_t k = k0; k < k1; ++k) {
                    const bool pick = q == q_pick && k == k_pick;
                    uint8_t v = 0;
                    switch (kind) {
                    case 0: v = 0; break;                                                   // empty
                    case 1: v = 1; break;                                                   // full
                    case 2: v = pick; break;                                                // one pair
                    case 3: v = !pick; break;                                               // all but one
                    case 4: v = static_cast<double>(rng() % 1000) / 1000.0 < fill; break;  // random fill
                    default: v = k <= q; break;                                             // causal
                    }
                    dense[static_cast<size_t>(q * n + k)] = v;
                }
            }
        }
    }
    return dense;
}

inline BlockMask mask_random(int64_t n, int32_t block, uint64_t seed) {
    return block_mask_from_dense(n, block, dense_random(n, block, seed).data());
}

// A fresh folder under the system's temporary folder, removed with everything in it at the end.
class TempDir {
public:
    TempDir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "sparsa-test-XXXXXX").string();
        if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("cannot make a temporary folder");
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    std::string file(const std::string& name) const { return (path_ / name).string(); }
    // Names of the entries in the folder, hidden ones (temporary files) included, sorted.
    std::vector<std::string> entries() const {
        std::vector<std::string> names;
        for (const auto& e : std::filesystem::directory_iterator(path_)) names.push_back(e.path().filename().string());
        std::sort(names.begin(), names.end());
        return names;
    }

private:
    std::filesystem::path path_;
};

inline std::vector<uint8_t> file_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void file_put(const std::string& path, const std::vector<uint8_t>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

} // namespace sparsa::testing
