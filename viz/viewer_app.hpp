// The viewer's shared state (textures, the script slots, the app) and what viewer.cpp and
// viewer_views.cpp call of each other: internal to sparsa-view, not an interface.
#pragma once

#include "dsl/pattern_parts.hpp"
#include "dsl/script.hpp"
#include "io/atomic_file.hpp"
#include "engine/error.hpp"
#include "analysis/receptive_field.hpp"
#include "viz/grid_view.hpp"
#include "viz/image.hpp"
#include "viz/layout.hpp"
#include "viz/mask_image.hpp"
#include "viz/view_args.hpp"
#include "viz/view_model.hpp"

#define GL_SILENCE_DEPRECATION
#include <GL/gl.h>
#include <imgui.h>
#include <imgui_internal.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sparsa::viz {

inline ImU32 to_imgui(uint32_t rgba) {  // 0xRRGGBBAA -> ImGui's ABGR
    return IM_COL32(rgba >> 24, (rgba >> 16) & 0xFF, (rgba >> 8) & 0xFF, rgba & 0xFF);
}

// [SECTION] textures

class Texture {
public:
    Texture() = default;
    Texture(const Texture&) = delete;
    Texture& operator=(const Texture&) = delete;
    ~Texture() { release(); }

    // Deletes the GL texture (call while the GL context is alive).
    void release() {
        if (id_ != 0) glDeleteTextures(1, &id_);
        id_ = 0;
    }

    // Uploads the image (nearest filtering: one texel is one block, sharp at any zoom).
    void upload(const Image& image) {
        if (id_ == 0) glGenTextures(1, &id_);
        glBindTexture(GL_TEXTURE_2D, id_);
        glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MIN_FILTER, GL_NEAREST);
        glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MAG_FILTER, GL_NEAREST);
        glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_WRAP_S, GL_CLAMP_TO_EDGE);
        glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_WRAP_T, GL_CLAMP_TO_EDGE);
        glPixelStorei(GL_UNPACK_ALIGNMENT, 1);
        glTexImage2D(GL_TEXTURE_2D, 0, GL_RGBA, image.width, image.height, 0, GL_RGBA, GL_UNSIGNED_BYTE, image.rgba.data());
        width_ = image.width;
        height_ = image.height;
    }
    ImTextureID id() const { return reinterpret_cast<ImTextureID>(static_cast<intptr_t>(id_)); }
    bool ready() const { return id_ != 0; }
    int width() const { return width_; }
    int height() const { return height_; }

private:
    GLuint id_ = 0;
    int width_ = 0, height_ = 0;
};

// A texture of one (model, layer, head) mask, rebuilt when any of them changes; and, when the
// view is zoomed to token level, a texture of the visible pairs (mask_region_image).
struct MaskTexture {
    Texture texture;
    uint64_t model = 0;  // ViewModel::serial
    int64_t layer = -1, head = -1;
    int64_t max_side = 2048;
    int64_t blocks_per_pixel = 1;

    Texture region;
    uint64_t region_model = 0;
    int64_t region_layer = -1, region_head = -1, region_q0 = -1, region_k0 = -1, region_rows = 0, region_cols = 0;

    void update(const ViewModel& m, int64_t l, int64_t h, int64_t side = 2048) {
        if (model == m.serial && layer == l && head == h && max_side == side) return;
        MaskImage image = mask_image_make(m.masks.at(l, h), side);
        texture.upload(image.image);
        blocks_per_pixel = image.blocks_per_pixel;
        model = m.serial;
        layer = l;
        head = h;
        max_side = side;
    }
    // The pairs [q0, q0 + rows) x [k0, k0 + cols) at token resolution.
    void update_region(const ViewModel& m, int64_t l, int64_t h, int64_t q0, int64_t k0, int64_t rows, int64_t cols) {
        if (region_model == m.serial && region_layer == l && region_head == h && region_q0 == q0 && region_k0 == k0 &&
            region_rows == rows && region_cols == cols) {
            return;
        }
        region.upload(mask_region_image(m.masks.at(l, h), q0, k0, rows, cols));
        region_model = m.serial;
        region_layer = l;
        region_head = h;
        region_q0 = q0;
        region_k0 = k0;
        region_rows = rows;
        region_cols = cols;
    }
    void release() {
        texture.release();
        region.release();
    }
};

inline double now_seconds() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

inline std::string percent(double f) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f%%", 100.0 * f);
    return buf;
}

// [SECTION] app state

// One script being edited (or compared): its text, the latest good model, the pending rebuild.
struct ScriptSlot {
    std::string text, name = "<editor>", path;
    ViewState state;
    double last_edit = -1;           // when the text last changed (seconds), -1: built
    std::future<ViewAttempt> job;    // the rebuild in flight
    std::string job_text;            // the text that job builds
    int64_t job_n = 0;

    bool busy() const { return job.valid(); }
};

struct App {
    ViewArgs args;
    ScriptSlot main, other;            // other: the compare view's second script
    int n_ui = 4096;                   // n chosen in the UI (clamped to kViewMaxN)
    ViewKind view = ViewKind::mask;
    bool select_tab = true;            // select `view`'s tab on the next frame
    std::vector<std::filesystem::path> examples;

