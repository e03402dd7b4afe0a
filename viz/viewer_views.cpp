// sparsa-view's views: the mask of a (layer, head) with its hover explanation, a token's
// receptive field as a light cone, the hops matrix, and two scripts or heads side by side.
#include "viz/viewer_app.hpp"

#include "dsl/pattern_parts.hpp"
#include "analysis/reach_graph.hpp"
#include "analysis/receptive_field.hpp"

#include <imgui.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace sparsa::viz {

// [SECTION] views

int64_t model_layer(const App& app, const ViewModel& m) { return std::clamp<int64_t>(app.layer, 0, m.masks.layers - 1); }
int64_t model_head(const App& app, const ViewModel& m) { return std::clamp<int64_t>(app.head, 0, m.masks.heads - 1); }

const dsl::PatternParts* parts_for(App& app, const ViewModel& m, int64_t layer, int64_t head) {
    if (app.parts_model != m.serial) {
        app.parts.clear();
        app.parts_model = m.serial;
    }
    auto key = std::make_pair(layer, head);
    auto it = app.parts.find(key);
    if (it == app.parts.end()) {
        try {
            it = app.parts.emplace(key, dsl::script_pattern_parts(*m.script, m.n, m.masks.block, layer, head)).first;
        } catch (const std::exception&) {
            return nullptr;  // the hover then says only what the mask keeps
        }
    }
    return &it->second;
}

// The tooltip of the mask view: the pair, its block, and which parts of the expression allow it.
void mask_tooltip(App& app, const ViewModel& m, int64_t layer, int64_t head, int64_t q, int64_t k) {
    const BlockMask& mask = m.masks.at(layer, head);
    const int64_t B = mask.block, qb = q / B, kb = k / B;
    const int32_t* begin = mask.col_idx.data() + mask.row_ptr[qb];
    const int32_t* end = mask.col_idx.data() + mask.row_ptr[qb + 1];
    const int32_t* it = std::lower_bound(begin, end, static_cast<int32_t>(kb));
    bool kept = it != end && *it == kb;
    bool partial = kept && mask.partial_idx[static_cast<size_t>(it - mask.col_idx.data())] >= 0;
    ImGui::BeginTooltip();
    ImGui::PushTextWrapPos(ImGui::GetFontSize() * 36);
    ImGui::Text("query %lld, key %lld: %s", static_cast<long long>(q), static_cast<long long>(k),
                mask.allowed(q, k) ? "allowed" : "not allowed");
    ImGui::Text("block (%lld, %lld): %s", static_cast<long long>(qb), static_cast<long long>(kb),
                !kept ? "not kept" : partial ? "partial" : "full");
    if (const dsl::PatternParts* parts = parts_for(app, m, layer, head)) {
        std::vector<size_t> allowing = dsl::pattern_parts_allowing(*parts, m.n, mask.block, q, k);
        if (!allowing.empty()) {
            std::string by;
            for (size_t i : allowing) by += (by.empty() ? "" : " and ") + parts->parts[i].text;
            ImGui::TextWrapped("allowed by %s (line %lld)", by.c_str(), static_cast<long long>(parts->line));
        } else if (parts->causal && k > q) {
            ImGui::TextUnformatted("cut by `causal` (key after query)");
        } else {
            ImGui::TextWrapped("no part of line %lld allows it", static_cast<long long>(parts->line));
        }
    }
    if (partial) {
        if (app.block_tex_model != m.serial || app.block_tex_qb != qb || app.block_tex_kb != kb || app.block_tex_layer != layer ||
            app.block_tex_head != head) {
            app.block_tex.upload(block_pairs_image(mask, qb, kb));
            app.block_tex_model = m.serial;
            app.block_tex_qb = qb;
            app.block_tex_kb = kb;
            app.block_tex_layer = layer;
            app.block_tex_head = head;
        }
        float cell = std::max(1.0f, 192.0f / static_cast<float>(B));
        ImVec2 p = ImGui::GetCursorScreenPos();
        ImGui::Image(app.block_tex.id(), ImVec2(cell * static_cast<float>(B), cell * static_cast<float>(B)));
        ImVec2 c(p.x + cell * static_cast<float>(k % B), p.y + cell * static_cast<float>(q % B));
        ImGui::GetWindowDrawList()->AddRect(ImVec2(c.x - 1, c.y - 1), ImVec2(c.x + cell + 1, c.y + cell + 1), IM_COL32(220, 0, 0, 255));
        ImGui::TextDisabled("the block's exact pairs (hovered pair in red)");
    }
    ImGui::PopTextWrapPos();
    ImGui::EndTooltip();
}

// The margins the Query and Key axes take around a grid of n tokens a side: the left one holds
// the word "Query" (one letter a line) and the query numbers, the top one "Key" and the key numbers.
ImVec2 grid_axes_margin(int64_t n) {
    const float line_h = ImGui::GetTextLineHeight();
    const float number_w = ImGui::CalcTextSize(std::to_string(n).c_str()).x;
    return ImVec2(ImGui::CalcTextSize("Q").x + 6 + number_w + 8, 2 * line_h + 8);
}

