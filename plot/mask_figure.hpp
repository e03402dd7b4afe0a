// Pictures of masks, drawn as pixels with no display: one (layer, head) mask with its axes and
// legend, and an overview of every (layer, head) of a MaskSet (bertviz's model view, for masks).
// `sparsa show --png` writes them; Python's MaskSet._repr_png_ draws itself with them.
//
// How a mask is drawn: the n x n matrix (rows: queries, top to bottom; columns: keys, left to
// right) is cut into square cells of `cell_tokens` tokens each way, each drawn as a square of
// `cell_pixels` pixels. When the mask's square has at least one pixel per token, a cell is one
// token (cell_tokens = 1): a pair in a full block is drawn kMaskColorFull; a pair in a partial
// block kMaskColorPartial when it is kept, kMaskColorPartialOff when not (so dilation, strides
// and causal edges show); a pair in no kept block kMaskColorEmpty. Otherwise a cell is one block
// (kMaskColorFull, kMaskColorPartial or kMaskColorEmpty), or g x g blocks when there are more
// blocks than pixels: mask_cell_color says how such a cell is shaded.
#pragma once

#include "engine/block_mask.hpp"
#include "plot/image.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

// Colours (0xRRGGBB), also the legend's.
constexpr uint32_t kMaskColorFull = 0x1f4e8c;        // a full block: every pair kept
constexpr uint32_t kMaskColorPartial = 0xe07b24;     // a partial block (token level: a kept pair of it)
constexpr uint32_t kMaskColorPartialOff = 0xf8dcc0;  // token level: a pair of a partial block that is not kept
constexpr uint32_t kMaskColorEmpty = 0xf2f2f2;       // not kept

// The colour of a cell of `blocks` blocks of which `kept` are kept, `full` of them full: empty
// when none is kept; else the colour of the kind most kept blocks are (full when at least half),
// blended over kMaskColorEmpty by the share of blocks kept on a log scale (1 + log10(kept /
// blocks) / 3, at least 0.15), so that a cell with one kept block among 16,384 reads as faint,
// not as solid. A cell of one block is the block's own colour.
uint32_t mask_cell_color(int64_t kept, int64_t full, int64_t blocks);

// Where one mask is drawn: pixels [x, x + side) x [y, y + side). Cell (r, c), covering queries
// [r * cell_tokens, ...) and keys [c * cell_tokens, ...), is pixels
// [x + c * cell_pixels, + cell_pixels) x [y + r * cell_pixels, + cell_pixels).
struct MaskPlacement {
    int x = 0, y = 0;
    int side = 0;             // cells * cell_pixels
    int64_t cells = 0;        // cells each way: ceil(n / cell_tokens)
    int cell_pixels = 1;      // pixels of a cell, each way
    int64_t cell_tokens = 1;  // tokens of a cell, each way: 1 (token level) or a multiple of the block
    bool token_level() const { return cell_tokens == 1; }
};

// [SECTION] one mask

// What mask_figure_render draws where (for tests, and for callers that place marks on top).
struct MaskFigureLayout {
    int width = 0, height = 0;
    MaskPlacement mask;
    PixelBox title;             // "NAME: layer L, head H, n = N, block B, density D"
    PixelBox x_label, y_label;  // "Key" under the mask, "Query" left of it (written top to bottom)
    PixelBox x_ticks, y_ticks;  // token positions along the top... bottom and left edges
    PixelBox legend;            // full block, partial block, not kept
};
// Throws sparsa::Error for a layer or head outside the set, or a size outside 240 to 8192.
MaskFigureLayout mask_figure_layout(const MaskSet& set, int64_t layer, int64_t head, int width, int height);

// The figure of mask (layer, head): title (the set's script_name when it has one, the layer,
// head, n, block and density), the mask with Query and Key axis labels and token ticks, and a
// legend. Same errors as mask_figure_layout.
Image mask_figure_render(const MaskSet& set, int64_t layer, int64_t head, int width = 640, int height = 640);
// As a PNG file's bytes.
std::vector<uint8_t> mask_figure_png(const MaskSet& set, int64_t layer, int64_t head, int width = 640, int height = 640);

// [SECTION] overview of every (layer, head)

// The grid: one cell per (layer, head), layers down, heads across.
struct MaskOverviewLayout {
    int width = 0, height = 0;  // height follows from the width and the grid's shape
    PixelBox title, legend;
    std::vector<MaskPlacement> cells;   // [layers * heads], index l * heads + h
    std::vector<PixelBox> densities;    // [layers * heads] the density under each cell (w = 0 when it does not fit)
    std::vector<PixelBox> layer_labels; // [layers] "L0".. left of each row (w = 0 when skipped for room)
    std::vector<PixelBox> head_labels;  // [heads] "H0".. above each column (w = 0 when skipped)
};
// Throws sparsa::Error for a width outside 240 to 8192, or one too narrow for the heads
// (the message gives the width that fits), or a grid taller than 16384 pixels.
MaskOverviewLayout mask_overview_layout(const MaskSet& set, int width);

// Small multiples of every (layer, head) mask with layer and head labels, the density under each
// cell (when it fits), a title (script_name, n, block, layers x heads, mean density) and a legend.
Image mask_overview_render(const MaskSet& set, int width = 1200);
// As a PNG file's bytes.
std::vector<uint8_t> mask_overview_png(const MaskSet& set, int width = 1200);

} // namespace sparsa
