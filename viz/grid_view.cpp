// Screen <-> pair mapping of the mask view (see grid_view.hpp).
#include "viz/grid_view.hpp"

#include <algorithm>
#include <cmath>

namespace sparsa::viz {

GridView grid_view_fit(int64_t n, double x, double y, double width, double height) {
    GridView view;
    view.origin_x = x;
    view.origin_y = y;
    view.scale = std::max(1e-9, std::min(width, height)) / static_cast<double>(std::max<int64_t>(n, 1));
    return view;
}

std::optional<std::pair<int64_t, int64_t>> grid_pair_at(const GridView& view, int64_t n, double px, double py) {
    double k = std::floor((px - view.origin_x) / view.scale);
    double q = std::floor((py - view.origin_y) / view.scale);
    if (q < 0 || k < 0 || q >= static_cast<double>(n) || k >= static_cast<double>(n)) return std::nullopt;
    return std::make_pair(static_cast<int64_t>(q), static_cast<int64_t>(k));
}

std::pair<double, double> grid_pair_corner(const GridView& view, int64_t q, int64_t k) {
    return {view.origin_x + static_cast<double>(k) * view.scale, view.origin_y + static_cast<double>(q) * view.scale};
}

GridView grid_view_zoom(const GridView& view, double factor, double ax, double ay, double min_scale) {
    GridView out = view;
    out.scale = std::clamp(view.scale * factor, std::min(min_scale, 64.0), 64.0);
    double f = out.scale / view.scale;
    out.origin_x = ax - (ax - view.origin_x) * f;
    out.origin_y = ay - (ay - view.origin_y) * f;
    return out;
}

std::vector<int64_t> axis_ticks(double t0, double t1, int64_t n, double pixels_per_token, double min_gap) {
    std::vector<int64_t> out;
    const double lo = std::max(t0, 0.0), hi = std::min(t1, static_cast<double>(n));
    if (!(hi >= lo) || pixels_per_token <= 0) return out;
    int64_t step = 1;
    for (int64_t decade = 1; static_cast<double>(step) * pixels_per_token < min_gap; decade *= 10) {
        for (int64_t m : {1, 2, 5}) {
            step = m * decade;
            if (static_cast<double>(step) * pixels_per_token >= min_gap) break;
        }
        if (decade > (int64_t{1} << 40)) break;
    }
    for (int64_t t = static_cast<int64_t>(std::ceil(lo / static_cast<double>(step))) * step; static_cast<double>(t) <= hi; t += step) {
        out.push_back(t);
    }
    return out;
}

} // namespace sparsa::viz