// Query (down) and Key (across) axes of the grid that `view` maps into the canvas [c0, c1), in
// the margins left of and above it (grid_axes_margin): tick numbers follow zoom and pan.
void draw_grid_axes(App& app, const GridView& view, int64_t n, ImVec2 c0, ImVec2 c1) {
    ImDrawList* dl = ImGui::GetWindowDrawList();
    const ImVec2 margin = grid_axes_margin(n);
    const float line_h = ImGui::GetTextLineHeight(), char_w = ImGui::CalcTextSize("Q").x;
    const ImU32 ink = IM_COL32(50, 50, 50, 255), tick = IM_COL32(110, 110, 110, 255);
    const ImVec2 outer(c0.x - margin.x, c0.y - margin.y);
    // The visible tokens: keys across [k0, k1), queries down [q0, q1).
    const double k0 = (c0.x - view.origin_x) / view.scale, k1 = (c1.x - view.origin_x) / view.scale;
    const double q0 = (c0.y - view.origin_y) / view.scale, q1 = (c1.y - view.origin_y) / view.scale;
    const float number_w = ImGui::CalcTextSize(std::to_string(n).c_str()).x;
    dl->PushClipRect(outer, ImVec2(c1.x, c0.y), true);  // the top margin
    for (int64_t t : axis_ticks(k0, k1, n, view.scale, number_w + 12)) {
        float x = static_cast<float>(view.origin_x + static_cast<double>(t) * view.scale);
        std::string label = std::to_string(t);
        float w = ImGui::CalcTextSize(label.c_str()).x;
        float lx = std::clamp(x - w / 2, c0.x - w / 2, c1.x - w);
        if (lx < outer.x) continue;
        dl->AddLine(ImVec2(x, c0.y - 4), ImVec2(x, c0.y), tick);
        text_at(app, dl, ImVec2(lx, c0.y - 4 - line_h), ink, label, "tick");
    }
    const ImVec2 key_size = ImGui::CalcTextSize("Key");
    const float key_x = std::floor((std::max(c0.x, static_cast<float>(view.origin_x)) +
                                    std::min(c1.x, static_cast<float>(view.origin_x + static_cast<double>(n) * view.scale))) / 2 - key_size.x / 2);
    text_at(app, dl, ImVec2(std::clamp(key_x, c0.x, c1.x - key_size.x), outer.y + 1), ink, "Key", "axis_label");
    dl->PopClipRect();
    dl->PushClipRect(outer, ImVec2(c0.x, c1.y), true);  // the left margin
    for (int64_t t : axis_ticks(q0, q1, n, view.scale, line_h + 6)) {
        float y = static_cast<float>(view.origin_y + static_cast<double>(t) * view.scale);
        std::string label = std::to_string(t);
        ImVec2 ts = ImGui::CalcTextSize(label.c_str());
        float ly = std::clamp(y - ts.y / 2, c0.y, c1.y - ts.y);
        dl->AddLine(ImVec2(c0.x - 4, y), ImVec2(c0.x, y), tick);
        text_at(app, dl, ImVec2(c0.x - 6 - ts.x, ly), ink, label, "tick");
    }
    // "Query" written down the left edge, one letter a line, centred on the visible grid.
    const float grid_top = std::max(c0.y, static_cast<float>(view.origin_y));
    const float grid_bottom = std::min(c1.y, static_cast<float>(view.origin_y + static_cast<double>(n) * view.scale));
    const char* word = "Query";
    const float word_h = 5 * line_h;
    float y = std::max(c0.y, std::floor((grid_top + grid_bottom) / 2 - word_h / 2));
    const float x = outer.x + 2;
    for (const char* c = word; *c; ++c) dl->AddText(ImVec2(x, y + static_cast<float>(c - word) * line_h), ink, c, c + 1);
    layout_add(app, "axis_label", word, ImVec2(x, y), ImVec2(x + char_w, y + word_h), dl->GetClipRectMin(), dl->GetClipRectMax());
    dl->PopClipRect();
}

