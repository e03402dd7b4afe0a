// A chart of what each (layer, head) of a MaskSet keeps, drawn as pixels with no display: two
// heat maps side by side, rows layers and columns heads, with each cell's value written in it
// when it fits. `sparsa stats --png` writes it.
//   density      kept pairs / n^2
//   block FLOPs  pairs inside kept blocks / n^2: what a block-sparse kernel computes, against dense
// Both share one colour scale (0 to the largest block FLOPs), so that the second panel being
// darker shows the work spent on pairs that partial blocks do not keep.
// A content-based head (lsh, anchors, favor) has pairs that only an input decides: its cell is
// hatched, coloured by its fixed part (empty for favor and a family alone), and written with its
// family's name instead of a share; a title line says so.
#pragma once

#include "engine/block_mask.hpp"
#include "plot/image.hpp"
#include "plot/mask_figure.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

struct MaskStatsPanel {
    std::string name;                  // "density", "block FLOPs"
    std::vector<double> values;        // [layers * heads] fractions of n^2
    PixelBox title;
    std::vector<PixelBox> cells;       // [layers * heads], index l * heads + h
    std::vector<PixelBox> value_text;  // [layers * heads] the value inside each cell (w = 0 when it does not fit)
    std::vector<PixelBox> layer_labels;// [layers] (w = 0 when skipped for room)
    std::vector<PixelBox> head_labels; // [heads] (w = 0 when skipped)
};

struct MaskStatsChartLayout {
    int width = 0, height = 0;  // height follows from the width and the grid's shape
    PixelBox title;
    MaskStatsPanel panels[2];   // density, block FLOPs
    PixelBox scale;             // the colour scale's bar
    PixelBox scale_labels;      // its text ("0%", the largest value, what the colour means)
    double scale_max = 0;       // the value drawn darkest
    // [layers * heads]: "" for a fixed head, else its family ("lsh", "anchors", "favor"): hatched cells.
    std::vector<std::string> content_family;
};

// The colour of `value` on a scale from 0 (light) to `max` (dark blue), as 0xRRGGBB.
uint32_t mask_stats_color(double value, double max);

// Throws sparsa::Error for a set with no masks, a width outside 300 to 8192 or too narrow for
// the heads (the message gives the width that fits), or a chart taller than 16384 pixels.
MaskStatsChartLayout mask_stats_chart_layout(const MaskSet& set, int width);

// The chart: title (script_name, n, block, layers x heads), the two panels with layer and head
// labels, and the colour scale.
Image mask_stats_chart_render(const MaskSet& set, int width = 1000);
// As a PNG file's bytes.
std::vector<uint8_t> mask_stats_chart_png(const MaskSet& set, int width = 1000);

} // namespace sparsa
