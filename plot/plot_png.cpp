// Line plots drawn into an RGB buffer (Bresenham lines, a 5 x 8 bitmap font made for sparsa),
// then encoded as PNG with stb_image_write (Debian's libstb-dev) and written atomically.
#include "plot/plot_png.hpp"

#include "io/atomic_file.hpp"
#include "engine/error.hpp"

#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <iterator>

namespace sparsa {

namespace {

// [SECTION] font: 5 x 8 cells, rows top to bottom, '#' ink; uppercase letters use the lowercase
// glyphs. A character not listed is drawn as a box.
struct Glyph {
    char c;
    const char* rows;  // 8 rows of 5, separated by '|'
};
constexpr Glyph kGlyphs[] = {
    {' ', ".....|.....|.....|.....|.....|.....|.....|....."},
    {'0', ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.|....."},
    {'1', "..#..|.##..|..#..|..#..|..#..|..#..|.###.|....."},
    {'2', ".###.|#...#|....#|...#.|..#..|.#...|#####|....."},
    {'3', "#####|...#.|..#..|...#.|....#|#...#|.###.|....."},
    {'4', "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.|....."},
    {'5', "#####|#....|####.|....#|....#|#...#|.###.|....."},
    {'6', "..##.|.#...|#....|####.|#...#|#...#|.###.|....."},
    {'7', "#####|....#|...#.|..#..|.#...|.#...|.#...|....."},
    {'8', ".###.|#...#|#...#|.###.|#...#|#...#|.###.|....."},
    {'9', ".###.|#...#|#...#|.####|....#|...#.|.##..|....."},
    {'a', ".....|.....|.###.|....#|.####|#...#|.####|....."},
    {'b', "#....|#....|####.|#...#|#...#|#...#|####.|....."},
    {'c', ".....|.....|.###.|#....|#....|#...#|.###.|....."},
    {'d', "....#|....#|.####|#...#|#...#|#...#|.####|....."},
    {'e', ".....|.....|.###.|#...#|#####|#....|.###.|....."},
    {'f', "..##.|.#...|###..|.#...|.#...|.#...|.#...|....."},
    {'g', ".....|.....|.####|#...#|#...#|.####|....#|.###."},
    {'h', "#....|#....|####.|#...#|#...#|#...#|#...#|....."},
    {'i', "..#..|.....|.##..|..#..|..#..|..#..|.###.|....."},
    {'j', "...#.|.....|..##.|...#.|...#.|...#.|#..#.|.##.."},
    {'k', "#....|#....|#..#.|#.#..|##...|#.#..|#..#.|....."},
    {'l', ".##..|..#..|..#..|..#..|..#..|..#..|.###.|....."},
    {'m', ".....|.....|##.#.|#.#.#|#.#.#|#.#.#|#.#.#|....."},
    {'n', ".....|.....|####.|#...#|#...#|#...#|#...#|....."},
    {'o', ".....|.....|.###.|#...#|#...#|#...#|.###.|....."},
    {'p', ".....|.....|####.|#...#|#...#|####.|#....|#...."},
    {'q', ".....|.....|.####|#...#|#...#|.####|....#|....#"},
    {'r', ".....|.....|#.##.|##..#|#....|#....|#....|....."},
    {'s', ".....|.....|.####|#....|.###.|....#|####.|....."},
    {'t', ".#...|.#...|###..|.#...|.#...|.#..#|..##.|....."},
    {'u', ".....|.....|#...#|#...#|#...#|#..##|.##.#|....."},
    {'v', ".....|.....|#...#|#...#|#...#|.#.#.|..#..|....."},
    {'w', ".....|.....|#...#|#...#|#.#.#|#.#.#|.#.#.|....."},
    {'x', ".....|.....|#...#|.#.#.|..#..|.#.#.|#...#|....."},
    {'y', ".....|.....|#...#|#...#|#...#|.####|....#|.###."},
    {'z', ".....|.....|#####|...#.|..#..|.#...|#####|....."},
    {'.', ".....|.....|.....|.....|.....|.##..|.##..|....."},
    {',', ".....|.....|.....|.....|.....|.##..|..#..|.#..."},
    {':', ".....|.##..|.##..|.....|.##..|.##..|.....|....."},
    {'%', "##...|##..#|...#.|..#..|.#...|#..##|...##|....."},
    {'(', "...#.|..#..|.#...|.#...|.#...|..#..|...#.|....."},
    {')', ".#...|..#..|...#.|...#.|...#.|..#..|.#...|....."},
    {'[', ".###.|.#...|.#...|.#...|.#...|.#...|.###.|....."},
    {']', ".###.|...#.|...#.|...#.|...#.|...#.|.###.|....."},
    {'{', "...##|..#..|..#..|.#...|..#..|..#..|...##|....."},
    {'}', "##...|..#..|..#..|...#.|..#..|..#..|##...|....."},
    {'-', ".....|.....|.....|#####|.....|.....|.....|....."},
    {'+', ".....|..#..|..#..|#####|..#..|..#..|.....|....."},
    {'=', ".....|.....|#####|.....|#####|.....|.....|....."},
    {'/', ".....|....#|...#.|..#..|.#...|#....|.....|....."},
    {'_', ".....|.....|.....|.....|.....|.....|.....|#####"},
    {'|', "..#..|..#..|..#..|..#..|..#..|..#..|..#..|....."},
    {'*', ".....|#.#.#|.###.|#####|.###.|#.#.#|.....|....."},
    {'<', "...#.|..#..|.#...|#....|.#...|..#..|...#.|....."},
    {'>', ".#...|..#..|...#.|....#|...#.|..#..|.#...|....."},
    {'!', "..#..|..#..|..#..|..#..|..#..|.....|..#..|....."},
    {'?', ".###.|#...#|....#|...#.|..#..|.....|..#..|....."},
    {'\'', "..#..|..#..|.#...|.....|.....|.....|.....|....."},
    {'#', ".#.#.|.#.#.|#####|.#.#.|#####|.#.#.|.#.#.|....."},
    {'^', "..#..|.#.#.|#...#|.....|.....|.....|.....|....."},
    {'&', ".##..|#..#.|#.#..|.#...|#.#.#|#..#.|.##.#|....."},
    {'~', ".....|.....|.#...|#.#.#|...#.|.....|.....|....."},
    {';', ".....|.##..|.##..|.....|.##..|..#..|.#...|....."},
    {'"', ".#.#.|.#.#.|.....|.....|.....|.....|.....|....."},
    {'\\', ".....|#....|.#...|..#..|...#.|....#|.....|....."},
};
constexpr int kGlyphW = 5, kGlyphH = 8, kAdvance = 6;  // pixels per glyph, before scaling

// Every glyph is 8 rows of 5 '#' or '.', joined by '|', and no character is listed twice.
constexpr bool glyphs_well_formed() {
    for (size_t g = 0; g < std::size(kGlyphs); ++g) {
        for (size_t h = 0; h < g; ++h) {
            if (kGlyphs[h].c == kGlyphs[g].c) return false;
        }
        int i = 0;
        for (; kGlyphs[g].rows[i] != '\0'; ++i) {
            const char c = kGlyphs[g].rows[i];
            if ((i % (kGlyphW + 1) == kGlyphW) != (c == '|') || (c != '|' && c != '#' && c != '.')) return false;
        }
        if (i != kGlyphH * (kGlyphW + 1) - 1) return false;
    }
    return true;
}
static_assert(glyphs_well_formed(), "a glyph of kGlyphs is not 8 rows of 5 '#'/'.' joined by '|', or is listed twice");

// Ink rows of a character: bit x of row y set where the glyph has ink.
std::array<uint8_t, kGlyphH> glyph_rows(char c) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    for (const Glyph& g : kGlyphs) {
        if (g.c != c) continue;
        std::array<uint8_t, kGlyphH> rows{};
        for (int y = 0; y < kGlyphH; ++y) {
            for (int x = 0; x < kGlyphW; ++x) {
                if (g.rows[y * (kGlyphW + 1) + x] == '#') rows[static_cast<size_t>(y)] |= static_cast<uint8_t>(1U << x);
            }
        }
        return rows;
    }
    return {0x1f, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1f, 0x00};  // a box
}

// [SECTION] canvas

struct Canvas {
    int width, height;
    std::vector<uint8_t> rgb;  // [height, width, 3]