// Draws mask (layer, head) of m into a canvas of `size` (axes included when `axes`): zoom with
// the wheel, pan by dragging when `interactive`; returns the view it used. Once a token is
// kTokenPixels or more on screen, the visible pairs are drawn one by one (mask_region_image),
// so dilation, strides and causal edges inside partial blocks show.
constexpr double kTokenPixels = 4;
GridView draw_mask_canvas(App& app, const ViewModel& m, int64_t layer, int64_t head, MaskTexture& tex, ImVec2 size,
                          bool interactive, GridView* state, bool axes = false) {
    const int64_t n = m.n;
    const BlockMask& mask = m.masks.at(layer, head);
    tex.update(m, layer, head);
    ImVec2 outer = ImGui::GetCursorScreenPos();
    size.x = std::max(size.x, 64.0f);
    size.y = std::max(size.y, 64.0f);
    const ImVec2 margin = axes ? grid_axes_margin(n) : ImVec2(0, 0);
    ImVec2 p0(outer.x + margin.x, outer.y + margin.y);
    ImVec2 csize(std::max(32.0f, size.x - margin.x), std::max(32.0f, size.y - margin.y));
    if (axes) ImGui::Dummy(ImVec2(size.x, margin.y));  // the axes' margin, then the canvas beside the left one
    ImGui::SetCursorScreenPos(p0);
    ImGui::InvisibleButton("canvas", csize);
    bool hovered = ImGui::IsItemHovered();
    GridView fit = grid_view_fit(n, p0.x, p0.y, csize.x, csize.y);
    GridView view = fit;
    if (interactive && state) {
        if (app.grid_fit) {
            *state = fit;
            app.grid_fit = false;
        }
        if (app.args.zoom > 0 && !app.zoom_applied) {  // --zoom PX [--center Q,K]
            const double q = app.args.center_q >= 0 ? static_cast<double>(app.args.center_q) : static_cast<double>(n / 2);
            const double k = app.args.center_k >= 0 ? static_cast<double>(app.args.center_k) : static_cast<double>(n / 2);
            state->scale = app.args.zoom;
            state->origin_x = std::floor(p0.x + csize.x / 2 - (k + 0.5) * app.args.zoom);
            state->origin_y = std::floor(p0.y + csize.y / 2 - (q + 0.5) * app.args.zoom);
            app.zoom_applied = true;
        }
        view = *state;
        ImGuiIO& io = ImGui::GetIO();
        if (hovered && io.MouseWheel != 0) view = grid_view_zoom(view, std::pow(1.25, io.MouseWheel), io.MousePos.x, io.MousePos.y, fit.scale / 2);
        if (ImGui::IsItemActive() && ImGui::IsMouseDragging(ImGuiMouseButton_Left)) {
            view.origin_x += io.MouseDelta.x;
            view.origin_y += io.MouseDelta.y;
        }
        *state = view;
    }
    ImDrawList* dl = ImGui::GetWindowDrawList();
    ImVec2 p1(p0.x + csize.x, p0.y + csize.y);
    dl->PushClipRect(p0, p1, true);
    dl->AddRectFilled(p0, p1, IM_COL32(200, 200, 200, 255));
    const double covered = static_cast<double>(tex.texture.width()) * static_cast<double>(tex.blocks_per_pixel * mask.block);
    auto [x0, y0] = grid_pair_corner(view, 0, 0);
    auto [x1, y1] = grid_pair_corner(view, n, n);
    float uv = static_cast<float>(static_cast<double>(n) / covered);
    dl->AddImage(tex.texture.id(), ImVec2(static_cast<float>(x0), static_cast<float>(y0)), ImVec2(static_cast<float>(x1), static_cast<float>(y1)),
                 ImVec2(0, 0), ImVec2(uv, uv));
    if (view.scale >= kTokenPixels) {  // token level: only the visible pairs
        auto visible = [&](double lo_px, double hi_px, double origin) {
            int64_t lo = std::clamp<int64_t>(static_cast<int64_t>(std::floor((lo_px - origin) / view.scale)), 0, n);
            int64_t hi = std::clamp<int64_t>(static_cast<int64_t>(std::ceil((hi_px - origin) / view.scale)), 0, n);
            return std::make_pair(lo, hi);
        };
        auto [k_lo, k_hi] = visible(p0.x, p1.x, view.origin_x);
        auto [q_lo, q_hi] = visible(p0.y, p1.y, view.origin_y);
        if (k_hi > k_lo && q_hi > q_lo) {
            tex.update_region(m, layer, head, q_lo, k_lo, q_hi - q_lo, k_hi - k_lo);
            auto [rx0, ry0] = grid_pair_corner(view, q_lo, k_lo);
            auto [rx1, ry1] = grid_pair_corner(view, q_hi, k_hi);
            dl->AddImage(tex.region.id(), ImVec2(static_cast<float>(rx0), static_cast<float>(ry0)),
                         ImVec2(static_cast<float>(rx1), static_cast<float>(ry1)));
        }
    }
    // Block lines once blocks are large on screen.
    double block_px = view.scale * mask.block;
    if (block_px >= 12) {
        for (int64_t b = 0; b <= mask.q_blocks(); ++b) {
            auto [gx, gy] = grid_pair_corner(view, std::min(b * mask.block, n), std::min(b * mask.block, n));
            if (gx >= p0.x && gx <= p1.x) dl->AddLine(ImVec2(static_cast<float>(gx), static_cast<float>(y0)), ImVec2(static_cast<float>(gx), static_cast<float>(y1)), IM_COL32(255, 255, 255, 110));
            if (gy >= p0.y && gy <= p1.y) dl->AddLine(ImVec2(static_cast<float>(x0), static_cast<float>(gy)), ImVec2(static_cast<float>(x1), static_cast<float>(gy)), IM_COL32(255, 255, 255, 110));
        }
    }
    dl->PopClipRect();
    layout_add(app, "mask_canvas", "", p0, p1, dl->GetClipRectMin(), dl->GetClipRectMax());
    if (axes) draw_grid_axes(app, view, n, p0, p1);
    if (hovered) {
        ImGuiIO& io = ImGui::GetIO();
        if (auto pair = grid_pair_at(view, n, io.MousePos.x, io.MousePos.y)) mask_tooltip(app, m, layer, head, pair->first, pair->second);
    }
    return view;
}

// A small picture of the whole mask with the zoomed view's rectangle, at long n or when zoomed.
void draw_minimap(App& app, const ViewModel& m, int64_t layer, int64_t head, ImVec2 canvas0, ImVec2 canvas_size,
                  const GridView& view) {
    const float side = std::min(150.0f, std::floor(std::min(canvas_size.x, canvas_size.y) * 0.3f));
    ImVec2 p0(canvas0.x + canvas_size.x - side - 8, canvas0.y + 8);
    app.minimap_tex.update(m, layer, head);
    ImDrawList* dl = ImGui::GetWindowDrawList();
    dl->AddRectFilled(ImVec2(p0.x - 3, p0.y - 3), ImVec2(p0.x + side + 3, p0.y + side + 3), IM_COL32(40, 40, 40, 220));
    layout_add(app, "minimap", "", ImVec2(p0.x - 3, p0.y - 3), ImVec2(p0.x + side + 3, p0.y + side + 3), dl->GetClipRectMin(), dl->GetClipRectMax());
    const BlockMask& mask = m.masks.at(layer, head);
    double covered = static_cast<double>(app.minimap_tex.texture.width()) * static_cast<double>(app.minimap_tex.blocks_per_pixel * mask.block);
    float uv = static_cast<float>(static_cast<double>(m.n) / covered);
    dl->AddImage(app.minimap_tex.texture.id(), p0, ImVec2(p0.x + side, p0.y + side), ImVec2(0, 0), ImVec2(uv, uv));
    // The visible part of the grid, in tokens, then on the minimap.
    double s = side / static_cast<double>(m.n);
    double k0 = (canvas0.x - view.origin_x) / view.scale, q0 = (canvas0.y - view.origin_y) / view.scale;
    double k1 = k0 + canvas_size.x / view.scale, q1 = q0 + canvas_size.y / view.scale;
    auto clampn = [&](double t) { return std::clamp(t, 0.0, static_cast<double>(m.n)); };
    dl->AddRect(ImVec2(p0.x + static_cast<float>(clampn(k0) * s), p0.y + static_cast<float>(clampn(q0) * s)),
                ImVec2(p0.x + static_cast<float>(clampn(k1) * s), p0.y + static_cast<float>(clampn(q1) * s)), IM_COL32(230, 30, 30, 255), 0, 0, 2);
}

