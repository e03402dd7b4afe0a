// The pictures the viewer draws from analysis results, as plain RGBA images (textures later):
// a mask as a block grid, the exact pairs of one partial block, a token's field as a light cone,
// and the hops matrix.
#pragma once

#include "engine/block_mask.hpp"
#include "analysis/receptive_field.hpp"
#include "viz/hops.hpp"
#include "viz/image.hpp"

#include <cstdint>

namespace sparsa::viz {

// Colours (0xRRGGBBAA) of the mask view: tests look for exactly these in screenshots.
constexpr uint32_t kColorBackground = 0xF4F4F4FF;  // no kept block
constexpr uint32_t kColorFull = 0x1F5FA8FF;        // a full block (every pair kept)
constexpr uint32_t kColorPartial = 0xF5A33CFF;     // a partial block (some pairs kept)
constexpr uint32_t kColorNever = 0xD8D8D8FF;       // hops: not reached within the layers

// The block grid of a mask, one pixel per cell of g x g blocks, g = ceil(q_blocks / max_side)
// (1 when the mask has at most max_side blocks a side): background, full, or partial (a cell
// with a full block is drawn full; one with only partial blocks, partial). Pixel (x, y) is key
// blocks [x*g, (x+1)*g), query blocks [y*g, (y+1)*g). Work: the kept blocks.
struct MaskImage {
    Image image;
    int64_t blocks_per_pixel = 1;  // g
};
MaskImage mask_image_make(const BlockMask& mask, int64_t max_side = 2048);

// The B x B pairs of block (qb, kb): pixel (j, i) is query qb*B + i, key kb*B + j; kept pairs
// in the full or partial colour, pairs past n in kColorNever.
Image block_pairs_image(const BlockMask& mask, int64_t qb, int64_t kb);

// The pairs of a rectangle of the mask at token resolution, for a zoomed view: pixel (j, i) is
// query q0 + i, key k0 + j; kept pairs in the colour of their block's kind (full or partial),
// other pairs kColorBackground, pairs past n kColorNever. Work: rows * cols plus the kept blocks
// of the rows' blocks that meet the columns (only what is visible). Throws sparsa::Error for a
// negative origin or size, or more than 2^26 pixels.
Image mask_region_image(const BlockMask& mask, int64_t q0, int64_t k0, int64_t rows, int64_t cols);

// A token's field after each layer, stacked: row l from the bottom is layer l (row 0 at the
// bottom is layer 0, the token alone). Column c covers tokens [c*n/width, (c+1)*n/width); its
// colour deepens with the fraction of them in the field. field.sets must be kept.
Image light_cone_image(const TokenReach& field, int64_t n, int width);
uint32_t light_cone_color(double fraction);  // the colour of a column with `fraction` (> 0) in the field

// The hops matrix as colours: one pixel per (query node, key node), a colour per layer from
// light (layer 0) to dark (the last layer), kColorNever when not reached within the layers.
Image hops_image(const HopsMatrix& hops);
uint32_t hops_color(int64_t layer, int64_t layers);  // the colour of `layer` out of `layers`

} // namespace sparsa::viz
