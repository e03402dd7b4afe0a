// Line plots as PNG images (axes, ticks, labels, legend, drawn with a tiny built-in bitmap font):
// the coverage curves of `sparsa reach`, and any other y-against-x curve.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

struct PlotSeries {
    std::string label;           // shown in the legend ("" for none)
    std::vector<double> x, y;    // [points] each
    uint32_t rgb = 0x1f77b4;     // 0xRRGGBB
};

// A dashed vertical line at x, labelled at its top (e.g. "layers 24").
struct PlotMarker {
    double x = 0;
    std::string label;
};

struct Plot {
    std::string title, x_label, y_label;  // y_label is written above the y axis
    double x_min = 0, x_max = 1, y_min = 0, y_max = 1;
    bool x_integer = false;               // x ticks on whole numbers only
    bool y_percent = false;               // y tick labels as percentages of 1
    std::vector<PlotSeries> series;
    std::vector<PlotMarker> markers;
};

// The plot as RGB pixels: [height, width, 3] bytes. Text: letters, digits and common
// punctuation (plot/canvas.hpp's font); other characters are drawn as a box. Throws
// sparsa::Error for sizes under 200 x 150 or over 8192.
std::vector<uint8_t> plot_render(const Plot& plot, int width, int height);

// What the plot shows in words: its title, axis labels and the legend's series, in order
// ("TITLE; x: X; y: Y; series: A, B"). The PNG files carry it (image_png_encode's description).
std::string plot_description(const Plot& plot);

// The plot as the bytes of a PNG file, with plot_description in it.
std::vector<uint8_t> plot_png_encode(const Plot& plot, int width = 800, int height = 480);

// Writes the PNG to `path` whole or not at all (encoded in memory, then an AtomicFile).
void plot_png_save(const Plot& plot, const std::string& path, int width = 800, int height = 480);

} // namespace sparsa