void legend_swatch(uint32_t color, const char* label) {
    ImVec2 p = ImGui::GetCursorScreenPos();
    float h = ImGui::GetTextLineHeight();
    ImGui::GetWindowDrawList()->AddRectFilled(p, ImVec2(p.x + h, p.y + h), to_imgui(color));
    ImGui::GetWindowDrawList()->AddRect(p, ImVec2(p.x + h, p.y + h), IM_COL32(120, 120, 120, 255));
    ImGui::Dummy(ImVec2(h, h));
    ImGui::SameLine();
    ImGui::TextUnformatted(label);
}

void layer_head_sliders(App& app, const ViewModel& m, bool with_head) {
    const float w = 110;
    ImGui::SetNextItemWidth(w);
    ImGui::SliderInt("layer", &app.layer, 0, static_cast<int>(m.masks.layers - 1));
    layout_item(app, "control", "layer");
    if (with_head) {
        same_line_if_fits(labelled_width(w, "head"));
        ImGui::SetNextItemWidth(w);
        ImGui::SliderInt("head", &app.head, 0, static_cast<int>(m.masks.heads - 1));
        layout_item(app, "control", "head");
    }
    app.layer = static_cast<int>(model_layer(app, m));
    app.head = static_cast<int>(model_head(app, m));
}

void draw_mask_view(App& app, ImVec2 size) {
    const ViewModel* m = app.main.state.model.get();
    if (!m) {
        ImGui::TextDisabled("no mask yet: write a script or open an example");
        return;
    }
    const float swatch = ImGui::GetTextLineHeight() + ImGui::GetStyle().ItemSpacing.x;
    const ImVec2 start = ImGui::GetCursorScreenPos();
    layer_head_sliders(app, *m, true);
    same_line_if_fits(ImGui::CalcTextSize("fit").x + 2 * ImGui::GetStyle().FramePadding.x);
    if (ImGui::Button("fit")) app.grid_fit = true;
    for (auto [color, label] : {std::pair{kColorFull, "full"}, std::pair{kColorPartial, "partial"}, std::pair{kColorBackground, "not kept"}}) {
        same_line_if_fits(swatch + ImGui::CalcTextSize(label).x);
        legend_swatch(color, label);
        layout_item(app, "legend", label);
    }
    ImVec2 avail = ImGui::GetContentRegionAvail();
    const float used = ImGui::GetCursorScreenPos().y - start.y;
    int64_t layer = model_layer(app, *m), head = model_head(app, *m);
    const BlockMask& mask = m->masks.at(layer, head);
    // The caption under the grid, as the last frame's zoom says (its height is reserved first).
    const std::string blocks = " (" + std::to_string(mask.q_blocks()) + " blocks a side)";
    std::string caption = !app.grid_fit && app.grid.scale >= kTokenPixels
        ? "token level: every pair drawn" + blocks + "; wheel: zoom, drag: pan, hover: why"
        : "wheel: zoom (pairs from " + std::to_string(static_cast<int>(kTokenPixels)) + " px a token), drag: pan, hover: the pair and what allows it" + blocks;
    const float caption_h = ImGui::CalcTextSize(caption.c_str(), nullptr, false, avail.x).y + ImGui::GetStyle().ItemSpacing.y;
    ImVec2 canvas(std::min(size.x, avail.x), std::min(size.y - used, avail.y) - caption_h);
    const ImVec2 margin = grid_axes_margin(m->n);
    ImVec2 p0 = ImGui::GetCursorScreenPos();
    p0 = ImVec2(p0.x + margin.x, p0.y + margin.y);
    ImVec2 inner(canvas.x - margin.x, canvas.y - margin.y);
    GridView view = draw_mask_canvas(app, *m, layer, head, app.mask_tex, canvas, true, &app.grid, true);
    app.grid_drawn = true;
    app.grid_drawn_view = view;
    GridView fit = grid_view_fit(m->n, p0.x, p0.y, inner.x, inner.y);
    if (mask.q_blocks() >= 128 || view.scale > fit.scale * 1.01) draw_minimap(app, *m, layer, head, p0, inner, view);
    ImGui::PushStyleColor(ImGuiCol_Text, ImGui::GetStyle().Colors[ImGuiCol_TextDisabled]);
    ImGui::TextWrapped("%s", caption.c_str());
    ImGui::PopStyleColor();
    layout_item(app, "caption", caption);
}

void update_field(App& app, const ViewModel& m) {
    if (app.graph_model != m.serial) {
        app.graph = std::make_shared<ReachGraph>(reach_graph_make(m.masks, true));
        app.graph_model = m.serial;
        app.field_model = 0;
    }
    if (app.token < 0 || app.token >= m.n) app.token = m.n / 2;
    if (app.field_model != m.serial || app.field_token != app.token || app.field_direction != app.direction) {
        app.field = receptive_field_token(*app.graph, app.token, app.direction == 0 ? ReachDirection::in : ReachDirection::out, true);
        app.cone_tex.upload(light_cone_image(app.field, m.n, 1024));
        app.field_model = m.serial;
        app.field_token = app.token;
        app.field_direction = app.direction;
    }
}

