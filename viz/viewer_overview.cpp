// sparsa-view's overview: every (layer, head) mask of the script as a small picture with its
// density under it (bertviz's model view, for masks); a click opens one in the mask view.
#include "viz/viewer_app.hpp"

#include <imgui.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

namespace sparsa::viz {

namespace {

// Kept pairs / n^2 of every mask, [layers * heads], computed once per model.
const std::vector<double>& overview_densities(App& app, const ViewModel& m) {
    if (app.overview_model != m.serial) {
        app.overview_density.clear();
        const double n2 = static_cast<double>(m.n) * static_cast<double>(m.n);
        for (const auto& mask : m.masks.masks) app.overview_density.push_back(static_cast<double>(block_mask_stats(*mask).kept_pairs) / n2);
        for (auto& [key, tex] : app.overview_tex) tex.release();
        app.overview_tex.clear();
        app.overview_model = m.serial;
    }
    return app.overview_density;
}

std::string density_text(double d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, d >= 0.1 ? "%.0f%%" : d >= 0.001 ? "%.1f%%" : "%.2f%%", 100 * d);
    return buf;
}

} // namespace

void draw_overview_view(App& app, ImVec2 size) {
    const ViewModel* m = app.main.state.model.get();
    if (!m) {
        ImGui::TextDisabled("no mask yet");
        return;
    }
    const std::vector<double>& density = overview_densities(app, *m);
    const int64_t layers = m->masks.layers, heads = m->masks.heads;
    const ImVec2 start = ImGui::GetCursorScreenPos();
    const char* what = "every layer (rows) and head (columns), density under each: click one to open it";
    ImGui::TextWrapped("%s", what);
    layout_item(app, "text", what);
    ImVec2 avail = ImGui::GetContentRegionAvail();
    avail.x = std::min(avail.x, size.x);
    avail.y = std::min(avail.y, size.y - (ImGui::GetCursorScreenPos().y - start.y));
    const float line_h = ImGui::GetTextLineHeight();
    const float label_w = ImGui::CalcTextSize(("L" + std::to_string(layers - 1)).c_str()).x + 6;
    const float gap = 5;
    // Cells as large as fit (so a whole script is seen at once), but never below 24 pixels:
    // beyond that the grid scrolls. A cell is its picture and a line for the density.
    const float fit_w = (avail.x - label_w - ImGui::GetStyle().ScrollbarSize) / static_cast<float>(heads) - gap;
    const float fit_h = (avail.y - line_h - 4) / static_cast<float>(layers) - gap - line_h;
    const float side = std::floor(std::clamp(std::min(fit_w, fit_h), 24.0f, 160.0f));
    const int64_t blocks = m->masks.at(0, 0).q_blocks();
    // Whole pixels per texel, so every block is drawn the same size (tests sample block centres).
    const int64_t texels_max = static_cast<int64_t>(side);
    ImGui::BeginChild("overview grid", avail, false, ImGuiWindowFlags_HorizontalScrollbar);
    ImDrawList* dl = ImGui::GetWindowDrawList();
    const ImU32 ink = IM_COL32(50, 50, 50, 255);
    ImVec2 origin = ImGui::GetCursorScreenPos();
    origin = ImVec2(std::floor(origin.x), std::floor(origin.y));
    // Wide enough for the density under each (small cells get room between them for it).
    float density_w = 0;
    for (double d : density) density_w = std::max(density_w, ImGui::CalcTextSize(density_text(d).c_str()).x);
    const float cell_w = std::max(side + gap, std::ceil(density_w) + gap), cell_h = side + line_h + gap;
    ImGui::Dummy(ImVec2(label_w + cell_w * static_cast<float>(heads), line_h + 4 + cell_h * static_cast<float>(layers)));
    for (int64_t h = 0; h < heads; ++h) {  // head numbers above the columns
        std::string label = (side >= 48 ? "head " : "h") + std::to_string(h);
        float x = origin.x + label_w + cell_w * static_cast<float>(h);
        text_at(app, dl, ImVec2(x + std::floor((side - ImGui::CalcTextSize(label.c_str()).x) / 2), origin.y), ink, label, "overview_label");
    }
    const ImVec2 mouse = ImGui::GetIO().MousePos;
    const bool window_hovered = ImGui::IsWindowHovered();
    for (int64_t l = 0; l < layers; ++l) {
        const float y = origin.y + line_h + 4 + cell_h * static_cast<float>(l);
        if (!ImGui::IsRectVisible(ImVec2(origin.x, y), ImVec2(origin.x + 1, y + cell_h))) continue;
        std::string row = "L" + std::to_string(l);
        text_at(app, dl, ImVec2(origin.x, y + std::floor((side - line_h) / 2)), ink, row, "overview_label");
        for (int64_t h = 0; h < heads; ++h) {
            const float x = origin.x + label_w + cell_w * static_cast<float>(h);
            if (!ImGui::IsRectVisible(ImVec2(x, y), ImVec2(x + side, y + cell_h))) continue;
            MaskTexture& tex = app.overview_tex[{l, h}];
            tex.update(*m, l, h, texels_max);
            const int64_t texels = tex.texture.width();
            const float per = std::floor(side / static_cast<float>(texels));
            const float pic = per * static_cast<float>(texels);
            const ImVec2 a(x + std::floor((side - pic) / 2), y + std::floor((side - pic) / 2)), b(a.x + pic, a.y + pic);
            dl->AddRectFilled(ImVec2(x, y), ImVec2(x + side, y + side), IM_COL32(200, 200, 200, 255));
            dl->AddImage(tex.texture.id(), a, b);
            const bool current = l == app.layer && h == app.head;
            if (current) dl->AddRect(ImVec2(x - 2, y - 2), ImVec2(x + side + 2, y + side + 2), IM_COL32(220, 30, 30, 255), 0, 0, 2);
            LayoutRect cell;
            cell.layer = l;
            cell.head = h;
            cell.texels = texels;
            cell.blocks_per_texel = tex.blocks_per_pixel;
            layout_add(app, "overview_cell", "", a, b, dl->GetClipRectMin(), dl->GetClipRectMax(), cell);
            const std::string d = density_text(density[static_cast<size_t>(l * heads + h)]);
            text_at(app, dl, ImVec2(x + std::floor((side - ImGui::CalcTextSize(d.c_str()).x) / 2), y + side + 1), ink, d, "overview_density");
            if (window_hovered && mouse.x >= x && mouse.x < x + side && mouse.y >= y && mouse.y < y + side) {
                ImGui::SetTooltip("layer %lld, head %lld: density %s, %lld blocks a side\nclick to open it in the mask view",
                                  static_cast<long long>(l), static_cast<long long>(h), d.c_str(), static_cast<long long>(blocks));
                if (ImGui::IsMouseClicked(ImGuiMouseButton_Left)) {
                    app.layer = static_cast<int>(l);
                    app.head = static_cast<int>(h);
                    app.grid_fit = true;
                    if (app.view != ViewKind::demo) {
                        app.view = ViewKind::mask;
                        app.select_tab = true;
                    }
                }
            }
        }
    }
    ImGui::EndChild();
}

} // namespace sparsa::viz
