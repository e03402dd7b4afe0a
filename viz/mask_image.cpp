// Mask, block, light-cone and hops pictures as RGBA images (see mask_image.hpp).
#include "viz/mask_image.hpp"

#include "engine/error.hpp"
#include "analysis/reach_graph.hpp"

#include <algorithm>
#include <cmath>

namespace sparsa::viz {

namespace {

uint32_t mix(uint32_t a, uint32_t b, double t) {  // a at t = 0, b at t = 1
    uint32_t out = 0xFF;
    for (int shift = 24; shift >= 8; shift -= 8) {
        double ca = (a >> shift) & 0xFF, cb = (b >> shift) & 0xFF;
        out |= static_cast<uint32_t>(std::lround(ca + (cb - ca) * t)) << shift;
    }
    return out;
}

} // namespace

MaskImage mask_image_make(const BlockMask& mask, int64_t max_side) {
    if (max_side < 1) throw Error("mask image: max_side must be at least 1; got " + std::to_string(max_side));
    const int64_t blocks = mask.q_blocks();
    MaskImage out;
    out.blocks_per_pixel = (blocks + max_side - 1) / max_side;
    const int64_t g = out.blocks_per_pixel;
    const int side = static_cast<int>((blocks + g - 1) / g);
    out.image = image_make(side, side, kColorBackground);
    for (int64_t qb = 0; qb < blocks; ++qb) {
        for (int64_t i = mask.row_ptr[qb]; i < mask.row_ptr[qb + 1]; ++i) {
            int x = static_cast<int>(mask.col_idx[i] / g), y = static_cast<int>(qb / g);
            bool full = mask.partial_idx[i] < 0;
            if (full) {
                out.image.set(x, y, kColorFull);
            } else if (out.image.pixel(x, y) == kColorBackground) {
                out.image.set(x, y, kColorPartial);
            }
        }
    }
    return out;
}

Image block_pairs_image(const BlockMask& mask, int64_t qb, int64_t kb) {
    if (qb < 0 || kb < 0 || qb >= mask.q_blocks() || kb >= mask.k_blocks()) {
        throw Error("block (" + std::to_string(qb) + ", " + std::to_string(kb) + ") is outside the mask's " +
                    std::to_string(mask.q_blocks()) + " x " + std::to_string(mask.k_blocks()) + " blocks");
    }
    const int B = mask.block;
    Image image = image_make(B, B, kColorBackground);
    // Find the block in its row: full, partial (its bitmask), or absent.
    const int32_t* begin = mask.col_idx.data() + mask.row_ptr[qb];
    const int32_t* end = mask.col_idx.data() + mask.row_ptr[qb + 1];
    const int32_t* it = std::lower_bound(begin, end, static_cast<int32_t>(kb));
    const bool kept = it != end && *it == kb;
    const int32_t partial = kept ? mask.partial_idx[static_cast<size_t>(it - mask.col_idx.data())] : -1;
    for (int i = 0; i < B; ++i) {
        for (int j = 0; j < B; ++j) {
            int64_t q = qb * B + i, k = kb * B + j;
            if (q >= mask.n || k >= mask.n) {
                image.set(j, i, kColorNever);
            } else if (kept && partial < 0) {
                image.set(j, i, kColorFull);
            } else if (kept && bits_test(mask.partial_bits(partial), int64_t{i} * B + j)) {
                image.set(j, i, kColorPartial);
            }
        }
    }
    return image;
}

Image mask_region_image(const BlockMask& mask, int64_t q0, int64_t k0, int64_t rows, int64_t cols) {
    if (q0 < 0 || k0 < 0 || rows < 1 || cols < 1 || rows * cols > (int64_t{1} << 26)) {
        throw Error("mask region: origin (" + std::to_string(q0) + ", " + std::to_string(k0) + ") and size " +
                    std::to_string(rows) + " x " + std::to_string(cols) + " must be non-negative, at least 1 x 1 and at most 2^26 pixels");
    }
    Image image = image_make(static_cast<int>(cols), static_cast<int>(rows), kColorBackground);
    const int64_t B = mask.block, n = mask.n;
    auto paint = [&](int64_t q, int64_t k, uint32_t color) { image.set(static_cast<int>(k - k0), static_cast<int>(q - q0), color); };
    for (int64_t q = q0; q < q0 + rows; ++q) {  // past n: never
        for (int64_t k = k0; k < k0 + cols; ++k) {
            if (q >= n || k >= n) paint(q, k, kColorNever);
        }
    }
    const int64_t q_end = std::min(q0 + rows, n), k_end = std::min(k0 + cols, n);
    for (int64_t qb = q0 / B; qb * B < q_end; ++qb) {
        const int32_t* row_begin = mask.col_idx.data() + mask.row_ptr[qb];
        const int32_t* row_end = mask.col_idx.data() + mask.row_ptr[qb + 1];
        // Only the kept blocks whose keys meet [k0, k_end).
        for (const int32_t* it = std::lower_bound(row_begin, row_end, static_cast<int32_t>(k0 / B));
             it != row_end && int64_t{*it} * B < k_end; ++it) {
            const int64_t kb = *it;
            const int32_t partial = mask.partial_idx[static_cast<size_t>(it - mask.col_idx.data())];
            const uint64_t* bits = partial >= 0 ? mask.partial_bits(partial) : nullptr;
            for (int64_t q = std::max(q0, qb * B); q < std::min(q_end, (qb + 1) * B); ++q) {
                for (int64_t k = std::max(k0, kb * B); k < std::min(k_end, (kb + 1) * B); ++k) {
                    if (bits == nullptr) paint(q, k, kColorFull);
                    else if (bits_test(bits, (q - qb * B) * B + (k - kb * B))) paint(q, k, kColorPartial);
                }
            }
        }
    }
    return image;
}

uint32_t light_cone_color(double fraction) { return mix(0xB9D3EEFF, kColorFull, fraction); }

Image light_cone_image(const TokenReach& field, int64_t n, int width) {
    const int64_t layers = static_cast<int64_t>(field.sizes.size()) - 1;
    if (static_cast<int64_t>(field.sets.size()) != layers + 1) {
        throw Error("light cone: the field's sets were not kept (call receptive_field_token with keep_sets)");
    }
    width = static_cast<int>(std::clamp<int64_t>(width, 1, n));
    Image image = image_make(width, static_cast<int>(layers + 1), kColorBackground);
    for (int64_t l = 0; l <= layers; ++l) {
        const uint64_t* set = field.sets[static_cast<size_t>(l)].data();
        for (int c = 0; c < width; ++c) {
            int64_t begin = c * n / width, end = (c + 1) * n / width;
            int64_t count = 0;
            for (int64_t t = begin; t < end; ++t) count += bits_test(set, t);
            if (count == 0) continue;
            double fraction = static_cast<double>(count) / static_cast<double>(end - begin);
            image.set(c, static_cast<int>(layers - l), light_cone_color(fraction));
        }
    }
    return image;
}

uint32_t hops_color(int64_t layer, int64_t layers) {
    double t = layers <= 0 ? 0.0 : static_cast<double>(layer) / static_cast<double>(layers);
    // Yellow (layer 0) through green to dark blue (the last layer).
    return t < 0.5 ? mix(0xFDE725FF, 0x21918CFF, t * 2) : mix(0x21918CFF, 0x3B0F70FF, (t - 0.5) * 2);
}

Image hops_image(const HopsMatrix& hops) {
    const int side = static_cast<int>(hops.nodes);
    Image image = image_make(side, side, kColorNever);
    for (int a = 0; a < side; ++a) {
        for (int b = 0; b < side; ++b) {
            int64_t l = hops.at(a, b);
            if (l >= 0) image.set(b, a, hops_color(l, hops.layers));
        }
    }
    return image;
}

} // namespace sparsa::viz
