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

// Draws mask (layer, head) of m into a canvas of `size`: zoom with the wheel, pan by dragging
// when `interactive`; returns the view it used.
GridView draw_mask_canvas(App& app, const ViewModel& m, int64_t layer, int64_t head, MaskTexture& tex, ImVec2 size,
                          bool interactive, GridView* state) {
    const int64_t n = m.n;
    const BlockMask& mask = m.masks.at(layer, head);
    tex.update(m, layer, head);
    ImVec2 p0 = ImGui::GetCursorScreenPos();
    size.x = std::max(size.x, 64.0f);
    size.y = std::max(size.y, 64.0f);
    ImGui::InvisibleButton("canvas", size);
    bool hovered = ImGui::IsItemHovered();
    GridView fit = grid_view_fit(n, p0.x, p0.y, size.x, size.y);
    GridView view = fit;
    if (interactive && state) {
        if (app.grid_fit) {
            *state = fit;
            app.grid_fit = false;
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
    ImVec2 p1(p0.x + size.x, p0.y + size.y);
    dl->PushClipRect(p0, p1, true);
    dl->AddRectFilled(p0, p1, IM_COL32(200, 200, 200, 255));
    const double covered = static_cast<double>(tex.texture.width()) * static_cast<double>(tex.blocks_per_pixel * mask.block);
    auto [x0, y0] = grid_pair_corner(view, 0, 0);
    auto [x1, y1] = grid_pair_corner(view, n, n);
    float uv = static_cast<float>(static_cast<double>(n) / covered);
    dl->AddImage(tex.texture.id(), ImVec2(static_cast<float>(x0), static_cast<float>(y0)), ImVec2(static_cast<float>(x1), static_cast<float>(y1)),
                 ImVec2(0, 0), ImVec2(uv, uv));
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
    if (hovered) {
        ImGuiIO& io = ImGui::GetIO();
        if (auto pair = grid_pair_at(view, n, io.MousePos.x, io.MousePos.y)) mask_tooltip(app, m, layer, head, pair->first, pair->second);
    }
    return view;
}

// A small picture of the whole mask with the zoomed view's rectangle, at long n or when zoomed.
void draw_minimap(App& app, const ViewModel& m, int64_t layer, int64_t head, ImVec2 canvas0, ImVec2 canvas_size,
                  const GridView& view) {
    const float side = 150;
    ImVec2 p0(canvas0.x + canvas_size.x - side - 8, canvas0.y + 8);
    app.minimap_tex.update(m, layer, head);
    ImDrawList* dl = ImGui::GetWindowDrawList();
    dl->AddRectFilled(ImVec2(p0.x - 3, p0.y - 3), ImVec2(p0.x + side + 3, p0.y + side + 3), IM_COL32(40, 40, 40, 220));
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
    ImGui::SetNextItemWidth(140);
    ImGui::SliderInt("layer", &app.layer, 0, static_cast<int>(m.masks.layers - 1));
    if (with_head) {
        ImGui::SameLine();
        ImGui::SetNextItemWidth(140);
        ImGui::SliderInt("head", &app.head, 0, static_cast<int>(m.masks.heads - 1));
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
    layer_head_sliders(app, *m, true);
    ImGui::SameLine();
    if (ImGui::Button("fit")) app.grid_fit = true;
    ImGui::SameLine();
    legend_swatch(kColorFull, "full");
    ImGui::SameLine();
    legend_swatch(kColorPartial, "partial");
    ImGui::SameLine();
    legend_swatch(kColorBackground, "not kept");
    ImVec2 avail = ImGui::GetContentRegionAvail();
    ImVec2 canvas(std::min(size.x, avail.x), std::min(size.y, avail.y) - ImGui::GetTextLineHeightWithSpacing());
    ImVec2 p0 = ImGui::GetCursorScreenPos();
    int64_t layer = model_layer(app, *m), head = model_head(app, *m);
    GridView view = draw_mask_canvas(app, *m, layer, head, app.mask_tex, canvas, true, &app.grid);
    app.grid_drawn = true;
    app.grid_drawn_view = view;
    GridView fit = grid_view_fit(m->n, p0.x, p0.y, canvas.x, canvas.y);
    if (m->masks.at(layer, head).q_blocks() >= 128 || view.scale > fit.scale * 1.01) draw_minimap(app, *m, layer, head, p0, canvas, view);
    ImGui::TextDisabled("wheel: zoom, drag: pan, hover: the pair and what allows it (%lld blocks a side)",
                        static_cast<long long>(m->masks.at(layer, head).q_blocks()));
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
    const int layers = static_cast<int>(m->masks.layers);
    ImGui::SetNextItemWidth(110);
    long long token = app.token;
    if (ImGui::InputScalar("token", ImGuiDataType_S64, &token)) app.token = std::clamp<long long>(token, 0, m->n - 1);
    ImGui::SameLine();
    ImGui::RadioButton("in (what it has seen)", &app.direction, 0);
    ImGui::SameLine();
    ImGui::RadioButton("out (where it spread)", &app.direction, 1);
    if (ImGui::Button(app.playing ? "pause" : "play")) {
        app.playing = !app.playing;
        if (app.playing && app.shown_layer >= layers) app.shown_layer = 0;
    }
    ImGui::SameLine();
    if (ImGui::Button("step")) app.shown_layer = std::min(app.shown_layer + 1, layers);
    ImGui::SameLine();
    ImGui::SetNextItemWidth(160);
    ImGui::SliderInt("shown layer", &app.shown_layer, 0, layers);
    app.shown_layer = std::clamp(app.shown_layer, 0, layers);
    if (app.playing && now_seconds() - app.last_step > 0.6) {
        app.last_step = now_seconds();
        if (app.shown_layer < layers) ++app.shown_layer;
        else app.playing = false;
    }
    ImGui::SameLine();
    ImGui::Text("field after layer %d: %lld of %lld tokens", app.shown_layer,
                static_cast<long long>(app.field.sizes[static_cast<size_t>(app.shown_layer)]), static_cast<long long>(m->n));

    // The light cone (left) and the coverage curves (right).
    ImVec2 avail = ImGui::GetContentRegionAvail();
    avail.x = std::min(avail.x, size.x);
    avail.y = std::min(avail.y, size.y) - ImGui::GetTextLineHeightWithSpacing();
    float cone_w = avail.x * 0.58f, plot_w = avail.x - cone_w - 8;
    ImVec2 p0 = ImGui::GetCursorScreenPos();
    ImGui::InvisibleButton("cone", ImVec2(cone_w, avail.y));
    ImDrawList* dl = ImGui::GetWindowDrawList();
    const float label_w = 54;
    ImVec2 c0(p0.x + label_w, p0.y), c1(p0.x + cone_w, p0.y + avail.y - 16);
    dl->AddRectFilled(c0, c1, to_imgui(kColorBackground));
    float row_h = (c1.y - c0.y) / static_cast<float>(layers + 1);
    // Only rows up to the shown layer: the field grows row by row as the animation steps.
    float shown_top = c1.y - row_h * static_cast<float>(app.shown_layer + 1);
    float v0 = static_cast<float>(layers - app.shown_layer) / static_cast<float>(layers + 1);
    dl->AddImage(app.cone_tex.id(), ImVec2(c0.x, shown_top), c1, ImVec2(0, v0), ImVec2(1, 1));
    for (int l = 0; l <= layers; ++l) {
        float y = c1.y - row_h * static_cast<float>(l + 1);
        if (row_h >= 10 || l % std::max(1, static_cast<int>(12 / std::max(1.0f, row_h))) == 0) {
            char label[24];
            std::snprintf(label, sizeof label, "layer %d", l);
            dl->AddText(ImVec2(p0.x, y + row_h / 2 - 7), IM_COL32(60, 60, 60, 255), label);
        }
        dl->AddLine(ImVec2(c0.x, y), ImVec2(c1.x, y), IM_COL32(255, 255, 255, 160));
    }
    float tx = c0.x + (c1.x - c0.x) * (static_cast<float>(app.token) + 0.5f) / static_cast<float>(m->n);
    dl->AddLine(ImVec2(tx, c0.y), ImVec2(tx, c1.y), IM_COL32(220, 30, 30, 200));
    char axis[64];
    std::snprintf(axis, sizeof axis, "0   tokens (click to pick one)   %lld", static_cast<long long>(m->n - 1));
    dl->AddText(ImVec2(c0.x, c1.y + 2), IM_COL32(60, 60, 60, 255), axis);
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
    Curve field{"token " + std::to_string(app.token) + " field", {}, 0xD62728FF};
    for (int64_t s : app.field.sizes) field.y.push_back(static_cast<double>(s) / static_cast<double>(m->n));
    curves.push_back(field);
    double x_max = static_cast<double>(std::max<size_t>(curves[0].y.size(), field.y.size()) - 1);
    plot_curves("coverage", curves, x_max, ImVec2(plot_w, avail.y), static_cast<double>(app.shown_layer),
                m->coverage.resolution == ReachResolution::block ? "coverage (block resolution)" : "coverage of all pairs");
    ImGui::TextDisabled("layers stacked bottom (0) to top: a light cone; the dashed line is the shown layer");
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
    ImGui::Text("first layer at which key k reaches query q (%s)",
                h.exact ? "token resolution" : ("block resolution, " + std::to_string(h.node_tokens) + " tokens a cell; may be early").c_str());
    const int64_t step = std::max<int64_t>(1, (h.layers + 11) / 12);  // at most 13 swatches
    for (int64_t l = 0; l <= h.layers; l = l == h.layers ? l + 1 : std::min(l + step, h.layers)) {
        if (l > 0) ImGui::SameLine();
        legend_swatch(hops_color(l, h.layers), std::to_string(l).c_str());
    }
    ImGui::SameLine();
    legend_swatch(kColorNever, "not within the layers");
    ImVec2 avail = ImGui::GetContentRegionAvail();
    float side = std::min({avail.x, avail.y - ImGui::GetTextLineHeightWithSpacing(), size.x, size.y});
    side = std::max(side, 64.0f);
    ImVec2 p0 = ImGui::GetCursorScreenPos();
    ImGui::InvisibleButton("hops", ImVec2(side, side));
    ImGui::GetWindowDrawList()->AddImage(app.hops_tex.id(), p0, ImVec2(p0.x + side, p0.y + side));
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
    ImGui::RadioButton("two scripts", &app.compare_mode, 0);
    ImGui::SameLine();
    ImGui::RadioButton("two heads", &app.compare_mode, 1);
    ImGui::SameLine();
    ImGui::SetNextItemWidth(120);
    ImGui::SliderInt("layer##compare", &app.layer, 0, static_cast<int>(a->masks.layers - 1));
    app.layer = static_cast<int>(model_layer(app, *a));
    const ViewModel* b = nullptr;
    int64_t head_a = model_head(app, *a), head_b = 0;
    std::string name_a = a->masks.script_name.empty() ? app.main.name : a->masks.script_name, name_b;
    if (app.compare_mode == 0) {
        ImGui::SameLine();
        ImGui::SetNextItemWidth(220);
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
        b = app.other.state.model.get();
        name_b = app.other.name;
        if (!app.other.state.error.empty()) ImGui::TextColored(ImVec4(0.8f, 0.1f, 0.1f, 1), "%s", app.other.state.error.c_str());
        for (const auto& d : app.other.state.diagnostics) {
            if (d.severity == dsl::Severity::error) ImGui::TextColored(ImVec4(0.8f, 0.1f, 0.1f, 1), "%s", dsl::diagnostic_format(d).c_str());
        }
    } else {
        ImGui::SameLine();
        ImGui::SetNextItemWidth(120);
        ImGui::SliderInt("head A", &app.head, 0, static_cast<int>(a->masks.heads - 1));
        ImGui::SameLine();
        ImGui::SetNextItemWidth(120);
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
    plot_curves("compare", curves, x_max, ImVec2(avail.x, plot_h), static_cast<double>(a->masks.layers),
                "coverage of all pairs (dashed: the script's layers)");
}

} // namespace sparsa::viz