void draw_reach_view(App& app, ImVec2 size) {
    const ViewModel* m = app.main.state.model.get();
    if (!m) {
        ImGui::TextDisabled("no mask yet");
        return;
    }
    update_field(app, *m);
    const ImVec2 start = ImGui::GetCursorScreenPos();
    const int layers = static_cast<int>(m->masks.layers);
    const float line_h = ImGui::GetTextLineHeight();
    const ImGuiStyle& style = ImGui::GetStyle();
    // Controls, wrapping onto more lines in a narrow panel.
    ImGui::SetNextItemWidth(90);
    long long token = app.token;
    if (ImGui::InputScalar("token", ImGuiDataType_S64, &token)) app.token = std::clamp<long long>(token, 0, m->n - 1);
    layout_item(app, "control", "token");
    const float radio = line_h + style.FramePadding.y * 2 + style.ItemInnerSpacing.x;
    const char* in_label = "in (what it has seen)";
    const char* out_label = "out (where it spread)";
    same_line_if_fits(radio + ImGui::CalcTextSize(in_label).x);
    ImGui::RadioButton(in_label, &app.direction, 0);
    layout_item(app, "control", in_label);
    same_line_if_fits(radio + ImGui::CalcTextSize(out_label).x);
    ImGui::RadioButton(out_label, &app.direction, 1);
    layout_item(app, "control", out_label);
    if (ImGui::Button(app.playing ? "pause" : "play")) {
        app.playing = !app.playing;
        if (app.playing && app.shown_layer >= layers) app.shown_layer = 0;
    }
    ImGui::SameLine();
    if (ImGui::Button("step")) app.shown_layer = std::min(app.shown_layer + 1, layers);
    same_line_if_fits(labelled_width(120, "shown layer"));
    ImGui::SetNextItemWidth(120);
    ImGui::SliderInt("shown layer", &app.shown_layer, 0, layers);
    layout_item(app, "control", "shown layer");
    app.shown_layer = std::clamp(app.shown_layer, 0, layers);
    if (app.playing && now_seconds() - app.last_step > 0.6) {
        app.last_step = now_seconds();
        if (app.shown_layer < layers) ++app.shown_layer;
        else app.playing = false;
    }
    char field_text[96];
    std::snprintf(field_text, sizeof field_text, "field after layer %d: %lld of %lld tokens", app.shown_layer,
                  static_cast<long long>(app.field.sizes[static_cast<size_t>(app.shown_layer)]), static_cast<long long>(m->n));
    same_line_if_fits(ImGui::CalcTextSize(field_text).x);
    ImGui::TextUnformatted(field_text);
    layout_item(app, "text", field_text);

    // Under the pictures: the legend of the shading (one line, or two when narrow), and for a
    // causal script the note on its limits; their heights are reserved first.
    ImVec2 avail = ImGui::GetContentRegionAvail();
    avail.x = std::min(avail.x, size.x);
    avail.y = std::min(avail.y, size.y - (ImGui::GetCursorScreenPos().y - start.y));
    const int64_t per_column = (m->n + 1023) / 1024;  // light_cone_image's 1024 columns
    std::string note;
    if (m->coverage.causal) {
        const int64_t t = app.token, limit = app.direction == 0 ? t + 1 : m->n - t;
        note = "causal: a query sees only keys at or before it, so at most n(n+1)/2 of the n^2 pairs (about 50%) can ever connect: "
               "'all pairs' counts those (100% = all of them), and token " + std::to_string(t) + "'s field stops at " +
               std::to_string(limit) + " of " + std::to_string(m->n) + " tokens (dashed).";
    }
    const float note_h = note.empty() ? 0 : ImGui::CalcTextSize(note.c_str(), nullptr, false, avail.x).y + style.ItemSpacing.y;
    const int64_t legend_chars = 48 + 12 + 16;  // the legend's sentence, its ends and the "none" swatch
    const float legend_h = (static_cast<float>(legend_chars) * ImGui::CalcTextSize("M").x + 150 <= avail.x ? 1 : 2) * (line_h + 4) + 4;
    const float pictures_h = std::max(120.0f, avail.y - note_h - legend_h - style.ItemSpacing.y);

    // The light cone (left) and the coverage curves (right).
    float cone_w = std::floor(avail.x * 0.58f), plot_w = avail.x - cone_w - style.ItemSpacing.x;
    ImVec2 p0 = ImGui::GetCursorScreenPos();
    ImGui::InvisibleButton("cone", ImVec2(cone_w, pictures_h));
    ImDrawList* dl = ImGui::GetWindowDrawList();
    const float label_w = ImGui::CalcTextSize(("layer " + std::to_string(layers)).c_str()).x + 6;
    ImVec2 c0(p0.x + label_w, p0.y), c1(p0.x + cone_w, p0.y + pictures_h - line_h - 4);
    dl->AddRectFilled(c0, c1, to_imgui(kColorBackground));
    float row_h = (c1.y - c0.y) / static_cast<float>(layers + 1);
    // Only rows up to the shown layer: the field grows row by row as the animation steps.
    float shown_top = c1.y - row_h * static_cast<float>(app.shown_layer + 1);
    float v0 = static_cast<float>(layers - app.shown_layer) / static_cast<float>(layers + 1);
    dl->AddImage(app.cone_tex.id(), ImVec2(c0.x, shown_top), c1, ImVec2(0, v0), ImVec2(1, 1));
    layout_add(app, "cone", "", c0, c1, dl->GetClipRectMin(), dl->GetClipRectMax());
    const int label_every = std::max(1, static_cast<int>(std::ceil((line_h + 2) / std::max(1.0f, row_h))));
    for (int l = 0; l <= layers; ++l) {
        float y = c1.y - row_h * static_cast<float>(l + 1);
        if (l % label_every == 0) {
            float ly = std::clamp(y + row_h / 2 - line_h / 2, c0.y, c1.y - line_h);
            text_at(app, dl, ImVec2(p0.x, ly), IM_COL32(60, 60, 60, 255), "layer " + std::to_string(l), "layer_label");
        }
        if (row_h >= 3) dl->AddLine(ImVec2(c0.x, y), ImVec2(c1.x, y), IM_COL32(255, 255, 255, 160));
    }
    float tx = c0.x + (c1.x - c0.x) * (static_cast<float>(app.token) + 0.5f) / static_cast<float>(m->n);
    dl->AddLine(ImVec2(tx, c0.y), ImVec2(tx, c1.y), IM_COL32(220, 30, 30, 200));
    const std::string last = std::to_string(m->n - 1);
    const char* axis = (c1.x - c0.x) > ImGui::CalcTextSize("tokens (click to pick one)").x + 100 ? "tokens (click to pick one)" : "tokens";
    text_at(app, dl, ImVec2(c0.x, c1.y + 2), IM_COL32(60, 60, 60, 255), "0", "tick");
    text_at(app, dl, ImVec2(std::floor((c0.x + c1.x) / 2 - ImGui::CalcTextSize(axis).x / 2), c1.y + 2), IM_COL32(60, 60, 60, 255), axis, "axis_label");
    text_at(app, dl, ImVec2(c1.x - ImGui::CalcTextSize(last.c_str()).x, c1.y + 2), IM_COL32(60, 60, 60, 255), last, "tick");
    if (ImGui::IsItemHovered()) {
        float x = ImGui::GetIO().MousePos.x;
        if (x >= c0.x && x < c1.x) {
            int64_t t = static_cast<int64_t>((x - c0.x) / (c1.x - c0.x) * static_cast<float>(m->n));
            t = std::clamp<int64_t>(t, 0, m->n - 1);
            ImGui::SetTooltip("token %lld", static_cast<long long>(t));
            if (ImGui::IsMouseClicked(ImGuiMouseButton_Left)) {
                app.token = t;
                app.shown_layer = 0;
                app.playing = true;
                app.last_step = now_seconds();
            }
        }
    }
    ImGui::SameLine();
    std::vector<Curve> curves;
    curves.push_back(coverage_curve(m->coverage, "all pairs", 0x1F5FA8FF));
    Curve field{"token " + std::to_string(app.token), {}, 0xD62728FF};
    for (int64_t s : app.field.sizes) field.y.push_back(static_cast<double>(s) / static_cast<double>(m->n));
    curves.push_back(field);
    std::vector<PlotLimit> limits;
    if (m->coverage.causal) {
        const int64_t limit = app.direction == 0 ? app.token + 1 : m->n - app.token;
        limits.push_back({static_cast<double>(limit) / static_cast<double>(m->n), "causal limit of token " + std::to_string(app.token), 0xD62728FF});
    }
    double x_max = static_cast<double>(std::max<size_t>(curves[0].y.size(), field.y.size()) - 1);
    plot_curves(app, "coverage", curves, x_max, ImVec2(plot_w, pictures_h), static_cast<double>(app.shown_layer),
                m->coverage.resolution == ReachResolution::block ? "coverage (block resolution)" : "coverage of all pairs", limits);

    // The legend: what the depth of the cone's colour means.
    ImVec2 l0 = ImGui::GetCursorScreenPos();
    ImGui::Dummy(ImVec2(avail.x, legend_h));
    const ImU32 ink = IM_COL32(50, 50, 50, 255);
    const float bar_w = std::min(120.0f, avail.x * 0.25f);
    std::string lead = "shade: share of a column's " + std::to_string(per_column) + " tokens in the field";
    if (per_column == 1) lead = "shade: the token is in the field";
    if (ImGui::CalcTextSize(lead.c_str()).x > avail.x) lead = "shade: share in the field";
    std::string lo = per_column == 1 ? "" : "1 of " + std::to_string(per_column), hi = per_column == 1 ? "in" : "all";
    ImVec2 lead_size = ImGui::CalcTextSize(lead.c_str());
    // One line when it fits, else the sentence above the bar.
    const float row2 = l0.x + lead_size.x + 8 + ImGui::CalcTextSize(lo.c_str()).x + bar_w + ImGui::CalcTextSize(hi.c_str()).x + 120 <= l0.x + avail.x
        ? l0.y : l0.y + line_h + 4;
    float x = row2 == l0.y ? l0.x + lead_size.x + 8 : l0.x;
    text_at(app, dl, ImVec2(l0.x, l0.y + 2), ink, lead, "legend");
    if (!lo.empty()) {
        text_at(app, dl, ImVec2(x, row2 + 2), ink, lo, "legend");
        x += ImGui::CalcTextSize(lo.c_str()).x + 4;
    }
    const uint32_t light = per_column == 1 ? kColorFull : light_cone_color(1.0 / static_cast<double>(per_column));
    ImVec2 b0(x, row2 + 2), b1(x + bar_w, row2 + 2 + line_h);
    dl->AddRectFilledMultiColor(b0, b1, to_imgui(light), to_imgui(kColorFull), to_imgui(kColorFull), to_imgui(light));
    layout_add(app, "legend_bar", "", b0, b1, dl->GetClipRectMin(), dl->GetClipRectMax());
    x = b1.x + 4;
    text_at(app, dl, ImVec2(x, row2 + 2), ink, hi, "legend");
    x += ImGui::CalcTextSize(hi.c_str()).x + 12;
    dl->AddRectFilled(ImVec2(x, row2 + 2), ImVec2(x + line_h, row2 + 2 + line_h), to_imgui(kColorBackground));
    dl->AddRect(ImVec2(x, row2 + 2), ImVec2(x + line_h, row2 + 2 + line_h), IM_COL32(120, 120, 120, 255));
    text_at(app, dl, ImVec2(x + line_h + 4, row2 + 2), ink, "none", "legend");
    if (!note.empty()) {
        ImGui::PushStyleColor(ImGuiCol_Text, IM_COL32(150, 20, 20, 255));
        ImGui::TextWrapped("%s", note.c_str());
        ImGui::PopStyleColor();
        layout_item(app, "plateau_note", note);
    }
}