    Canvas(int w, int h) : width(w), height(h), rgb(static_cast<size_t>(w) * static_cast<size_t>(h) * 3, 255) {}

    void pixel(int x, int y, uint32_t color) {
        if (x < 0 || y < 0 || x >= width || y >= height) return;
        uint8_t* p = rgb.data() + (static_cast<size_t>(y) * static_cast<size_t>(width) + static_cast<size_t>(x)) * 3;
        p[0] = static_cast<uint8_t>(color >> 16);
        p[1] = static_cast<uint8_t>(color >> 8);
        p[2] = static_cast<uint8_t>(color);
    }
    void rect(int x0, int y0, int x1, int y1, uint32_t color) {  // filled, inclusive corners
        for (int y = y0; y <= y1; ++y) {
            for (int x = x0; x <= x1; ++x) pixel(x, y, color);
        }
    }
    // A line `thick` pixels wide; dashed: 6 on, 4 off.
    void line(int x0, int y0, int x1, int y1, uint32_t color, int thick = 1, bool dashed = false) {
        const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
        int err = dx + dy;
        for (int step = 0;; ++step) {
            if (!dashed || step % 10 < 6) rect(x0 - (thick - 1) / 2, y0 - (thick - 1) / 2, x0 + thick / 2, y0 + thick / 2, color);
            if (x0 == x1 && y0 == y1) break;
            const int e2 = 2 * err;
            if (e2 >= dy) {
                err += dy;
                x0 += sx;
            }
            if (e2 <= dx) {
                err += dx;
                y0 += sy;
            }
        }
    }
    int text_width(const std::string& s, int scale) const { return static_cast<int>(s.size()) * kAdvance * scale; }
    // Text with its top-left corner at (x, y).
    void text(int x, int y, const std::string& s, uint32_t color, int scale) {
        for (char c : s) {
            const auto rows = glyph_rows(c);
            for (int gy = 0; gy < kGlyphH; ++gy) {
                for (int gx = 0; gx < kGlyphW; ++gx) {
                    if ((rows[static_cast<size_t>(gy)] >> gx) & 1U) rect(x + gx * scale, y + gy * scale, x + gx * scale + scale - 1, y + gy * scale + scale - 1, color);
                }
            }
            x += kAdvance * scale;
        }
    }
};

// Tick positions over [lo, hi]: a step of 1, 2 or 5 times a power of ten giving at most `most`.
std::vector<double> ticks_make(double lo, double hi, int most, bool integer) {
    double step = 1;
    const double span = hi - lo;
    if (span > 0) {
        const double raw = span / most, base = std::pow(10.0, std::floor(std::log10(raw)));
        step = base;
        for (double m : {1.0, 2.0, 5.0, 10.0}) {
            step = m * base;
            if (step >= raw) break;
        }
    }
    if (integer) step = std::max(1.0, std::round(step));
    std::vector<double> ticks;
    for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
    return ticks;
}

std::string tick_text(double v, bool percent, double step) {
    char buffer[32];
    if (percent) {
        std::snprintf(buffer, sizeof buffer, step * 100 >= 1 ? "%.0f%%" : "%.1f%%", 100 * v);
    } else if (std::abs(v - std::round(v)) < 1e-9) {
        std::snprintf(buffer, sizeof buffer, "%.0f", v);
    } else {
        std::snprintf(buffer, sizeof buffer, "%g", v);
    }
    return buffer;
}

} // namespace

std::vector<uint8_t> plot_render(const Plot& plot, int width, int height) {
    if (width < 200 || height < 150 || width > 8192 || height > 8192) {
        throw Error("plot: " + std::to_string(width) + " x " + std::to_string(height) +
                    " pixels is not a plot size (use 200 to 8192 wide, 150 to 8192 high)");
    }
    Canvas c(width, height);
    const int s = 2;  // font scale: 10 x 16 pixel glyphs
    const uint32_t ink = 0x202020, grid = 0xe0e0e0, axis = 0x404040;
    const double x_min = plot.x_min, x_max = plot.x_max > plot.x_min ? plot.x_max : plot.x_min + 1;
    const double y_min = plot.y_min, y_max = plot.y_max > plot.y_min ? plot.y_max : plot.y_min + 1;
    const std::vector<double> xt = ticks_make(x_min, x_max, std::max(2, width / 110), plot.x_integer);
    const std::vector<double> yt = ticks_make(y_min, y_max, std::max(2, height / 70), false);
    const double y_step = yt.size() > 1 ? yt[1] - yt[0] : 1;
    int label_w = 0;
    for (double v : yt) label_w = std::max(label_w, c.text_width(tick_text(v, plot.y_percent, y_step), s));
    // The plot area: [left, right] x [top, bottom] pixels.
    const int left = 16 + label_w + 8, right = width - 24, top = 2 * 8 * s + 36, bottom = height - (2 * 8 * s + 28);
    auto px = [&](double x) { return left + static_cast<int>(std::lround((x - x_min) / (x_max - x_min) * (right - left))); };
    auto py = [&](double y) { return bottom - static_cast<int>(std::lround((y - y_min) / (y_max - y_min) * (bottom - top))); };

    c.text((width - c.text_width(plot.title, s)) / 2, 8, plot.title, ink, s);
    c.text(16, top - 8 * s - 8, plot.y_label, ink, s);
    c.text((left + right - c.text_width(plot.x_label, s)) / 2, height - 8 * s - 8, plot.x_label, ink, s);
    for (double v : yt) {
        c.line(left, py(v), right, py(v), grid);
        const std::string t = tick_text(v, plot.y_percent, y_step);
        c.text(left - 8 - c.text_width(t, s), py(v) - 4 * s, t, ink, s);
    }
    for (double v : xt) {
        c.line(px(v), top, px(v), bottom, grid);
        c.line(px(v), bottom, px(v), bottom + 5, axis);
        const std::string t = tick_text(v, false, 1);
        c.text(px(v) - c.text_width(t, s) / 2, bottom + 9, t, ink, s);
    }
    c.line(left, top, left, bottom, axis, 2);
    c.line(left, bottom, right, bottom, axis, 2);
    for (const PlotMarker& m : plot.markers) {
        if (m.x < x_min || m.x > x_max) continue;
        c.line(px(m.x), top, px(m.x), bottom, 0x808080, 1, true);
        c.text(std::min(px(m.x) + 4, right - c.text_width(m.label, 1)), top + 4, m.label, 0x606060, 1);
    }
    for (const PlotSeries& series : plot.series) {
        const size_t points = std::min(series.x.size(), series.y.size());
        for (size_t i = 1; i < points; ++i) {
            c.line(px(series.x[i - 1]), py(series.y[i - 1]), px(series.x[i]), py(series.y[i]), series.rgb, 2);
        }
        if (points <= 64) {
            for (size_t i = 0; i < points; ++i) c.rect(px(series.x[i]) - 2, py(series.y[i]) - 2, px(series.x[i]) + 2, py(series.y[i]) + 2, series.rgb);
        }
    }
    int legend_y = top + 8;
    for (const PlotSeries& series : plot.series) {  // top left, inside the axes
        if (series.label.empty()) continue;
        c.rect(left + 10, legend_y + 2, left + 10 + 5 * s, legend_y + 2 + 5 * s, series.rgb);
        c.text(left + 10 + 8 * s, legend_y, series.label, ink, s);
        legend_y += 10 * s;
    }
    return c.rgb;
}

std::vector<uint8_t> plot_png_encode(const Plot& plot, int width, int height) {
    const std::vector<uint8_t> rgb = plot_render(plot, width, height);
    std::vector<uint8_t> png;
    auto append = [](void* context, void* data, int size) {
        auto* out = static_cast<std::vector<uint8_t>*>(context);
        out->insert(out->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
    };
    if (stbi_write_png_to_func(append, &png, width, height, 3, rgb.data(), width * 3) == 0 || png.empty()) {
        throw Error("plot: the PNG encoder failed for a " + std::to_string(width) + " x " + std::to_string(height) + " image");
    }
    return png;
}

void plot_png_save(const Plot& plot, const std::string& path, int width, int height) {
    const std::vector<uint8_t> png = plot_png_encode(plot, width, height);  // everything before the file
    AtomicFile file(path);
    file.write(png.data(), png.size());
    file.commit();
}

} // namespace sparsa
