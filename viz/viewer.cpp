// sparsa-view: a script editor with live recompilation, and views of what the script compiles
// to (mask, receptive field, hops, compare, stats), drawn with Dear ImGui over OpenGL 3.
// Everything that can be computed without GL lives in the other viz/ files and is tested there;
// this file is windows, widgets, textures and the screenshot.
//
// Index
//   [SECTION] textures      Image -> GL texture
//   [SECTION] app state     the script, its latest model, what each view shows
//   [SECTION] compiling     debounced rebuilds on a worker thread
//   [SECTION] plots         coverage curves drawn with ImDrawList
//   [SECTION] editor        the text, diagnostics inline at their line, the stats panel
//   [SECTION] views         mask, receptive field, hops, compare, demo
//   [SECTION] main loop     window, frames, screenshot
#include "viz/viewer.hpp"

#include "dsl/pattern_parts.hpp"
#include "engine/atomic_file.hpp"
#include "engine/error.hpp"
#include "engine/reach_graph.hpp"
#include "engine/receptive_field.hpp"
#include "viz/grid_view.hpp"
#include "viz/image.hpp"
#include "viz/mask_image.hpp"
#include "viz/view_model.hpp"

#define GL_SILENCE_DEPRECATION
#include <GL/gl.h>
#include <GLFW/glfw3.h>
#include <imgui.h>
#include <imgui_internal.h>
#include <imgui_stdlib.h>
#include <backends/imgui_impl_glfw.h>
#include <backends/imgui_impl_opengl3.h>

#include <algorithm>
#include <cerrno>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace sparsa::viz {

