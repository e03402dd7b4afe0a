// Line plots drawn on a Canvas (plot/canvas.hpp), encoded as PNG and written atomically.
#include "plot/plot_png.hpp"

#include "plot/canvas.hpp"
#include "engine/error.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace sparsa {

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
    const std::vector<double> xt = axis_ticks(x_min, x_max, std::max(2, width / 110), plot.x_integer);
    const std::vector<double> yt = axis_ticks(y_min, y_max, std::max(2, height / 70), false);
    const double y_step = yt.size() > 1 ? yt[1] - yt[0] : 1;
    int label_w = 0;
    for (double v : yt) label_w = std::max(label_w, c.text_width(axis_tick_text(v, plot.y_percent, y_step), s));
    // The plot area: [left, right] x [top, bottom] pixels.
    const int left = 16 + label_w + 8, right = width - 24, top = 2 * 8 * s + 36, bottom = height - (2 * 8 * s + 28);
    auto px = [&](double x) { return left + static_cast<int>(std::lround((x - x_min) / (x_max - x_min) * (right - left))); };
    auto py = [&](double y) { return bottom - static_cast<int>(std::lround((y - y_min) / (y_max - y_min) * (bottom - top))); };

    c.text((width - c.text_width(plot.title, s)) / 2, 8, plot.title, ink, s);
    c.text(16, top - 8 * s - 8, plot.y_label, ink, s);
    c.text((left + right - c.text_width(plot.x_label, s)) / 2, height - 8 * s - 8, plot.x_label, ink, s);
    for (double v : yt) {
        c.line(left, py(v), right, py(v), grid);
        const std::string t = axis_tick_text(v, plot.y_percent, y_step);
        c.text(left - 8 - c.text_width(t, s), py(v) - 4 * s, t, ink, s);
    }
    for (double v : xt) {
        c.line(px(v), top, px(v), bottom, grid);
        c.line(px(v), bottom, px(v), bottom + 5, axis);
        const std::string t = axis_tick_text(v, false, 1);
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
    return c.take().rgb;
}

std::string plot_description(const Plot& plot) {
    std::string out = plot.title + "; x: " + plot.x_label + "; y: " + plot.y_label;
    std::string names;
    for (const PlotSeries& series : plot.series) {
        if (series.label.empty()) continue;
        names += (names.empty() ? "" : ", ") + series.label;
    }
    if (!names.empty()) out += "; series: " + names;
    return out;
}

std::vector<uint8_t> plot_png_encode(const Plot& plot, int width, int height) {
    Image image;
    image.width = width;
    image.height = height;
    image.rgb = plot_render(plot, width, height);
    return image_png_encode(image, plot_description(plot));
}

void plot_png_save(const Plot& plot, const std::string& path, int width, int height) {
    Image image;
    image.width = width;
    image.height = height;
    image.rgb = plot_render(plot, width, height);
    image_png_save(image, path, plot_description(plot));
}

} // namespace sparsa
