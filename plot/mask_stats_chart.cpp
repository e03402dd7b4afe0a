// The density and block-FLOPs heat maps of a MaskSet, drawn on a Canvas (see mask_stats_chart.hpp).
#include "plot/mask_stats_chart.hpp"

#include "plot/canvas.hpp"
#include "engine/error.hpp"

#include <algorithm>
#include <cmath>

namespace sparsa {

namespace {

constexpr uint32_t kInk = 0x202020, kMuted = 0x505050, kCellFrame = 0xb8b8b8, kHatch = 0x9a9a9a;
constexpr int kMargin = 12;

// Matplotlib's "Blues" at five stops, from 0 to 1.
constexpr uint32_t kRamp[] = {0xf7fbff, 0xc6dbef, 0x6baed6, 0x2171b5, 0x08306b};

// Per (layer, head): kept pairs / n^2 and pairs of kept blocks / n^2, each distinct mask counted once.
void stats_values(const MaskSet& set, std::vector<double>& density, std::vector<double>& flops) {
    const double n2 = static_cast<double>(set.n) * static_cast<double>(set.n);
    std::vector<double> unique_density, unique_flops;
    for (const auto& m : set.unique_masks()) {
        const BlockMaskStats s = block_mask_stats(*m);
        int64_t block_pairs = 0;
        for (int64_t qb = 0; qb < m->q_blocks(); ++qb) {
            for (int64_t e = m->row_ptr[static_cast<size_t>(qb)]; e < m->row_ptr[static_cast<size_t>(qb) + 1]; ++e) {
                block_pairs += block_valid_pairs(*m, qb, m->col_idx[static_cast<size_t>(e)]);
            }
        }
        unique_density.push_back(static_cast<double>(s.kept_pairs) / n2);
        unique_flops.push_back(static_cast<double>(block_pairs) / n2);
    }
    const std::vector<int32_t> index = set.unique_index();
    for (int32_t u : index) {
        density.push_back(unique_density[static_cast<size_t>(u)]);
        flops.push_back(unique_flops[static_cast<size_t>(u)]);
    }
}

MaskStatsChartLayout chart_place(Canvas* canvas, const MaskSet& set, int width) {
    if (set.masks.empty() || static_cast<int64_t>(set.masks.size()) != set.layers * set.heads) {
        throw Error("mask stats chart: the mask set holds no masks (compile a script first)");
    }
    if (width < 300 || width > 8192) {
        throw Error("mask stats chart: a width of " + std::to_string(width) + " pixels is not a chart size (use 300 to 8192)");
    }
    MaskStatsChartLayout out;
    out.width = width;
    const int64_t L = set.layers, H = set.heads;
    const int s = width >= 600 ? 2 : 1;
    out.panels[0].name = "density";
    out.panels[1].name = "block FLOPs";
    stats_values(set, out.panels[0].values, out.panels[1].values);
    out.scale_max = 0;
    for (const auto& panel : out.panels) {
        for (double v : panel.values) out.scale_max = std::max(out.scale_max, v);
    }

    // Content-based heads: their figures are their fixed part's, so they are marked apart.
    out.content_family.assign(static_cast<size_t>(L * H), "");
    int64_t content_heads = 0;
    for (size_t i = 0; i < set.content.size() && i < out.content_family.size(); ++i) {
        if (const ContentSpec* spec = set.content[i].get()) {
            out.content_family[i] = spec->kind == ContentKind::lsh ? "lsh" : spec->kind == ContentKind::anchors ? "anchors" : "favor";
            ++content_heads;
        }
    }

    int y = kMargin;
    const std::string name = set.script_name.empty() ? "" : set.script_name + ": ";
    std::vector<std::string> title = {name + "density and block FLOPs per layer and head",
                                      "n = " + std::to_string(set.n) + ", block " + std::to_string(set.block) + ", " + std::to_string(L) +
                                          " layer" + (L == 1 ? "" : "s") + " x " + std::to_string(H) + " head" + (H == 1 ? "" : "s") +
                                          ", both as a share of the n x n pairs"};
    if (content_heads > 0) {
        title.push_back(std::to_string(content_heads) + " content-based head" + (content_heads == 1 ? "" : "s") +
                        " (hatched): pairs decided per input; colour = fixed part");
    }
    out.title = title_draw(canvas, title, width, kMargin, y, s, kInk);
    y += out.title.h + 6 * s;

    // Two panels side by side, each: its name, head labels, then layer labels left of a grid
    // of square cells (at most 120 pixels each way).
    const int between = 24 * s, panel_w = (width - 2 * kMargin - between) / 2;
    const int label_s = 1;
    const int label_w = Canvas::text_width("L" + std::to_string(L - 1), label_s) + 8;
    const int pitch = std::min(120, static_cast<int>((panel_w - label_w) / H));
    if (pitch < 6) {
        const int64_t need = 2 * kMargin + between + 2 * (label_w + 6 * H);
        throw Error("mask stats chart: " + std::to_string(H) + " heads do not fit in " + std::to_string(width) +
                    " pixels (use a width of at least " + std::to_string(need) + ")");
    }
    const int cell = pitch - 2;
    const int value_s = cell >= 84 ? 2 : 1;
    const int panel_title_h = Canvas::text_height(s) + 6 * s, head_label_h = Canvas::text_height(label_s) + 6;
    const int grid_y = y + panel_title_h + head_label_h;
    const int64_t grid_h = L * pitch;
    const int scale_y = grid_y + static_cast<int>(std::min<int64_t>(grid_h, 1 << 20)) + 12 * s;
    const int scale_h = 12 * s;
    const int64_t height = int64_t{scale_y} + scale_h + 6 + Canvas::text_height(s) + kMargin;
    if (height > 16384) {
        throw Error("mask stats chart: " + std::to_string(L) + " layers would make an image " + std::to_string(height) +
                    " pixels high (at most 16384)");
    }
    out.height = static_cast<int>(height);
    const int64_t head_every = (Canvas::text_width("H" + std::to_string(H - 1), label_s) + 4 + pitch - 1) / pitch;
    const int64_t layer_every = (Canvas::text_height(label_s) + 2 + pitch - 1) / pitch;

    for (int panel_i = 0; panel_i < 2; ++panel_i) {
        MaskStatsPanel& panel = out.panels[panel_i];
        const int px = kMargin + panel_i * (panel_w + between);
        const int grid_x = px + label_w + (panel_w - label_w - pitch * static_cast<int>(H)) / 2;
        const std::string title = text_fit(panel.name, panel_w, s);
        panel.title = {grid_x + (pitch * static_cast<int>(H) - Canvas::text_width(title, s)) / 2, y, Canvas::text_width(title, s), Canvas::text_height(s)};
        panel.title.x = std::max(panel.title.x, px);
        if (canvas) canvas->text(panel.title.x, panel.title.y, title, kInk, s);
        panel.head_labels.resize(static_cast<size_t>(H));
        panel.layer_labels.resize(static_cast<size_t>(L));
        for (int64_t h = 0; h < H; h += head_every) {
            const std::string t = "H" + std::to_string(h);
            const int tw = Canvas::text_width(t, label_s);
            panel.head_labels[static_cast<size_t>(h)] = {grid_x + static_cast<int>(h) * pitch + (cell - tw) / 2, grid_y - head_label_h, tw, Canvas::text_height(label_s)};
            if (canvas) canvas->text(panel.head_labels[static_cast<size_t>(h)].x, grid_y - head_label_h, t, kMuted, label_s);
        }
        for (int64_t l = 0; l < L; l += layer_every) {
            const std::string t = "L" + std::to_string(l);
            const int tw = Canvas::text_width(t, label_s);
            PixelBox& b = panel.layer_labels[static_cast<size_t>(l)];
            b = {grid_x - 6 - tw, grid_y + static_cast<int>(l) * pitch + (cell - Canvas::text_height(label_s)) / 2, tw, Canvas::text_height(label_s)};
            if (canvas) canvas->text(b.x, b.y, t, kMuted, label_s);
        }
        panel.cells.resize(static_cast<size_t>(L * H));
        panel.value_text.resize(static_cast<size_t>(L * H));
        for (int64_t l = 0; l < L; ++l) {
            for (int64_t h = 0; h < H; ++h) {
                const size_t i = static_cast<size_t>(l * H + h);
                const PixelBox b = {grid_x + static_cast<int>(h) * pitch, grid_y + static_cast<int>(l) * pitch, cell, cell};
                panel.cells[i] = b;
                const double v = panel.values[i];
                const uint32_t color = mask_stats_color(v, out.scale_max);
                // A content head's text: its family, "+lsh" when a fixed part keeps pairs too (as in stats' table).
                const std::string& family = out.content_family[i];
                const std::string name = family.empty() || out.panels[0].values[i] == 0 ? family : "+" + family;
                const std::string text = family.empty()                                  ? percent_fit(v, cell - 4, value_s)
                                         : Canvas::text_width(name, value_s) <= cell - 4 ? name
                                                                                          : "";
                if (!text.empty() && Canvas::text_height(value_s) <= cell - 2) {
                    const int tw = Canvas::text_width(text, value_s);
                    panel.value_text[i] = {b.x + (cell - tw) / 2 + 1, b.y + (cell - Canvas::text_height(value_s)) / 2, tw, Canvas::text_height(value_s)};
                }
                if (!canvas) continue;
                canvas->rect(b.x, b.y, b.x + cell - 1, b.y + cell - 1, color);
                if (!family.empty()) {
                    // Hatching: diagonals every 6 pixels (x + y = const), clipped to the cell;
                    // the family's name then sits on a patch of the cell's own colour.
                    for (int x = 0; x < cell; ++x) {
                        for (int yy = 0; yy < cell; ++yy) {
                            if ((x + yy) % 6 == 0) canvas->pixel(b.x + x, b.y + yy, kHatch);
                        }
                    }
                    if (panel.value_text[i].w > 0) {
                        const PixelBox& t = panel.value_text[i];
                        canvas->rect(std::max(b.x, t.x - 2), std::max(b.y, t.y - 2), std::min(b.x + cell - 1, t.x + t.w + 1),
                                     std::min(b.y + cell - 1, t.y + t.h + 1), color);
                    }
                }
                canvas->frame(b.x, b.y, b.x + cell - 1, b.y + cell - 1, kCellFrame);
                if (panel.value_text[i].w > 0) {
                    const bool dark = out.scale_max > 0 && v / out.scale_max > 0.55;
                    canvas->text(panel.value_text[i].x, panel.value_text[i].y, text, dark ? 0xffffff : kInk, value_s);
                }
            }
        }
    }

    // The colour scale: a bar from 0 to scale_max, labelled at both ends.
    const std::string low = "0%", high = percent_text(out.scale_max), what = "colour: share of the n x n pairs";
    const int bar_w = std::min(width - 2 * kMargin - Canvas::text_width(low + high, s) - 24, 360);
    out.scale = {(width - bar_w) / 2, scale_y, bar_w, scale_h};
    const int text_y = scale_y + scale_h + 6;
    out.scale_labels = {out.scale.x - Canvas::text_width(low, s) - 8, scale_y, bar_w + Canvas::text_width(low + high, s) + 16, scale_h + 6 + Canvas::text_height(s)};
    if (canvas) {
        for (int x = 0; x < bar_w; ++x) {
            canvas->rect(out.scale.x + x, scale_y, out.scale.x + x, scale_y + scale_h - 1,
                         mask_stats_color(out.scale_max * x / std::max(1, bar_w - 1), out.scale_max));
        }
        canvas->frame(out.scale.x - 1, scale_y - 1, out.scale.x + bar_w, scale_y + scale_h, kCellFrame);
        canvas->text(out.scale.x - Canvas::text_width(low, s) - 8, scale_y + (scale_h - Canvas::text_height(s)) / 2, low, kInk, s);
        canvas->text(out.scale.x + bar_w + 8, scale_y + (scale_h - Canvas::text_height(s)) / 2, high, kInk, s);
        canvas->text((width - Canvas::text_width(text_fit(what, width - 2 * kMargin, s), s)) / 2, text_y, text_fit(what, width - 2 * kMargin, s), kMuted, s);
    }
    return out;
}

} // namespace

uint32_t mask_stats_color(double value, double max) {
    const double t = max > 0 ? std::clamp(value / max, 0.0, 1.0) : 0.0;
    const double at = t * (std::size(kRamp) - 1);
    const size_t i = std::min(static_cast<size_t>(at), std::size(kRamp) - 2);
    const double f = at - static_cast<double>(i);
    uint32_t out = 0;
    for (int shift : {16, 8, 0}) {
        const double a = (kRamp[i] >> shift) & 0xff, b = (kRamp[i + 1] >> shift) & 0xff;
        out |= static_cast<uint32_t>(std::lround(a + (b - a) * f)) << shift;
    }
    return out;
}

MaskStatsChartLayout mask_stats_chart_layout(const MaskSet& set, int width) {
    return chart_place(nullptr, set, width);
}

Image mask_stats_chart_render(const MaskSet& set, int width) {
    const MaskStatsChartLayout layout = chart_place(nullptr, set, width);
    Canvas canvas(layout.width, layout.height);
    chart_place(&canvas, set, width);
    return canvas.take();
}

std::vector<uint8_t> mask_stats_chart_png(const MaskSet& set, int width) {
    return image_png_encode(mask_stats_chart_render(set, width));
}

} // namespace sparsa