namespace {

ImU32 to_imgui(uint32_t rgba) {  // 0xRRGGBBAA -> ImGui's ABGR
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

// A texture of one (model, layer, head) mask, rebuilt when any of them changes.
struct MaskTexture {
    Texture texture;
    uint64_t model = 0;  // ViewModel::serial
    int64_t layer = -1, head = -1;
    int64_t blocks_per_pixel = 1;

    void update(const ViewModel& m, int64_t l, int64_t h) {
        if (model == m.serial && layer == l && head == h) return;
        MaskImage image = mask_image_make(m.masks.at(l, h), 2048);
        texture.upload(image.image);
        blocks_per_pixel = image.blocks_per_pixel;
        model = m.serial;
        layer = l;
        head = h;
    }
};

double now_seconds() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

std::string read_text_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("cannot read '" + path + "': " + os_error_text(errno));
    std::ostringstream text;
    text << in.rdbuf();
    if (text.str().size() > dsl::kMaxScriptBytes) throw Error("'" + path + "' is larger than a script may be (1 MiB)");
    return text.str();
}

std::string percent(double f) {
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
};

// [SECTION] compiling

constexpr double kDebounceSeconds = 0.35;

void slot_start(ScriptSlot& slot, int64_t n) {
    slot.job_text = slot.text;
    slot.job_n = n;
    slot.last_edit = -1;
    slot.job = std::async(std::launch::async, view_model_build, slot.text, slot.name, slot.path, n);
}

// Starts a rebuild when the typing paused or n changed; collects finished ones.
void slot_poll(ScriptSlot& slot, int64_t n) {
    if (slot.busy() && slot.job.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
        view_state_apply(slot.state, slot.job.get());
        if (slot.text != slot.job_text && slot.last_edit < 0) slot.last_edit = now_seconds();
    }
    if (slot.busy()) return;
    bool typed = slot.last_edit >= 0 && now_seconds() - slot.last_edit >= kDebounceSeconds;
    bool resized = slot.last_edit < 0 && slot.job_n != n;
    if (typed || resized) slot_start(slot, n);
}

// Builds now and waits (the first build, and every build of the screenshot mode).
void slot_build_now(ScriptSlot& slot, int64_t n) {
    if (slot.busy()) view_state_apply(slot.state, slot.job.get());
    slot.job_text = slot.text;
    slot.job_n = n;
    view_state_apply(slot.state, view_model_build(slot.text, slot.name, slot.path, n));
    slot.last_edit = -1;
}

void slot_open(ScriptSlot& slot, const std::string& path) {
    slot.text = read_text_file(path);
    slot.path = path;
    slot.name = std::filesystem::path(path).filename().string();
    slot.last_edit = 0;  // build at once
}

// [SECTION] plots

struct Curve {
    std::string label;
    std::vector<double> y;  // [points] at x = 0, 1, 2, ... in [0, 1]
    uint32_t color = 0x1F77B4FF;
};

// Curves against layers, y in [0, 1] as a percentage, a dashed marker at `marker` (if >= 0).
void plot_curves(const char* id, const std::vector<Curve>& curves, double x_max, ImVec2 size, double marker = -1,
                 const char* title = nullptr) {
    ImGui::PushID(id);
    ImVec2 p0 = ImGui::GetCursorScreenPos();
    size.x = std::max(size.x, 120.0f);
    size.y = std::max(size.y, 90.0f);
    ImGui::InvisibleButton("plot", size);
    ImDrawList* dl = ImGui::GetWindowDrawList();
    const float left = 44, right = 10, top = title ? 20.0f : 8.0f, bottom = 22;
    ImVec2 a(p0.x + left, p0.y + top), b(p0.x + size.x - right, p0.y + size.y - bottom);
    dl->AddRectFilled(p0, ImVec2(p0.x + size.x, p0.y + size.y), IM_COL32(255, 255, 255, 255));
    dl->AddRect(a, b, IM_COL32(120, 120, 120, 255));
    if (title) dl->AddText(ImVec2(a.x, p0.y + 3), IM_COL32(30, 30, 30, 255), title);
    x_max = std::max(1.0, x_max);
    auto to_screen = [&](double x, double y) {
        return ImVec2(a.x + static_cast<float>(x / x_max) * (b.x - a.x), b.y - static_cast<float>(y) * (b.y - a.y));
    };
    for (int i = 0; i <= 4; ++i) {
        double y = i / 4.0;
        ImVec2 s = to_screen(0, y);
        dl->AddLine(ImVec2(a.x, s.y), ImVec2(b.x, s.y), IM_COL32(225, 225, 225, 255));
        char label[16];
        std::snprintf(label, sizeof label, "%d%%", i * 25);
        dl->AddText(ImVec2(p0.x + 4, s.y - 7), IM_COL32(60, 60, 60, 255), label);
    }
    int step = std::max(1, static_cast<int>(std::ceil(x_max / 8)));
    const float x_label_w = ImGui::CalcTextSize("layers").x;
    for (int x = 0; x <= static_cast<int>(x_max); x += step) {
        ImVec2 s = to_screen(x, 0);
        if (s.x > b.x - x_label_w - 12) break;  // leave room for the axis name
        char label[16];
        std::snprintf(label, sizeof label, "%d", x);
        dl->AddText(ImVec2(s.x - 3, b.y + 3), IM_COL32(60, 60, 60, 255), label);
    }
    dl->AddText(ImVec2(b.x - x_label_w, b.y + 3), IM_COL32(60, 60, 60, 255), "layers");
    if (marker >= 0) {
        ImVec2 s = to_screen(marker, 0);
        for (float y = a.y; y < b.y; y += 8) dl->AddLine(ImVec2(s.x, y), ImVec2(s.x, std::min(y + 4, b.y)), IM_COL32(90, 90, 90, 255));
    }
    float legend_y = a.y + 4, legend_w = 0;
    for (const Curve& c : curves) legend_w = std::max(legend_w, ImGui::CalcTextSize(c.label.c_str()).x);
    const float legend_x = std::max(a.x + 4, b.x - legend_w - 26);
    for (const Curve& c : curves) {
        for (size_t i = 1; i < c.y.size(); ++i) {
            dl->AddLine(to_screen(static_cast<double>(i - 1), c.y[i - 1]), to_screen(static_cast<double>(i), c.y[i]), to_imgui(c.color), 2.0f);
        }
        for (size_t i = 0; i < c.y.size(); ++i) dl->AddCircleFilled(to_screen(static_cast<double>(i), c.y[i]), 2.5f, to_imgui(c.color));
        if (!c.label.empty()) {
            dl->AddRectFilled(ImVec2(legend_x, legend_y + 4), ImVec2(legend_x + 12, legend_y + 10), to_imgui(c.color));
            dl->AddText(ImVec2(legend_x + 16, legend_y), IM_COL32(30, 30, 30, 255), c.label.c_str());
            legend_y += 15;
        }
    }
    if (ImGui::IsItemHovered()) {
        double x = (ImGui::GetIO().MousePos.x - a.x) / (b.x - a.x) * x_max;
        size_t i = static_cast<size_t>(std::clamp(std::lround(x), 0L, static_cast<long>(x_max)));
        std::string tip = "after layer " + std::to_string(i);
        for (const Curve& c : curves) {
            if (i < c.y.size()) tip += "\n" + (c.label.empty() ? std::string("coverage") : c.label) + ": " + percent(c.y[i]);
        }
        ImGui::SetTooltip("%s", tip.c_str());
    }
    ImGui::PopID();
}

Curve coverage_curve(const ReachCoverage& c, std::string label, uint32_t color) {
    Curve curve{std::move(label), {}, color};
    for (size_t l = 0; l < c.connected.size(); ++l) curve.y.push_back(c.fraction(static_cast<int64_t>(l)));
    return curve;
}

// [SECTION] editor

void draw_editor(App& app, ImVec2 size) {
    ScriptSlot& s = app.main;
    ImVec2 origin = ImGui::GetCursorScreenPos();
    if (ImGui::InputTextMultiline("##script", &s.text, size, ImGuiInputTextFlags_AllowTabInput)) {
        s.last_edit = now_seconds();
    }
    // Scroll of the editor's child window, to put the diagnostics at their lines.
    // The editor is a child window drawn over this one: draw into its list, at its scroll.
    ImVec2 scroll(0, 0);
    ImGuiWindow* window = ImGui::GetCurrentWindow();
    ImDrawList* dl = ImGui::GetWindowDrawList();
    ImVec2 clip0 = origin, clip1(origin.x + size.x, origin.y + size.y);
    if (!window->DC.ChildWindows.empty()) {
        ImGuiWindow* editor = window->DC.ChildWindows.back();
        scroll = editor->Scroll;
        dl = editor->DrawList;
        clip0 = editor->InnerClipRect.Min;
        clip1 = editor->InnerClipRect.Max;
    }
    const ImGuiStyle& style = ImGui::GetStyle();
    const float line_h = ImGui::GetTextLineHeight();
    const float char_w = ImGui::CalcTextSize("M").x;
    dl->PushClipRect(clip0, clip1, true);
    for (const dsl::Diagnostic& d : s.state.diagnostics) {
        if (!d.source || d.source->name != s.name || d.source->text != s.text) continue;  // other files, or stale text
        int line = d.line(), column = d.column();
        float y = origin.y + style.FramePadding.y + static_cast<float>(line - 1) * line_h - scroll.y;
        float x0 = origin.x + style.FramePadding.x + static_cast<float>(column - 1) * char_w - scroll.x;
        int span = std::max(1, static_cast<int>(d.end - d.begin));
        // The span: from begin to end of that line.
        size_t line_end = d.source->text.find('\n', static_cast<size_t>(d.begin));
        if (line_end != std::string::npos) span = std::min<int>(span, static_cast<int>(line_end) - d.begin);
        span = std::max(1, span);
        ImU32 color = d.severity == dsl::Severity::error ? IM_COL32(220, 40, 40, 255) : IM_COL32(200, 140, 0, 255);
        float x1 = x0 + static_cast<float>(span) * char_w;
        for (float x = x0; x < x1; x += 4) {  // a wavy underline
            dl->AddLine(ImVec2(x, y + line_h + 1), ImVec2(std::min(x + 2, x1), y + line_h - 1), color, 1.5f);
            dl->AddLine(ImVec2(x + 2, y + line_h - 1), ImVec2(std::min(x + 4, x1), y + line_h + 1), color, 1.5f);
        }
        // The message, after the end of the line's text.
        size_t line_start = d.source->text.rfind('\n', static_cast<size_t>(std::max(0, d.begin - 1)));
        line_start = line_start == std::string::npos || d.begin == 0 ? 0 : line_start + 1;
        size_t end = line_end == std::string::npos ? d.source->text.size() : line_end;
        float tx = origin.x + style.FramePadding.x + static_cast<float>(end - line_start + 3) * char_w - scroll.x;
        std::string msg = (d.severity == dsl::Severity::error ? "<- " : "<- warning: ") + d.message;
        ImVec2 ts = ImGui::CalcTextSize(msg.c_str());
        // Past the line's end when it fits; else just under the line, so the line stays readable.
        float ty = y;
        if (tx + ts.x > clip1.x) {
            ty = y + line_h + 2;
            tx = std::max(clip0.x + 2, std::min(x0, clip1.x - ts.x - 4));
        }
        dl->AddRectFilled(ImVec2(tx - 2, ty), ImVec2(tx + ts.x + 2, ty + line_h), IM_COL32(255, 235, 235, 230));
        dl->AddText(ImVec2(tx, ty), color, msg.c_str());
    }
    dl->PopClipRect();
}

void draw_diagnostics(const App& app) {
    const ScriptSlot& s = app.main;
    if (s.busy() || s.last_edit >= 0) {
        ImGui::TextDisabled("compiling...");
    } else if (!s.state.error.empty()) {
        ImGui::PushStyleColor(ImGuiCol_Text, IM_COL32(200, 30, 30, 255));
        ImGui::TextWrapped("%s", s.state.error.c_str());
        ImGui::PopStyleColor();
    } else if (s.state.diagnostics.empty() && s.state.model) {
        ImGui::TextColored(ImVec4(0.1f, 0.55f, 0.1f, 1), "compiled at n = %lld", static_cast<long long>(s.state.model->n));
    }
    for (const dsl::Diagnostic& d : s.state.diagnostics) {
        bool error = d.severity == dsl::Severity::error;
        ImGui::PushStyleColor(ImGuiCol_Text, error ? IM_COL32(200, 30, 30, 255) : IM_COL32(170, 110, 0, 255));
        ImGui::TextWrapped("%s", dsl::diagnostic_format(d).c_str());
        ImGui::PopStyleColor();
    }
    if (s.state.stale) ImGui::TextDisabled("(showing the last good mask until the script compiles)");
}

void draw_stats(const App& app) {
    const ViewModel* m = app.main.state.model.get();
    if (!m) {
        ImGui::TextDisabled("no mask yet");
        return;
    }
    const ViewStats& s = m->stats;
    const MaskSet& set = m->masks;
    if (ImGui::BeginTable("stats", 2, ImGuiTableFlags_RowBg | ImGuiTableFlags_BordersInnerV)) {
        auto row = [](const char* name, const std::string& value) {
            ImGui::TableNextRow();
            ImGui::TableSetColumnIndex(0);
            ImGui::TextUnformatted(name);
            ImGui::TableSetColumnIndex(1);
            ImGui::TextUnformatted(value.c_str());
        };
        row("n, block", std::to_string(set.n) + ", " + std::to_string(set.block));
        row("layers x heads", std::to_string(set.layers) + " x " + std::to_string(set.heads));
        row("density", percent(s.density));
        row("FLOPs saved vs dense", percent(s.flops_saved));
        row("kept blocks (full/partial)", std::to_string(s.kept_blocks) + " (" + std::to_string(s.full_blocks) + "/" +
                                              std::to_string(s.partial_blocks) + ")");
        std::string needed = s.layers_needed < 0 ? (m->coverage.stopped ? "more than " + std::to_string(m->coverage.connected.size() - 1)
                                                                          : std::string("never"))
                                                 : std::to_string(s.layers_needed);
        if (!m->coverage.connected.empty() && m->coverage.resolution == ReachResolution::block) needed += " (block res.)";
        row("layers to connect all", needed);
        row("coverage after layers", percent(m->coverage.fraction(set.layers)));
        row("empty rows", std::to_string(s.empty_rows));
        ImGui::EndTable();
    }
    if (s.layers_needed < 0 && !m->coverage.never_reason.empty()) ImGui::TextWrapped("never: %s", m->coverage.never_reason.c_str());
}

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

// [SECTION] main loop

void draw_menu(App& app) {
    if (!ImGui::BeginMenuBar()) return;
    if (ImGui::BeginMenu("Examples")) {
        if (app.examples.empty()) ImGui::TextDisabled("no examples/patterns/*.pat found");
        for (const auto& path : app.examples) {
            if (ImGui::MenuItem(path.filename().string().c_str())) {
                try {
                    slot_open(app.main, path.string());
                    app.grid_fit = true;
                } catch (const std::exception& e) {
                    app.status = e.what();
                }
            }
        }
        ImGui::EndMenu();
    }
    if (ImGui::BeginMenu("View")) {
        const ViewKind kinds[] = {ViewKind::mask, ViewKind::reach, ViewKind::hops, ViewKind::compare, ViewKind::demo};
        for (ViewKind k : kinds) {
            if (ImGui::MenuItem(k == ViewKind::demo ? "demo window (every view)" : view_kind_name(k), nullptr, app.view == k)) {
                app.view = k;
                app.select_tab = true;
            }
        }
        ImGui::EndMenu();
    }
    ImGui::SetNextItemWidth(120);
    if (ImGui::InputInt("n", &app.n_ui, 1024, 4096, ImGuiInputTextFlags_EnterReturnsTrue)) {
        app.n_ui = std::clamp(app.n_ui, 16, static_cast<int>(kViewMaxN));
    }
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("sequence length the viewer compiles at (16 to %lld)", static_cast<long long>(kViewMaxN));
    ImGui::TextDisabled("  %s", app.main.name.c_str());
    ImGui::EndMenuBar();
}

void draw_frame(App& app, int width, int height) {
    app.grid_drawn = false;
    ImGui::SetNextWindowPos(ImVec2(0, 0));
    ImGui::SetNextWindowSize(ImVec2(static_cast<float>(width), static_cast<float>(height)));
    ImGui::Begin("sparsa-view", nullptr,
                 ImGuiWindowFlags_NoDecoration | ImGuiWindowFlags_MenuBar | ImGuiWindowFlags_NoMove |
                     ImGuiWindowFlags_NoBringToFrontOnFocus | ImGuiWindowFlags_NoSavedSettings);
    draw_menu(app);
    const float left_w = std::clamp(static_cast<float>(width) * 0.32f, 300.0f, 480.0f);
    ImGui::BeginChild("left", ImVec2(left_w, 0), true);
    ImGui::TextUnformatted("script (recompiles as you type)");
    float editor_h = std::max(160.0f, ImGui::GetContentRegionAvail().y * 0.45f);
    draw_editor(app, ImVec2(-1, editor_h));
    ImGui::BeginChild("diagnostics", ImVec2(0, std::max(60.0f, ImGui::GetContentRegionAvail().y * 0.35f)), false);
    draw_diagnostics(app);
    ImGui::EndChild();
    ImGui::Separator();
    ImGui::TextUnformatted("stats");
    draw_stats(app);
    if (!app.status.empty()) ImGui::TextColored(ImVec4(0.8f, 0.1f, 0.1f, 1), "%s", app.status.c_str());
    ImGui::EndChild();
    ImGui::SameLine();
    ImGui::BeginChild("right", ImVec2(0, 0), false);
    if (app.view == ViewKind::demo) {
        ImVec2 avail = ImGui::GetContentRegionAvail();
        ImVec2 cell((avail.x - 8) / 2, (avail.y - 8) / 2);
        auto panel = [&](const char* id, const char* title, void (*draw)(App&, ImVec2)) {
            ImGui::BeginChild(id, cell, true);
            ImGui::TextUnformatted(title);
            draw(app, ImGui::GetContentRegionAvail());
            ImGui::EndChild();
        };
        panel("demo mask", "mask", draw_mask_view);
        ImGui::SameLine();
        panel("demo reach", "receptive field", draw_reach_view);
        panel("demo hops", "hops", draw_hops_view);
        ImGui::SameLine();
        panel("demo compare", "compare", draw_compare_view);
    } else if (ImGui::BeginTabBar("views")) {
        struct Tab { ViewKind kind; const char* label; void (*draw)(App&, ImVec2); };
        const Tab tabs[] = {{ViewKind::mask, "mask", draw_mask_view},
                            {ViewKind::reach, "receptive field", draw_reach_view},
                            {ViewKind::hops, "hops", draw_hops_view},
                            {ViewKind::compare, "compare", draw_compare_view}};
        for (const Tab& tab : tabs) {
            ImGuiTabItemFlags flags = app.select_tab && app.view == tab.kind ? ImGuiTabItemFlags_SetSelected : 0;
            if (ImGui::BeginTabItem(tab.label, nullptr, flags)) {
                if (!app.select_tab) app.view = tab.kind;
                tab.draw(app, ImGui::GetContentRegionAvail());
                ImGui::EndTabItem();
            }
        }
        app.select_tab = false;
        ImGui::EndTabBar();
    }
    ImGui::EndChild();
    ImGui::End();
}

std::vector<std::filesystem::path> find_examples() {
    std::vector<std::filesystem::path> out;
    for (const char* dir : {"examples/patterns", SPARSA_EXAMPLES_DIR}) {
        std::error_code ec;
        if (!std::filesystem::is_directory(dir, ec)) continue;
        for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
            if (entry.path().extension() == ".pat") out.push_back(entry.path());
        }
        if (!out.empty()) break;
    }
    std::sort(out.begin(), out.end());
    return out;
}