void draw_hops_view(App& app, ImVec2 size) {
    const ViewModel* m = app.main.state.model.get();
    if (!m) {
        ImGui::TextDisabled("no mask yet");
        return;
    }
    const HopsMatrix& h = m->hops;
    if (app.hops_model != m->serial) {
        app.hops_tex.upload(hops_image(h));
        app.hops_model = m->serial;
    }
    const ImVec2 start = ImGui::GetCursorScreenPos();
    std::string what = "first layer after which query q has seen key k (" +
                       (h.exact ? std::string("token resolution") : std::to_string(h.node_tokens) + " tokens a cell; may be early") + ")";
    ImGui::TextWrapped("%s", what.c_str());
    layout_item(app, "text", what);
    const int64_t step = std::max<int64_t>(1, (h.layers + 11) / 12);  // at most 13 swatches
    const float swatch = ImGui::GetTextLineHeight() + ImGui::GetStyle().ItemSpacing.x;
    for (int64_t l = 0; l <= h.layers; l = l == h.layers ? l + 1 : std::min(l + step, h.layers)) {
        std::string label = std::to_string(l);
        if (l > 0) same_line_if_fits(swatch + ImGui::CalcTextSize(label.c_str()).x);
        legend_swatch(hops_color(l, h.layers), label.c_str());
        layout_item(app, "legend", label);
    }
    const char* never = "not within the layers";
    same_line_if_fits(swatch + ImGui::CalcTextSize(never).x);
    legend_swatch(kColorNever, never);
    layout_item(app, "legend", never);
    ImVec2 avail = ImGui::GetContentRegionAvail();
    const ImVec2 margin = grid_axes_margin(m->n);
    float side = std::min({avail.x - margin.x, avail.y - margin.y, size.x - margin.x, size.y - (ImGui::GetCursorScreenPos().y - start.y) - margin.y});
    side = std::max(side, 48.0f);
    ImVec2 outer = ImGui::GetCursorScreenPos();
    ImGui::Dummy(ImVec2(side + margin.x, margin.y));
    ImVec2 p0(outer.x + margin.x, outer.y + margin.y);
    ImGui::SetCursorScreenPos(p0);
    ImGui::InvisibleButton("hops", ImVec2(side, side));
    ImGui::GetWindowDrawList()->AddImage(app.hops_tex.id(), p0, ImVec2(p0.x + side, p0.y + side));
    GridView view;  // one node is node_tokens tokens
    view.origin_x = p0.x;
    view.origin_y = p0.y;
    view.scale = side / static_cast<double>(h.nodes * h.node_tokens);
    draw_grid_axes(app, view, m->n, p0, ImVec2(p0.x + side, p0.y + side));
    if (ImGui::IsItemHovered()) {
        ImVec2 mp = ImGui::GetIO().MousePos;
        int64_t a = std::clamp<int64_t>(static_cast<int64_t>((mp.y - p0.y) / side * static_cast<float>(h.nodes)), 0, h.nodes - 1);
        int64_t b = std::clamp<int64_t>(static_cast<int64_t>((mp.x - p0.x) / side * static_cast<float>(h.nodes)), 0, h.nodes - 1);
        int64_t l = h.at(a, b);
        auto range = [&](int64_t node) {
            int64_t lo = node * h.node_tokens, hi = std::min(m->n, lo + h.node_tokens) - 1;
            return lo == hi ? std::to_string(lo) : std::to_string(lo) + ".." + std::to_string(hi);
        };
        ImGui::SetTooltip("queries %s, keys %s: %s", range(a).c_str(), range(b).c_str(),
                          l < 0 ? ("not within " + std::to_string(h.layers) + " layers").c_str()
                                : ("first reached after layer " + std::to_string(l)).c_str());
    }
}

