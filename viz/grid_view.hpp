// Where the mask view draws the n x n grid on screen (zoom and pan), and the pair under a pixel.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace sparsa::viz {

// Token (q, k) covers screen pixels x in [origin_x + k*scale, origin_x + (k+1)*scale),
// y in [origin_y + q*scale, ...): queries down, keys across.
struct GridView {
    double origin_x = 0, origin_y = 0;
    double scale = 1;  // screen pixels per token
};

// The view that shows all n tokens in the square of side min(width, height) at (x, y).
GridView grid_view_fit(int64_t n, double x, double y, double width, double height);

// The pair (q, k) under screen pixel (px, py), or none outside the grid.
std::optional<std::pair<int64_t, int64_t>> grid_pair_at(const GridView& view, int64_t n, double px, double py);

// The screen position of the top-left corner of token pair (q, k) (also valid at q, k = n).
std::pair<double, double> grid_pair_corner(const GridView& view, int64_t q, int64_t k);

// Zooms by `factor` keeping the point under (ax, ay) in place; scale stays in
// [min_scale, 64] pixels per token.
GridView grid_view_zoom(const GridView& view, double factor, double ax, double ay, double min_scale);

// Tick positions (tokens) for an axis showing tokens [t0, t1) at `pixels_per_token`: multiples of
// the smallest step in 1, 2, 5 x 10^k that puts ticks at least `min_gap` pixels apart, within
// [max(t0, 0), min(t1, n)] (n itself included when in range). Empty when the range is empty.
std::vector<int64_t> axis_ticks(double t0, double t1, int64_t n, double pixels_per_token, double min_gap);

} // namespace sparsa::viz
