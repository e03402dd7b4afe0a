// One mask's figure and the overview of every (layer, head), drawn on a Canvas (see
// mask_figure.hpp for what a cell is and how it is coloured).
//
// Index
//   [SECTION] cells     a mask's placement in a square of pixels, and the state of each cell
//   [SECTION] text      titles that fit, the legend
//   [SECTION] figure    one (layer, head)
//   [SECTION] overview  every (layer, head)
#include "plot/mask_figure.hpp"

#include "plot/canvas.hpp"
#include "engine/error.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace sparsa {

namespace {

constexpr uint32_t kInk = 0x202020, kAxis = 0x404040, kCellFrame = 0xb8b8b8, kMuted = 0x505050;
constexpr int kMargin = 12;

// [SECTION] cells

// A mask of n tokens in at most `room` x `room` pixels at (x, y): one token per cell when every
// token gets a pixel, else one block per cell, or g x g blocks when the blocks outnumber the pixels.
MaskPlacement placement_make(const BlockMask& mask, int x, int y, int room) {
    MaskPlacement p;
    p.x = x;
    p.y = y;
    if (mask.n <= room) {
        p.cell_tokens = 1;
        p.cells = mask.n;
    } else {
        const int64_t blocks = mask.q_blocks(), group = (blocks + room - 1) / room;
        p.cell_tokens = group * mask.block;
        p.cells = (blocks + group - 1) / group;
    }
    p.cell_pixels = static_cast<int>(room / p.cells);
    p.side = static_cast<int>(p.cells) * p.cell_pixels;
    return p;
}

// The colours of the cells of cell row r. colors: [cells].
void cell_row_colors(const BlockMask& mask, const MaskPlacement& p, int64_t r, std::vector<uint32_t>& colors,
                     std::vector<int64_t>& kept, std::vector<int64_t>& fulls) {
    std::fill(colors.begin(), colors.end(), kMaskColorEmpty);
    const int64_t B = mask.block;
    if (p.token_level()) {
        const int64_t q = r, qb = q / B, i = q % B;
        for (int64_t e = mask.row_ptr[static_cast<size_t>(qb)]; e < mask.row_ptr[static_cast<size_t>(qb) + 1]; ++e) {
            const int64_t k0 = mask.col_idx[static_cast<size_t>(e)] * B, k1 = std::min(mask.n, k0 + B);
            const int32_t part = mask.partial_idx[static_cast<size_t>(e)];
            for (int64_t k = k0; k < k1; ++k) {
                if (part < 0) {
                    colors[static_cast<size_t>(k)] = kMaskColorFull;
                } else {
                    const int64_t bit = i * B + (k - k0);
                    colors[static_cast<size_t>(k)] = ((mask.partial_bits(part)[bit / 64] >> (bit % 64)) & 1U) ? kMaskColorPartial : kMaskColorPartialOff;
                }
            }
        }
        return;
    }
    const int64_t group = p.cell_tokens / B, blocks = mask.q_blocks();
    const int64_t qb0 = r * group, qb1 = std::min(blocks, qb0 + group);
    std::fill(kept.begin(), kept.end(), 0);
    std::fill(fulls.begin(), fulls.end(), 0);
    for (int64_t qb = qb0; qb < qb1; ++qb) {
        for (int64_t e = mask.row_ptr[static_cast<size_t>(qb)]; e < mask.row_ptr[static_cast<size_t>(qb) + 1]; ++e) {
            const size_t c = static_cast<size_t>(mask.col_idx[static_cast<size_t>(e)] / group);
            ++kept[c];
            if (mask.partial_idx[static_cast<size_t>(e)] < 0) ++fulls[c];
        }
    }
    for (int64_t c = 0; c < p.cells; ++c) {
        const int64_t kb0 = c * group, kb1 = std::min(blocks, kb0 + group);
        const size_t at = static_cast<size_t>(c);
        colors[at] = mask_cell_color(kept[at], fulls[at], (qb1 - qb0) * (kb1 - kb0));
    }
}

void mask_draw(Canvas& canvas, const BlockMask& mask, const MaskPlacement& p) {
    std::vector<uint32_t> colors(static_cast<size_t>(p.cells));
    std::vector<int64_t> kept(static_cast<size_t>(p.cells)), fulls(static_cast<size_t>(p.cells));
    const int cp = p.cell_pixels;
    for (int64_t r = 0; r < p.cells; ++r) {
        cell_row_colors(mask, p, r, colors, kept, fulls);
        const int y = p.y + static_cast<int>(r) * cp;
        for (int64_t c = 0; c < p.cells; ++c) {
            const int x = p.x + static_cast<int>(c) * cp;
            canvas.rect(x, y, x + cp - 1, y + cp - 1, colors[static_cast<size_t>(c)]);
        }
    }
    canvas.frame(p.x - 1, p.y - 1, p.x + p.side, p.y + p.side, kCellFrame);
}

// Pixel offset of token t along a placement's side.
int token_offset(const MaskPlacement& p, double t) {
    return static_cast<int>(t / static_cast<double>(p.cell_tokens) * p.cell_pixels + 0.5);
}

// A note under the legend when cells hold several blocks ("" when not).
std::string aggregate_note(const MaskPlacement& p, int32_t block) {
    if (p.token_level() || p.cell_tokens == block) return "";
    const std::string g = std::to_string(p.cell_tokens / block);
    return "a cell: " + g + " x " + g + " blocks, shaded by the share kept";
}

// [SECTION] text

struct LegendItem {
    uint32_t color;
    const char* label;
};
constexpr LegendItem kLegend[] = {{kMaskColorFull, "full block"}, {kMaskColorPartial, "partial block"}, {kMaskColorEmpty, "not kept"}};

// The legend as rows of items that fit in `width` pixels, centred; returns its box.
PixelBox legend_place(Canvas* canvas, int width, int y, int scale, bool token_level) {
    const int swatch = Canvas::text_height(scale), gap = 14 * scale;
    std::vector<std::string> labels;
    for (const auto& item : kLegend) labels.push_back(item.label);
    if (token_level) labels[1] = "partial block (kept / not)";
    auto item_width = [&](size_t i) { return swatch + 4 * scale + Canvas::text_width(labels[i], scale); };
    PixelBox box{width, y, 0, 0};
    size_t first = 0;
    while (first < labels.size()) {
        size_t last = first + 1;
        int row = item_width(first);
        while (last < labels.size() && row + gap + item_width(last) <= width - 2 * kMargin) row += gap + item_width(last++);
        int x = (width - row) / 2;
        box.x = std::min(box.x, x);
        box.w = std::max(box.w, row);
        for (size_t i = first; i < last; ++i) {
            if (canvas) {
                const int yy = y + box.h;
                if (token_level && i == 1) {  // half kept, half not
                    canvas->rect(x, yy, x + swatch / 2 - 1, yy + swatch - 1, kMaskColorPartial);
                    canvas->rect(x + swatch / 2, yy, x + swatch - 1, yy + swatch - 1, kMaskColorPartialOff);
                } else {
                    canvas->rect(x, yy, x + swatch - 1, yy + swatch - 1, kLegend[i].color);
                }
                canvas->frame(x, yy, x + swatch - 1, yy + swatch - 1, kCellFrame);
                canvas->text(x + swatch + 4 * scale, yy, labels[i], kInk, scale);
            }
            x += item_width(i) + gap;
        }
        box.h += swatch + 4 * scale;
        first = last;
    }
    box.w = std::max(box.w, 0);
    return box;
}

void check_layer_head(const MaskSet& set, int64_t layer, int64_t head, const char* what) {
    if (set.masks.empty() || static_cast<int64_t>(set.masks.size()) != set.layers * set.heads) {
        throw Error(std::string(what) + ": the mask set holds no masks (compile a script first)");
    }
    if (layer < 0 || layer >= set.layers) {
        throw Error(std::string(what) + ": layer " + std::to_string(layer) + " is outside 0 to " + std::to_string(set.layers - 1) +
                    " (the set has " + std::to_string(set.layers) + " layer" + (set.layers == 1 ? ")" : "s)"));
    }
    if (head < 0 || head >= set.heads) {
        throw Error(std::string(what) + ": head " + std::to_string(head) + " is outside 0 to " + std::to_string(set.heads - 1) +
                    " (the set has " + std::to_string(set.heads) + " head" + (set.heads == 1 ? ")" : "s)"));
    }
}

std::string name_prefix(const MaskSet& set) { return set.script_name.empty() ? "" : set.script_name + ": "; }

// [SECTION] figure

// The layout, drawn on `canvas` when it is given (one function, so that the boxes are where the
// drawing is).
MaskFigureLayout figure_place(Canvas* canvas, const MaskSet& set, int64_t layer, int64_t head, int width, int height) {
    check_layer_head(set, layer, head, "mask figure");
    if (width < 240 || height < 240 || width > 8192 || height > 8192) {
        throw Error("mask figure: " + std::to_string(width) + " x " + std::to_string(height) +
                    " pixels is not a figure size (use 240 to 8192 each way)");
    }
    const BlockMask& mask = set.at(layer, head);
    const BlockMaskStats stats = block_mask_stats(mask);
    const int s = std::min(width, height) >= 400 ? 2 : 1;
    MaskFigureLayout out;
    out.width = width;
    out.height = height;

    std::vector<std::string> title = {
        name_prefix(set) + "layer " + std::to_string(layer) + ", head " + std::to_string(head),
        "n = " + std::to_string(mask.n) + ", block " + std::to_string(mask.block) + ", density " + percent_text(stats.density)};
    const int text_h = Canvas::text_height(s);
    const int tick_w = Canvas::text_width(std::to_string(mask.n), s);
    // Around the square: [left] "Query", tick labels, tick marks; [bottom] tick marks, tick
    // labels, "Key", the legend. The legend's height depends on its rows: measure it first.
    const int legend_h = std::max(legend_place(nullptr, width, 0, s, false).h, legend_place(nullptr, width, 0, s, true).h);
    const int left = kMargin + text_h + 8 + tick_w + 4 + 5, right = kMargin + tick_w / 2 + 2;
    const int below = 5 + 4 + text_h + 6 * s + text_h + 8 * s + legend_h + kMargin;
    // A third title line says what a cell is when it holds several blocks; it takes room, so
    // the placement is made again with it.
    MaskPlacement p;
    int top = 0;
    for (int pass = 0; pass < 2; ++pass) {
        top = kMargin + title_draw(nullptr, title, width, kMargin, 0, s, kInk).h + 6 * s;
        const int room = std::min(width - left - right, height - top - below);
        if (room < 16) throw Error("mask figure: " + std::to_string(width) + " x " + std::to_string(height) + " pixels leaves no room for the mask (use a larger size)");
        p = placement_make(mask, 0, 0, room);
        const std::string note = aggregate_note(p, mask.block);
        if (note.empty() || title.size() == 3) break;
        title.push_back(note);
    }
    // The square and its labels, centred in what the title leaves.
    const int dx = (width - left - right - p.side) / 2, dy = std::max(0, (height - top - below - p.side) / 2);
    p.x = left + dx;
    p.y = top + dy;
    out.mask = p;
    const bool token_level = p.token_level();

    out.title = title_draw(canvas, title, width, kMargin, kMargin, s, kInk);
    if (canvas) mask_draw(*canvas, mask, p);

    // Ticks: at most one per (label + a gap) of the side, and at least two (0 and one more).
    int most = std::max(2, p.side / (tick_w + 12 * s));
    std::vector<double> ticks = axis_ticks(0, static_cast<double>(mask.n), most, true);
    while (ticks.size() < 2 && most < 8) ticks = axis_ticks(0, static_cast<double>(mask.n), ++most, true);
    const int x_tick_y = p.y + p.side + 1 + 5 + 4;
    out.x_ticks = {p.x - tick_w / 2, x_tick_y, p.side + tick_w, text_h};
    out.y_ticks = {p.x - 10 - tick_w, p.y - text_h / 2, tick_w, p.side + text_h};
    for (double t : ticks) {
        const int at = token_offset(p, t);
        if (at > p.side) continue;
        const std::string label = axis_tick_text(t, false, 1);
        if (!canvas) continue;
        canvas->line(p.x + at, p.y + p.side + 1, p.x + at, p.y + p.side + 5, kAxis);
        canvas->text(p.x + at - Canvas::text_width(label, s) / 2, x_tick_y, label, kInk, s);
        canvas->line(p.x - 2, p.y + at, p.x - 6, p.y + at, kAxis);
        canvas->text(p.x - 10 - Canvas::text_width(label, s), p.y + at - text_h / 2, label, kInk, s);
    }
    const std::string key = "Key", query = "Query";
    out.x_label = {p.x + (p.side - Canvas::text_width(key, s)) / 2, x_tick_y + text_h + 6 * s, Canvas::text_width(key, s), text_h};
    out.y_label = {out.y_ticks.x - 8 - text_h, p.y + (p.side - Canvas::text_width(query, s)) / 2, text_h, Canvas::text_width(query, s)};
    if (canvas) {
        canvas->text(out.x_label.x, out.x_label.y, key, kInk, s);
        canvas->text_up(out.y_label.x, out.y_label.y, query, kInk, s);
    }
    out.legend = legend_place(canvas, width, out.x_label.y + text_h + 8 * s, s, token_level);
    return out;
}

// [SECTION] overview

MaskOverviewLayout overview_place(Canvas* canvas, const MaskSet& set, int width) {
    check_layer_head(set, 0, 0, "mask overview");
    if (width < 240 || width > 8192) {
        throw Error("mask overview: a width of " + std::to_string(width) + " pixels is not an overview size (use 240 to 8192)");
    }
    MaskOverviewLayout out;
    out.width = width;
    const int s = width >= 600 ? 2 : 1;
    const int64_t L = set.layers, H = set.heads;
    const BlockMask& first = set.at(0, 0);

    double total_density = 0;
    std::vector<double> density(static_cast<size_t>(L * H));
    {
        const std::vector<int32_t> index = set.unique_index();
        std::vector<double> unique;
        for (const auto& m : set.unique_masks()) unique.push_back(block_mask_stats(*m).density);
        for (size_t i = 0; i < density.size(); ++i) total_density += density[i] = unique[static_cast<size_t>(index[i])];
    }
    std::vector<std::string> title = {
        name_prefix(set) + std::to_string(L) + " layer" + (L == 1 ? "" : "s") + " x " + std::to_string(H) + " head" + (H == 1 ? "" : "s"),
        "n = " + std::to_string(set.n) + ", block " + std::to_string(set.block) + ", mean density " +
            percent_text(total_density / static_cast<double>(L * H))};

    // Columns: a pitch P per head (a cell of side T <= P - gap, then the gap).
    const std::string last_layer = "L" + std::to_string(L - 1), last_head = "H" + std::to_string(H - 1);
    int pitch = 0, label_s = 1, label_w = 0;
    for (int attempt_s : {2, 1}) {
        label_s = attempt_s;
        label_w = Canvas::text_width(last_layer, label_s) + 8;
        pitch = static_cast<int>((width - 2 * kMargin - label_w) / H);
        if (label_s == 1 || pitch >= 56) break;
    }
    const int gap = std::clamp(pitch / 12, 3, 12), side_max = std::min(pitch - gap, 720);  // 1 x 1 stays a picture, not a wall
    pitch = std::min(pitch, side_max + gap);
    if (side_max < 4) {
        const int64_t need = 2 * kMargin + label_w + 7 * H;
        throw Error("mask overview: " + std::to_string(H) + " heads do not fit in " + std::to_string(width) +
                    " pixels (use a width of at least " + std::to_string(need) + ")");
    }
    // Densities at scale 2 when every one fits whole ("12.34%"), else at 1, shortened if needed.
    int den_s = 2;
    for (double d : density) {
        if (Canvas::text_width(percent_text(d), 2) > side_max * 4 / 5) den_s = 1;
    }
    bool any_density = false;
    std::vector<std::string> density_text(density.size());
    // A content-based head (lsh, anchors, favor) is labelled by its family instead: its drawn mask
    // is only the fixed part, and its pairs come per input.
    int64_t content_heads = 0;
    for (size_t i = 0; i < density.size(); ++i) {
        const ContentSpec* spec = i < set.content.size() ? set.content[i].get() : nullptr;
        if (spec != nullptr) {
            ++content_heads;
            const char* family = spec->kind == ContentKind::lsh ? "lsh" : spec->kind == ContentKind::anchors ? "anchors" : "favor";
            density_text[i] = Canvas::text_width(family, den_s) <= pitch - 2 ? family : "";
        } else {
            density_text[i] = percent_fit(density[i], pitch - 2, den_s);
        }
        any_density = any_density || !density_text[i].empty();
    }
    if (content_heads > 0) {
        title.push_back(std::to_string(content_heads) + " content-based head" + (content_heads == 1 ? "" : "s") +
                        " (fixed part drawn)");
    }
    const int den_h = any_density ? Canvas::text_height(den_s) + 4 + 2 : 0;

    const MaskPlacement shape = placement_make(first, 0, 0, side_max);  // every mask of a set has the same n and block
    if (const std::string note = aggregate_note(shape, set.block); !note.empty()) title.push_back(note);
    int y = kMargin;
    out.title = title_draw(canvas, title, width, kMargin, y, s, kInk);
    y += out.title.h + 2 * s;
    out.legend = legend_place(canvas, width, y, s, first.n <= side_max);
    y += out.legend.h + 8 * s;
    const int head_label_h = Canvas::text_height(label_s) + 6;
    const int grid_y = y + head_label_h;
    const int grid_x = kMargin + label_w + static_cast<int>((width - 2 * kMargin - label_w - pitch * H) / 2);
    const int row_pitch = shape.side + gap + den_h;
    const int64_t height = grid_y + L * row_pitch + kMargin;
    if (height > 16384) {
        throw Error("mask overview: " + std::to_string(L) + " layers would make an image " + std::to_string(height) +
                    " pixels high (at most 16384; use a smaller width)");
    }
    out.height = static_cast<int>(height);

    // Labels every k-th row or column when they do not fit at every one.
    const int head_w = Canvas::text_width(last_head, label_s) + 4, label_h = Canvas::text_height(label_s) + 2;
    const int64_t head_every = (head_w + pitch - 1) / pitch, layer_every = (label_h + row_pitch - 1) / row_pitch;
    out.head_labels.resize(static_cast<size_t>(H));
    out.layer_labels.resize(static_cast<size_t>(L));
    for (int64_t h = 0; h < H; h += head_every) {
        const std::string t = "H" + std::to_string(h);
        const int tw = Canvas::text_width(t, label_s);
        PixelBox& b = out.head_labels[static_cast<size_t>(h)];
        b = {grid_x + static_cast<int>(h) * pitch + (shape.side - tw) / 2, grid_y - head_label_h, tw, Canvas::text_height(label_s)};
        if (canvas) canvas->text(b.x, b.y, t, kMuted, label_s);
    }
    for (int64_t l = 0; l < L; l += layer_every) {
        const std::string t = "L" + std::to_string(l);
        const int tw = Canvas::text_width(t, label_s);
        PixelBox& b = out.layer_labels[static_cast<size_t>(l)];
        b = {grid_x - 8 - tw, grid_y + static_cast<int>(l) * row_pitch + (shape.side - Canvas::text_height(label_s)) / 2, tw, Canvas::text_height(label_s)};
        if (canvas) canvas->text(b.x, b.y, t, kMuted, label_s);
    }
    out.cells.resize(static_cast<size_t>(L * H));
    out.densities.resize(static_cast<size_t>(L * H));
    for (int64_t l = 0; l < L; ++l) {
        for (int64_t h = 0; h < H; ++h) {
            const size_t i = static_cast<size_t>(l * H + h);
            MaskPlacement p = shape;
            p.x = grid_x + static_cast<int>(h) * pitch;
            p.y = grid_y + static_cast<int>(l) * row_pitch;
            out.cells[i] = p;
            if (canvas) mask_draw(*canvas, set.at(l, h), p);
            if (density_text[i].empty()) continue;
            const int tw = Canvas::text_width(density_text[i], den_s);
            out.densities[i] = {p.x + (p.side - tw) / 2, p.y + p.side + 4, tw, Canvas::text_height(den_s)};
            if (canvas) canvas->text(out.densities[i].x, out.densities[i].y, density_text[i], kInk, den_s);
        }
    }
    return out;
}

} // namespace

