// Drawing into an Image: filled rectangles, lines, and text in a 5 x 8 bitmap font made for
// sparsa (letters, digits, common punctuation; capitals drawn as small letters; any other
// character as a box), at an integer scale. Shared by every picture of plot/.
#pragma once

#include "plot/image.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

// Glyph cell of the font, before scaling: 5 x 8 pixels of ink, 6 pixels from one to the next.
constexpr int kFontGlyphW = 5, kFontGlyphH = 8, kFontAdvance = 6;

class Canvas {
public:
    // A white canvas of width x height pixels (the caller checks the size).
    Canvas(int width, int height);

    int width() const { return image_.width; }
    int height() const { return image_.height; }
    const Image& image() const { return image_; }
    Image take() { return std::move(image_); }

    // Pixels outside the canvas are skipped by every drawing call.
    void pixel(int x, int y, uint32_t rgb);
    // Filled, inclusive corners.
    void rect(int x0, int y0, int x1, int y1, uint32_t rgb);
    // The outline of [x0, x1] x [y0, y1], inclusive.
    void frame(int x0, int y0, int x1, int y1, uint32_t rgb);
    // A line `thick` pixels wide; dashed: 6 on, 4 off.
    void line(int x0, int y0, int x1, int y1, uint32_t rgb, int thick = 1, bool dashed = false);

    // Text with its top-left corner at (x, y), glyphs scaled `scale` times.
    void text(int x, int y, const std::string& s, uint32_t rgb, int scale);
    // Text turned a quarter left (read from bottom to top, as a y axis label), with the top-left
    // corner of its bounding box at (x, y): text_height(scale) wide, text_width(s, scale) high.
    void text_up(int x, int y, const std::string& s, uint32_t rgb, int scale);
    static int text_width(const std::string& s, int scale) { return static_cast<int>(s.size()) * kFontAdvance * scale; }
    static int text_height(int scale) { return kFontGlyphH * scale; }

private:
    Image image_;
};

// [SECTION] labels

// `s` shortened with ".." to at most `width` pixels at `scale`.
std::string text_fit(const std::string& s, int width, int scale);
// Title lines centred in [margin, image_width - margin), from y down: at `scale` when every line
// fits, else at 1, shortened when one still does not. Measures only when canvas is nullptr.
// Returns the box the lines take.
PixelBox title_draw(Canvas* canvas, const std::vector<std::string>& lines, int image_width, int margin, int y, int scale, uint32_t rgb);

// Tick positions over [lo, hi]: a step of 1, 2 or 5 times a power of ten, at most `most` ticks
// (whole numbers only when `integer`).
std::vector<double> axis_ticks(double lo, double hi, int most, bool integer);
// A tick's text: "%.0f%%" (or "%.1f%%" for steps under 1%) when `percent`, else the number.
std::string axis_tick_text(double v, bool percent, double step);
// A fraction as a percentage with `decimals` decimals ("12.50%"); fractions under 0.001 get
// 4 decimals, so that a sparse mask does not read "0.00%".
std::string percent_text(double fraction, int decimals = 2);
// The shortest of percent_text with 2, 1 or 0 decimals ("<1%" for a fraction under 0.5%) that
// fits in `width` pixels at `scale`; "" when none does.
std::string percent_fit(double fraction, int width, int scale);

} // namespace sparsa