// Reads the back buffer (bottom row first) into an image, top row first.
Image read_framebuffer(int width, int height) {
    Image image = image_make(width, height, 0x000000FF);
    std::vector<uint8_t> rows(static_cast<size_t>(width) * height * 4);
    glPixelStorei(GL_PACK_ALIGNMENT, 1);
    glReadBuffer(GL_BACK);
    glReadPixels(0, 0, width, height, GL_RGBA, GL_UNSIGNED_BYTE, rows.data());
    const size_t stride = static_cast<size_t>(width) * 4;
    for (int y = 0; y < height; ++y) {
        std::copy_n(rows.data() + static_cast<size_t>(height - 1 - y) * stride, stride, image.rgba.data() + static_cast<size_t>(y) * stride);
    }
    for (size_t i = 3; i < image.rgba.size(); i += 4) image.rgba[i] = 255;  // an opaque picture
    return image;
}

void glfw_error(int code, const char* description) { std::fprintf(stderr, "sparsa-view: GLFW error %d: %s\n", code, description); }

} // namespace

int viewer_run(const ViewArgs& args) {
    App app;
    app.args = args;
    app.view = args.view;
    app.n_ui = static_cast<int>(args.n);
    app.layer = static_cast<int>(args.layer);
    app.head = static_cast<int>(args.head);
    app.token = args.token;
    app.examples = find_examples();
    const bool screenshot = !args.screenshot.empty();
    if (!args.file.empty()) slot_open(app.main, args.file);  // a missing file is an error before any window
    if (!args.compare_file.empty()) slot_open(app.other, args.compare_file);
    if (args.compare_head >= 0) {
        app.compare_mode = 1;
        app.compare_head = static_cast<int>(args.compare_head);
    }
    if (args.file.empty()) {
        app.main.text = "# A pattern script: edit it and the views follow.\nblock 64\nheads 4\nlayers 6\n\n"
                        "attend = window(256) | global(first(64))\n";
        app.main.last_edit = 0;
    }
    if (app.other.text.empty() && !app.examples.empty() && app.compare_mode == 0) {
        for (size_t i = 0; i < app.examples.size(); ++i) {
            // BigBird beside the script, or Longformer beside BigBird.
            const char* second = app.main.name == "bigbird.pat" ? "longformer.pat" : "bigbird.pat";
            if (app.examples[i].filename() == second) {
                app.compare_example = static_cast<int>(i);
                slot_open(app.other, app.examples[i].string());
            }
        }
    }

    // The first builds happen before the window opens: a screenshot shows a finished model.
    slot_build_now(app.main, app.n_ui);
    if (!args.edit_file.empty()) {
        app.main.text = read_text_file(args.edit_file);
        slot_build_now(app.main, app.n_ui);
        if (app.main.state.stale) std::printf("sparsa-view: the edit does not compile; showing the last good mask\n");
        for (const auto& d : app.main.state.diagnostics) std::fputs(dsl::diagnostic_format(d).c_str(), stdout);
    }
    if (!app.other.text.empty()) slot_build_now(app.other, app.n_ui);
    if (screenshot && !app.main.state.model) {  // fail before any window: nothing to show
        std::fprintf(stderr, "sparsa-view: %s did not compile; no screenshot written\n", app.main.name.c_str());
        for (const auto& d : app.main.state.diagnostics) std::fputs(dsl::diagnostic_format(d).c_str(), stderr);
        if (!app.main.state.error.empty()) std::fprintf(stderr, "%s\n", app.main.state.error.c_str());
        return 1;
    }
    if (screenshot && app.main.state.model) {
        const ViewModel& m = *app.main.state.model;
        if (args.layer >= m.masks.layers || args.head >= m.masks.heads) {
            throw Error("--layer " + std::to_string(args.layer) + " --head " + std::to_string(args.head) + " is outside " +
                        app.main.name + "'s " + std::to_string(m.masks.layers) + " layers and " + std::to_string(m.masks.heads) + " heads");
        }
        app.shown_layer = static_cast<int>(m.masks.layers);
    }

    glfwSetErrorCallback(glfw_error);
    if (!glfwInit()) throw Error("cannot start GLFW: no display? (set DISPLAY, or run under `xvfb-run -a`)");
    glfwWindowHint(GLFW_CONTEXT_VERSION_MAJOR, 3);
    glfwWindowHint(GLFW_CONTEXT_VERSION_MINOR, 3);
    glfwWindowHint(GLFW_OPENGL_PROFILE, GLFW_OPENGL_CORE_PROFILE);
    glfwWindowHint(GLFW_RESIZABLE, screenshot ? GLFW_FALSE : GLFW_TRUE);
    GLFWwindow* window = glfwCreateWindow(args.width, args.height, "sparsa-view", nullptr, nullptr);
    if (window == nullptr) {
        glfwTerminate();
        throw Error("cannot open an OpenGL 3.3 window (under Xvfb, use Mesa's software GL: LIBGL_ALWAYS_SOFTWARE=1)");
    }
    glfwMakeContextCurrent(window);
    glfwSwapInterval(screenshot ? 0 : 1);
    IMGUI_CHECKVERSION();
    ImGui::CreateContext();
    ImGui::GetIO().IniFilename = nullptr;  // no imgui.ini beside the user's files
    ImGui::StyleColorsLight();
    ImGui_ImplGlfw_InitForOpenGL(window, true);
    ImGui_ImplOpenGL3_Init("#version 330");

    int exit_code = 0;
    {
        App& a = app;  // textures live in app and die before the GL context below
        int frame = 0;
        while (!glfwWindowShouldClose(window)) {
            glfwPollEvents();
            if (!screenshot) {
                slot_poll(a.main, a.n_ui);
                if (!a.other.text.empty()) slot_poll(a.other, a.n_ui);
            } else if (a.other.last_edit >= 0 || a.main.last_edit >= 0) {
                slot_build_now(a.main, a.n_ui);
                if (!a.other.text.empty()) slot_build_now(a.other, a.n_ui);
            }
            ImGui_ImplOpenGL3_NewFrame();
            ImGui_ImplGlfw_NewFrame();
            if (screenshot) {
                // The real pointer stays out of screenshots; --hover places one over a pair.
                ImGuiIO& io = ImGui::GetIO();
                io.MousePos = ImVec2(-FLT_MAX, -FLT_MAX);
                if (args.hover_q >= 0 && a.grid_drawn) {
                    auto [x, y] = grid_pair_corner(a.grid_drawn_view, args.hover_q, args.hover_k);
                    double half = a.grid_drawn_view.scale / 2;
                    io.MousePos = ImVec2(static_cast<float>(x + half), static_cast<float>(y + half));
                }
            }
            ImGui::NewFrame();
            int fb_w = 0, fb_h = 0;
            glfwGetFramebufferSize(window, &fb_w, &fb_h);
            try {
                draw_frame(a, fb_w, fb_h);
            } catch (const std::exception& e) {  // never crash on what a script leads to
                a.status = e.what();
                ImGui::ErrorCheckEndFrameRecover(nullptr);  // close what the throw left open
            }
            ImGui::Render();
            glViewport(0, 0, fb_w, fb_h);
            glClearColor(0.95f, 0.95f, 0.95f, 1);
            glClear(GL_COLOR_BUFFER_BIT);
            ImGui_ImplOpenGL3_RenderDrawData(ImGui::GetDrawData());
            ++frame;
            if (screenshot && frame >= args.frames) {
                if (!a.status.empty()) std::fprintf(stderr, "sparsa-view: %s\n", a.status.c_str());
                if (!a.main.state.model) {  // nothing to show: no image
                    std::fprintf(stderr, "sparsa-view: %s did not compile; no screenshot written\n", a.main.name.c_str());
                    for (const auto& d : a.main.state.diagnostics) std::fputs(dsl::diagnostic_format(d).c_str(), stderr);
                    if (!a.main.state.error.empty()) std::fprintf(stderr, "%s\n", a.main.state.error.c_str());
                    exit_code = 1;
                    break;
                }
                try {
                    image_png_save(read_framebuffer(fb_w, fb_h), args.screenshot);
                    std::printf("sparsa-view: wrote %s (%d x %d, view %s)\n", args.screenshot.c_str(), fb_w, fb_h, view_kind_name(a.view));
                    if (a.grid_drawn) {
                        const ViewModel& m = *a.main.state.model;
                        std::printf("sparsa-view: mask grid origin %.3f %.3f scale %.9f n %lld block %d layer %d head %d\n",
                                    a.grid_drawn_view.origin_x, a.grid_drawn_view.origin_y, a.grid_drawn_view.scale,
                                    static_cast<long long>(m.n), m.masks.block, a.layer, a.head);
                    }
                } catch (const std::exception& e) {
                    std::fprintf(stderr, "sparsa-view: %s\n", e.what());
                    exit_code = 1;
                }
                break;
            }
            glfwSwapBuffers(window);
        }
        if (a.main.busy()) a.main.job.wait();
        if (a.other.busy()) a.other.job.wait();
    }
    // Release GL objects while the context is alive.
    for (Texture* t : {&app.mask_tex.texture, &app.minimap_tex.texture, &app.block_tex, &app.cone_tex, &app.hops_tex,
                       &app.compare_tex_a.texture, &app.compare_tex_b.texture}) {
        t->release();
    }
    ImGui_ImplOpenGL3_Shutdown();
    ImGui_ImplGlfw_Shutdown();
    ImGui::DestroyContext();
    glfwDestroyWindow(window);
    glfwTerminate();
    return exit_code;
}

} // namespace sparsa::viz