uint32_t mask_cell_color(int64_t kept, int64_t full, int64_t blocks) {
    if (kept <= 0 || blocks <= 0) return kMaskColorEmpty;
    const uint32_t target = 2 * full >= kept ? kMaskColorFull : kMaskColorPartial;
    if (kept >= blocks) return target;
    const double a = std::clamp(1 + std::log10(static_cast<double>(kept) / static_cast<double>(blocks)) / 3, 0.15, 1.0);
    uint32_t out = 0;
    for (int shift : {16, 8, 0}) {
        const double e = (kMaskColorEmpty >> shift) & 0xff, t = (target >> shift) & 0xff;
        out |= static_cast<uint32_t>(std::lround(e + (t - e) * a)) << shift;
    }
    return out;
}

MaskFigureLayout mask_figure_layout(const MaskSet& set, int64_t layer, int64_t head, int width, int height) {
    return figure_place(nullptr, set, layer, head, width, height);
}

Image mask_figure_render(const MaskSet& set, int64_t layer, int64_t head, int width, int height) {
    figure_place(nullptr, set, layer, head, width, height);  // throws before a canvas is allocated
    Canvas canvas(width, height);
    figure_place(&canvas, set, layer, head, width, height);
    return canvas.take();
}

std::vector<uint8_t> mask_figure_png(const MaskSet& set, int64_t layer, int64_t head, int width, int height) {
    return image_png_encode(mask_figure_render(set, layer, head, width, height));
}

MaskOverviewLayout mask_overview_layout(const MaskSet& set, int width) {
    return overview_place(nullptr, set, width);
}

Image mask_overview_render(const MaskSet& set, int width) {
    const MaskOverviewLayout layout = overview_place(nullptr, set, width);
    Canvas canvas(layout.width, layout.height);
    overview_place(&canvas, set, width);
    return canvas.take();
}

std::vector<uint8_t> mask_overview_png(const MaskSet& set, int width) {
    return image_png_encode(mask_overview_render(set, width));
}

} // namespace sparsa