const ReachCoverage& head_coverage(App& app, const ViewModel& m, int64_t head) {
    if (app.head_coverage_model != m.serial) {
        app.head_coverage.clear();
        app.head_coverage_model = m.serial;
    }
    auto it = app.head_coverage.find(head);
    if (it == app.head_coverage.end()) {
        std::vector<std::shared_ptr<const BlockMask>> masks;
        for (int64_t l = 0; l < m.masks.layers; ++l) masks.push_back(m.masks.masks[static_cast<size_t>(l * m.masks.heads + head)]);
        MaskSet one = mask_set_make(m.masks.layers, 1, masks);
        ReachOptions reach;
        reach.resolution = reach_resolution_auto(m.n);
        reach.max_nodes = 2048;
        reach.max_layers = m.masks.layers + std::max<int64_t>(m.masks.layers, 64);
        it = app.head_coverage.emplace(head, receptive_field_coverage(one, reach)).first;
    }
    return it->second;
}

void draw_compare_view(App& app, ImVec2 size) {
    const ViewModel* a = app.main.state.model.get();
    if (!a) {
        ImGui::TextDisabled("no mask yet");
        return;
    }
    const ImGuiStyle& style = ImGui::GetStyle();
    const float radio = ImGui::GetTextLineHeight() + style.FramePadding.y * 2 + style.ItemInnerSpacing.x;
    ImGui::RadioButton("two scripts", &app.compare_mode, 0);
    same_line_if_fits(radio + ImGui::CalcTextSize("two heads").x);
    ImGui::RadioButton("two heads", &app.compare_mode, 1);
    same_line_if_fits(labelled_width(100, "layer"));
    ImGui::SetNextItemWidth(100);
    ImGui::SliderInt("layer##compare", &app.layer, 0, static_cast<int>(a->masks.layers - 1));
    layout_item(app, "control", "layer");
    app.layer = static_cast<int>(model_layer(app, *a));
    const ViewModel* b = nullptr;
    int64_t head_a = model_head(app, *a), head_b = 0;
    std::string name_a = a->masks.script_name.empty() ? app.main.name : a->masks.script_name, name_b;
    if (app.compare_mode == 0) {
        same_line_if_fits(labelled_width(180, "second script"));
        ImGui::SetNextItemWidth(180);
        std::string preview = app.other.name.empty() || app.other.text.empty() ? "pick a script" : app.other.name;
        if (ImGui::BeginCombo("second script", preview.c_str())) {
            for (size_t i = 0; i < app.examples.size(); ++i) {
                if (ImGui::Selectable(app.examples[i].filename().string().c_str(), static_cast<int>(i) == app.compare_example)) {
                    app.compare_example = static_cast<int>(i);
                    try {
                        slot_open(app.other, app.examples[i].string());
                    } catch (const std::exception& e) {
                        app.status = e.what();
                    }
                }
            }
            ImGui::EndCombo();
        }
        layout_item(app, "control", "second script");
        b = app.other.state.model.get();
        name_b = app.other.name;
        if (!app.other.state.error.empty()) ImGui::TextColored(ImVec4(0.8f, 0.1f, 0.1f, 1), "%s", app.other.state.error.c_str());
        for (const auto& d : app.other.state.diagnostics) {
            if (d.severity == dsl::Severity::error) ImGui::TextColored(ImVec4(0.8f, 0.1f, 0.1f, 1), "%s", dsl::diagnostic_format(d).c_str());
        }
    } else {
        same_line_if_fits(labelled_width(100, "head A"));
        ImGui::SetNextItemWidth(100);
        ImGui::SliderInt("head A", &app.head, 0, static_cast<int>(a->masks.heads - 1));
        same_line_if_fits(labelled_width(100, "head B"));
        ImGui::SetNextItemWidth(100);
        ImGui::SliderInt("head B", &app.compare_head, 0, static_cast<int>(a->masks.heads - 1));
        app.compare_head = std::clamp(app.compare_head, 0, static_cast<int>(a->masks.heads - 1));
        head_a = model_head(app, *a);
        head_b = app.compare_head;
        b = a;
        name_b = name_a + " head " + std::to_string(head_b);
        name_a += " head " + std::to_string(head_a);
    }
    ImVec2 avail = ImGui::GetContentRegionAvail();
    avail.x = std::min(avail.x, size.x);
    avail.y = std::min(avail.y, size.y);
    float plot_h = std::max(140.0f, avail.y * 0.36f);
    float side = std::min((avail.x - 12) / 2, avail.y - plot_h - 2 * ImGui::GetTextLineHeightWithSpacing());
    side = std::max(side, 64.0f);
    ImGui::BeginGroup();
    ImGui::TextUnformatted(name_a.c_str());
    ImGui::PushID("A");
    draw_mask_canvas(app, *a, model_layer(app, *a), head_a, app.compare_tex_a, ImVec2(side, side), false, nullptr);
    ImGui::PopID();
    ImGui::EndGroup();
    ImGui::SameLine();
    ImGui::BeginGroup();
    ImGui::TextUnformatted(b ? name_b.c_str() : "(no second script yet)");
    if (b) {
        ImGui::PushID("B");
        int64_t layer_b = std::clamp<int64_t>(app.layer, 0, b->masks.layers - 1);
        draw_mask_canvas(app, *b, layer_b, std::clamp<int64_t>(head_b, 0, b->masks.heads - 1), app.compare_tex_b, ImVec2(side, side), false, nullptr);
        ImGui::PopID();
    } else {
        ImGui::Dummy(ImVec2(side, side));
    }
    ImGui::EndGroup();
    std::vector<Curve> curves;
    if (app.compare_mode == 0) {
        curves.push_back(coverage_curve(a->coverage, name_a, 0x1F5FA8FF));
        if (b) curves.push_back(coverage_curve(b->coverage, name_b, 0xD62728FF));
    } else {
        curves.push_back(coverage_curve(head_coverage(app, *a, head_a), name_a, 0x1F5FA8FF));
        curves.push_back(coverage_curve(head_coverage(app, *a, head_b), name_b, 0xD62728FF));
    }
    double x_max = 1;
    for (const Curve& c : curves) x_max = std::max(x_max, static_cast<double>(c.y.size() - 1));
    for (size_t i = 0; i < curves.size(); ++i) {
        const ViewModel* of = i == 0 || app.compare_mode == 1 ? a : b;
        if (of && of->coverage.causal) curves[i].label += " (causal: of the n(n+1)/2 pairs)";
    }
    plot_curves(app, "compare", curves, x_max, ImVec2(avail.x, plot_h), static_cast<double>(a->masks.layers),
                "coverage of all pairs (dashed: the script's layers)");
}

} // namespace sparsa::viz
