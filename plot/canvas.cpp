// Drawing into an Image (rectangles, Bresenham lines, text in a 5 x 8 bitmap font made for
// sparsa), and the PNG encoding of an Image with stb_image_write (Debian's libstb-dev).
#include "plot/canvas.hpp"

#include "io/atomic_file.hpp"
#include "io/npz.hpp"
#include "engine/error.hpp"

#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iterator>

namespace sparsa {

namespace {

// [SECTION] font: 5 x 8 cells, rows top to bottom, '#' ink. A character not listed is drawn as a box.
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
    {'A', ".###.|#...#|#...#|#####|#...#|#...#|#...#|....."},
    {'B', "####.|#...#|#...#|####.|#...#|#...#|####.|....."},
    {'C', ".###.|#...#|#....|#....|#....|#...#|.###.|....."},
    {'D', "####.|#...#|#...#|#...#|#...#|#...#|####.|....."},
    {'E', "#####|#....|#....|####.|#....|#....|#####|....."},
    {'F', "#####|#....|#....|####.|#....|#....|#....|....."},
    {'G', ".###.|#...#|#....|#.###|#...#|#...#|.####|....."},
    {'H', "#...#|#...#|#...#|#####|#...#|#...#|#...#|....."},
    {'I', ".###.|..#..|..#..|..#..|..#..|..#..|.###.|....."},
    {'J', "..###|...#.|...#.|...#.|...#.|#..#.|.##..|....."},
    {'K', "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#|....."},
    {'L', "#....|#....|#....|#....|#....|#....|#####|....."},
    {'M', "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#|....."},
    {'N', "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#|....."},
    {'O', ".###.|#...#|#...#|#...#|#...#|#...#|.###.|....."},
    {'P', "####.|#...#|#...#|####.|#....|#....|#....|....."},
    {'Q', ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#|....."},
    {'R', "####.|#...#|#...#|####.|#.#..|#..#.|#...#|....."},
    {'S', ".####|#....|#....|.###.|....#|....#|####.|....."},
    {'T', "#####|..#..|..#..|..#..|..#..|..#..|..#..|....."},
    {'U', "#...#|#...#|#...#|#...#|#...#|#...#|.###.|....."},
    {'V', "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..|....."},
    {'W', "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.|....."},
    {'X', "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#|....."},
    {'Y', "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..|....."},
    {'Z', "#####|....#|...#.|..#..|.#...|#....|#####|....."},
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

constexpr int kGlyphW = kFontGlyphW, kGlyphH = kFontGlyphH;

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

} // namespace

// [SECTION] canvas

Canvas::Canvas(int width, int height) {
    image_.width = width;
    image_.height = height;
    image_.rgb.assign(static_cast<size_t>(width) * static_cast<size_t>(height) * 3, 255);
}

void Canvas::pixel(int x, int y, uint32_t rgb) {
    if (x < 0 || y < 0 || x >= image_.width || y >= image_.height) return;
    uint8_t* p = image_.rgb.data() + (static_cast<size_t>(y) * static_cast<size_t>(image_.width) + static_cast<size_t>(x)) * 3;
    p[0] = static_cast<uint8_t>(rgb >> 16);
    p[1] = static_cast<uint8_t>(rgb >> 8);
    p[2] = static_cast<uint8_t>(rgb);
}

void Canvas::rect(int x0, int y0, int x1, int y1, uint32_t rgb) {
    x0 = std::max(x0, 0);
    y0 = std::max(y0, 0);
    x1 = std::min(x1, image_.width - 1);
    y1 = std::min(y1, image_.height - 1);
    for (int y = y0; y <= y1; ++y) {
        for (int x = x0; x <= x1; ++x) pixel(x, y, rgb);
    }
}

void Canvas::frame(int x0, int y0, int x1, int y1, uint32_t rgb) {
    rect(x0, y0, x1, y0, rgb);
    rect(x0, y1, x1, y1, rgb);
    rect(x0, y0, x0, y1, rgb);
    rect(x1, y0, x1, y1, rgb);
}

void Canvas::line(int x0, int y0, int x1, int y1, uint32_t rgb, int thick, bool dashed) {
    const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    for (int step = 0;; ++step) {
        if (!dashed || step % 10 < 6) rect(x0 - (thick - 1) / 2, y0 - (thick - 1) / 2, x0 + thick / 2, y0 + thick / 2, rgb);
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

void Canvas::text(int x, int y, const std::string& s, uint32_t rgb, int scale) {
    for (char c : s) {
        const auto rows = glyph_rows(c);
        for (int gy = 0; gy < kGlyphH; ++gy) {
            for (int gx = 0; gx < kGlyphW; ++gx) {
                if ((rows[static_cast<size_t>(gy)] >> gx) & 1U) rect(x + gx * scale, y + gy * scale, x + gx * scale + scale - 1, y + gy * scale + scale - 1, rgb);
            }
        }
        x += kFontAdvance * scale;
    }
}

void Canvas::text_up(int x, int y, const std::string& s, uint32_t rgb, int scale) {
    // Glyph pixel (gx, gy) of the i-th character lands at column gy, row (length - 1 - i * advance - gx).
    const int bottom = y + text_width(s, scale) - 1;
    for (size_t i = 0; i < s.size(); ++i) {
        const auto rows = glyph_rows(s[i]);
        for (int gy = 0; gy < kGlyphH; ++gy) {
            for (int gx = 0; gx < kGlyphW; ++gx) {
                if (!((rows[static_cast<size_t>(gy)] >> gx) & 1U)) continue;
                const int px = x + gy * scale, py = bottom - (static_cast<int>(i) * kFontAdvance + gx) * scale;
                rect(px, py - scale + 1, px + scale - 1, py, rgb);
            }
        }
    }
}

// [SECTION] labels

std::vector<double> axis_ticks(double lo, double hi, int most, bool integer) {
    double step = 1;
    const double span = hi - lo;
    if (span > 0) {
        const double raw = span / std::max(1, most), base = std::pow(10.0, std::floor(std::log10(raw)));
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

std::string axis_tick_text(double v, bool percent, double step) {
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

std::string percent_text(double fraction, int decimals) {
    char buffer[32];
    if (fraction > 0 && fraction < 0.001) decimals = 4;
    std::snprintf(buffer, sizeof buffer, "%.*f%%", decimals, 100 * fraction);
    return buffer;
}

std::string text_fit(const std::string& s, int width, int scale) {
    if (Canvas::text_width(s, scale) <= width) return s;
    const int chars = width / (kFontAdvance * scale) - 2;
    return chars > 0 ? s.substr(0, static_cast<size_t>(chars)) + ".." : "";
}

PixelBox title_draw(Canvas* canvas, const std::vector<std::string>& lines, int image_width, int margin, int y, int scale, uint32_t rgb) {
    int s = scale;
    for (const auto& line : lines) {
        if (Canvas::text_width(line, s) > image_width - 2 * margin) s = 1;
    }
    PixelBox box{margin, y, 0, 0};
    for (const auto& line : lines) {
        const std::string t = text_fit(line, image_width - 2 * margin, s);
        const int w = Canvas::text_width(t, s), x = (image_width - w) / 2;
        if (canvas) canvas->text(x, y + box.h, t, rgb, s);
        box.x = box.w == 0 ? x : std::min(box.x, x);
        box.w = std::max(box.w, w);
        box.h += Canvas::text_height(s) + 4 * s;
    }
    return box;
}

std::string percent_fit(double fraction, int width, int scale) {
    for (int decimals = 2; decimals >= 0; --decimals) {
        std::string t = percent_text(fraction, decimals);
        if (decimals == 0 && fraction > 0 && fraction < 0.005) t = "<1%";
        if (Canvas::text_width(t, scale) <= width) return t;
    }
    return "";
}

// [SECTION] image

std::vector<uint8_t> image_rgba(const Image& image) {
    const size_t pixels = static_cast<size_t>(image.width) * static_cast<size_t>(image.height);
    std::vector<uint8_t> out(pixels * 4);
    for (size_t i = 0; i < pixels; ++i) {
        out[i * 4] = image.rgb[i * 3];
        out[i * 4 + 1] = image.rgb[i * 3 + 1];
        out[i * 4 + 2] = image.rgb[i * 3 + 2];
        out[i * 4 + 3] = 255;
    }
    return out;
}

std::vector<uint8_t> image_png_encode(const Image& image, const std::string& description) {
    std::vector<uint8_t> png;
    auto append = [](void* context, void* data, int size) {
        auto* out = static_cast<std::vector<uint8_t>*>(context);
        out->insert(out->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
    };
    if (image.width < 1 || image.height < 1 || image.rgb.size() != static_cast<size_t>(image.width) * static_cast<size_t>(image.height) * 3 ||
        stbi_write_png_to_func(append, &png, image.width, image.height, 3, image.rgb.data(), image.width * 3) == 0 || png.empty()) {
        throw Error("plot: the PNG encoder failed for a " + std::to_string(image.width) + " x " + std::to_string(image.height) + " image");
    }
    if (description.empty()) return png;
    // iTXt: keyword, 0, compression flag 0, method 0, empty language tag and translated keyword
    // (0, 0), the UTF-8 text; length and type before, CRC-32 of type and data after (PNG 11.3.4.5)
    std::string chunk = std::string("iTXt") + "Description" + '\0' + '\0' + '\0' + '\0' + '\0' + description;
    const auto be32 = [](uint32_t v) { return std::string{char(v >> 24), char(v >> 16 & 0xff), char(v >> 8 & 0xff), char(v & 0xff)}; };
    chunk = be32(static_cast<uint32_t>(chunk.size() - 4)) + chunk + be32(crc32_update(0, chunk.data(), chunk.size()));
    constexpr size_t kAfterHeader = 8 + 4 + 4 + 13 + 4;   // signature, IHDR's length, type, data, CRC
    png.insert(png.begin() + kAfterHeader, chunk.begin(), chunk.end());
    return png;
}

void image_png_save(const Image& image, const std::string& path, const std::string& description) {
    const std::vector<uint8_t> png = image_png_encode(image, description);  // everything before the file
    AtomicFile file(path);
    file.write(png.data(), png.size());
    file.commit();
}

} // namespace sparsa