    // mask view
    int layer = 0, head = 0;
    GridView grid;
    bool grid_fit = true;
    MaskTexture mask_tex, minimap_tex;
    Texture block_tex;
    int64_t block_tex_qb = -1, block_tex_kb = -1;
    uint64_t block_tex_model = 0;
    int64_t block_tex_layer = -1, block_tex_head = -1;
    std::map<std::pair<int64_t, int64_t>, dsl::PatternParts> parts;  // (layer, head) of parts_model
    uint64_t parts_model = 0;
    bool grid_drawn = false;           // the mask grid was drawn this frame (for the layout line)
    GridView grid_drawn_view;
    bool zoom_applied = false;         // --zoom/--center were applied to `grid`

    // overview
    std::map<std::pair<int64_t, int64_t>, MaskTexture> overview_tex;  // (layer, head) of overview_model
    std::vector<double> overview_density;                             // [layers * heads]
    uint64_t overview_model = 0;

    // receptive field view
    int64_t token = -1;
    int direction = 0;                 // 0 in, 1 out
    int shown_layer = 0;
    bool playing = false;
    double last_step = 0;
    std::shared_ptr<ReachGraph> graph;
    uint64_t graph_model = 0;
    TokenReach field;
    uint64_t field_model = 0;
    int64_t field_token = -1;
    int field_direction = -1;
    Texture cone_tex;

    // hops view
    Texture hops_tex;
    uint64_t hops_model = 0;

    // compare view
    int compare_mode = 0;              // 0 two scripts, 1 two heads
    int compare_head = 1;
    int compare_example = -1;
    MaskTexture compare_tex_a, compare_tex_b;
    std::map<int64_t, ReachCoverage> head_coverage;  // per head of head_coverage_model
    uint64_t head_coverage_model = 0;

    std::string status;                // one line at the bottom (errors of the UI itself)

    // --layout: what this frame drew (cleared at each frame's start)
    bool record_layout = false;
    Layout layout;
    const char* layout_view = "";      // the view being drawn, named in each rectangle
};

// [SECTION] layout recording (--layout, layout.hpp)

inline void layout_add(App& app, const char* kind, const std::string& text, ImVec2 a, ImVec2 b, ImVec2 clip0, ImVec2 clip1,
                       LayoutRect extra = {}) {
    if (!app.record_layout) return;
    extra.kind = kind;
    extra.text = text;
    extra.view = app.layout_view;
    extra.x0 = a.x, extra.y0 = a.y, extra.x1 = b.x, extra.y1 = b.y;
    extra.clip_x0 = clip0.x, extra.clip_y0 = clip0.y, extra.clip_x1 = clip1.x, extra.clip_y1 = clip1.y;
    app.layout.rects.push_back(std::move(extra));
}

// Draws `text` at `pos` and records it with the draw list's clip rectangle.
inline void text_at(App& app, ImDrawList* dl, ImVec2 pos, ImU32 color, const std::string& text, const char* kind) {
    dl->AddText(pos, color, text.c_str());
    ImVec2 size = ImGui::CalcTextSize(text.c_str());
    layout_add(app, kind, text, pos, ImVec2(pos.x + size.x, pos.y + size.y), dl->GetClipRectMin(), dl->GetClipRectMax());
}

// Records the last ImGui item (a widget, a line of text) with its window's clip rectangle.
inline void layout_item(App& app, const char* kind, const std::string& text) {
    if (!app.record_layout) return;
    const ImRect& clip = ImGui::GetCurrentWindow()->ClipRect;
    layout_add(app, kind, text, ImGui::GetItemRectMin(), ImGui::GetItemRectMax(), clip.Min, clip.Max);
}

// Puts the next item of width `width` on the same line when it fits in the window, else on the
// next line: rows of controls wrap in a narrow panel (the demo window) instead of being cut off.
inline void same_line_if_fits(float width) {
    float right = ImGui::GetWindowPos().x + ImGui::GetWindowContentRegionMax().x;
    float x = ImGui::GetItemRectMax().x + ImGui::GetStyle().ItemSpacing.x;
    if (x + width <= right) ImGui::SameLine();
}

// The width of a widget of `item_width` with `label` after it.
inline float labelled_width(float item_width, const char* label) {
    return item_width + ImGui::GetStyle().ItemInnerSpacing.x + ImGui::CalcTextSize(label, nullptr, true).x;
}

struct Curve {
    std::string label;
    std::vector<double> y;  // [points] at x = 0, 1, 2, ... in [0, 1]
    uint32_t color = 0x1F77B4FF;
};

// A dashed horizontal line at y with a label: a ceiling a curve cannot pass (causal limits).
struct PlotLimit {
    double y = 1;
    std::string label;
    uint32_t color = 0x1F77B4FF;
};

// Curves against layers, y in [0, 1] as a percentage, a dashed marker at `marker` (if >= 0),
// and dashed limits. The title wraps to the width.
void plot_curves(App& app, const char* id, const std::vector<Curve>& curves, double x_max, ImVec2 size, double marker = -1,
                 const char* title = nullptr, const std::vector<PlotLimit>& limits = {});
Curve coverage_curve(const ReachCoverage& c, std::string label, uint32_t color);

// Loads a script file into a slot and builds it (viewer.cpp, [SECTION] compiling).
void slot_open(ScriptSlot& slot, const std::string& path);

// The views (viewer_views.cpp), each drawn into the current ImGui window at `size`.
void draw_mask_view(App& app, ImVec2 size);
void draw_reach_view(App& app, ImVec2 size);
void draw_hops_view(App& app, ImVec2 size);
void draw_compare_view(App& app, ImVec2 size);
void draw_overview_view(App& app, ImVec2 size);  // viewer_overview.cpp

// The legend swatch of the mask view (a coloured square and a label).
void legend_swatch(uint32_t color, const char* label);

} // namespace sparsa::viz
