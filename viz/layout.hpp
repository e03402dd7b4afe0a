// The screenshot's layout file (`sparsa-view --layout OUT.json`): the rectangles of what a frame
// drew (axis labels, ticks, legends, code lines, diagnostics, overview cells), so tests can look
// at the pixels inside them and check that nothing overlaps or is clipped. Written with the
// screenshot, from the last frame.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa::viz {

// One drawn thing, in window pixels (x right, y down; [x0, x1) x [y0, y1)). `clip` is the
// rectangle it was drawn inside: a rectangle not within its clip is (partly) cut off on screen.
struct LayoutRect {
    std::string kind;   // "axis_label", "tick", "legend", "code_line", "diagnostic", ...
    std::string text;   // the text drawn ("" for pictures)
    double x0 = 0, y0 = 0, x1 = 0, y1 = 0;
    double clip_x0 = 0, clip_y0 = 0, clip_x1 = 0, clip_y1 = 0;
    int64_t line = -1;                 // code_line, diagnostic: the script line (1-based)
    int64_t layer = -1, head = -1;     // overview_cell: the mask it shows
    int64_t texels = 0;                // overview_cell: texels a side of its picture
    int64_t blocks_per_texel = 0;      // overview_cell: blocks a side per texel
    std::string view;                  // the view it belongs to ("mask", "editor", ...)

    bool clipped(double tolerance = 0.5) const;  // not within its clip rectangle
    double overlap_area(const LayoutRect& other) const;
};

struct Layout {
    int width = 0, height = 0;  // the window
    std::vector<LayoutRect> rects;

    std::vector<const LayoutRect*> of_kind(const std::string& kind) const;
};

// As JSON: {"width": W, "height": H, "rects": [ {...}, one object a line ]}.
std::string layout_json(const Layout& layout);

// Writes layout_json to `path` whole or not at all (AtomicFile). Throws sparsa::Error.
void layout_save(const Layout& layout, const std::string& path);

// Reads what layout_save wrote (the format above, not general JSON). Throws sparsa::Error naming
// the path and the line for anything else.
Layout layout_load(const std::string& path);

} // namespace sparsa::viz
