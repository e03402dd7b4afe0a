// Host side of the content-based heads' numbers: the random rotations, fitted anchors and FAVOR+
// features each head uses, drawn exactly as the CPU engines draw them (cuda_content_numbers,
// content_cuda.hpp), and lsh's rotations split into 16-bit pieces for version 4's hashing on
// tensor cores (content_numbers.hpp, content_hash4.cuh).
#include "engine/cuda/content/content_numbers.hpp"

#include "engine/content/buckets.hpp"
#include "engine/content/favor.hpp"
#include "engine/cuda/content/content_cuda.hpp"
#include "engine/cuda/cuda_host.hpp"
#include "engine/error.hpp"

#include <cmath>
#include <string>
#include <vector>

namespace sparsa {

using namespace cuda_host;   // bf16_bits, fp16_bits and their values

CudaContentNumbers cuda_content_numbers(const MaskSet& masks, int64_t layer, int64_t d, const ContentArrays* arrays, int64_t draw) {
    const std::string what = "cuda content numbers";
    CudaContentNumbers out(static_cast<size_t>(masks.heads));
    if (masks.content.empty()) return out;
    for (int64_t h = 0; h < masks.heads; ++h) {
        const auto& spec = masks.content[static_cast<size_t>(layer * masks.heads + h)];
        if (spec == nullptr) continue;
        auto& x = out[static_cast<size_t>(h)];
        if (spec->kind == ContentKind::lsh) {
            const ContentArray* file = content_array_find(arrays, *spec, what);
            for (int64_t r = 0; r < spec->rounds; ++r) {
                const std::vector<float> R = lsh_rotation(*spec, file, layer, h, r, d);
                x.insert(x.end(), R.begin(), R.end());
            }
        } else if (spec->kind == ContentKind::anchors) {
            const ContentArray* file = content_array_find(arrays, *spec, what);
            if (file == nullptr) {
                throw Error(what + ": anchors(" + std::to_string(spec->buckets) +
                            ") needs its fitted anchors (fit = \"FILE.npz\"; make one with sparsa anchors fit)");
            }
            content_array_check_shape(*file, {spec->rounds, spec->buckets, d}, what + ": anchors", "[rounds, k, d]");
            x = file->values;
        } else {
            x = favor_features_for_head(*spec, layer, h, d, draw, arrays, what).omega;
        }
    }
    return out;
}

std::vector<float> lsh_rotation_pieces(const std::vector<float>& mats, int64_t heads, int64_t rounds, int64_t cols, int64_t d,
                                       CudaDtype dtype) {
    const int64_t slices = (rounds * cols + 63) / 64;
    std::vector<float> pieces(static_cast<size_t>(heads * slices * 3 * 64 * d), 0.f);
    const auto round16 = [&](float value) {
        return dtype == CudaDtype::bfloat16 ? bf16_value(bf16_bits(value)) : fp16_value(fp16_bits(value));
    };
    for (int64_t h = 0; h < heads; ++h)
        for (int64_t g = 0; g < rounds * cols; ++g)
            for (int64_t i = 0; i < d; ++i) {
                const int64_t r = g / cols, c = g % cols, slice = g / 64, row = g % 64;
                const float value = mats[static_cast<size_t>(((h * rounds + r) * d + i) * cols + c)];
                // the remainders are exact in float32: hi and mid take the leading bits of value
                const float hi = round16(value), mid = round16(value - hi), lo = round16(value - hi - mid);
                if (!std::isfinite(hi)) return {};
                const size_t at = static_cast<size_t>((((h * slices + slice) * 3) * 64 + row) * d + i);
                pieces[at] = hi;
                pieces[at + static_cast<size_t>(64 * d)] = mid;
                pieces[at + static_cast<size_t>(2 * 64 * d)] = lo;
            }
    return pieces;
}

} // namespace sparsa
