// sparsa-view: a script editor with live recompilation, and views of what the script compiles
// to (mask, receptive field, hops, compare, stats), drawn with Dear ImGui over OpenGL 3.
// Everything that can be computed without GL lives in the other viz/ files and is tested there;
// this file is windows, widgets, textures and the screenshot.
//
// Index
//   (textures and the app state are in viewer_app.hpp)
//   [SECTION] compiling     debounced rebuilds on a worker thread
//   [SECTION] plots         coverage curves drawn with ImDrawList
//   [SECTION] editor        the text, diagnostics inline at their line, the stats panel
//   (the views, mask, receptive field, hops and compare, are in viewer_views.cpp)
//   [SECTION] main loop     window, frames, screenshot
#include "viz/viewer.hpp"
#include "viz/viewer_app.hpp"

#include "dsl/pattern_parts.hpp"
#include "io/atomic_file.hpp"
#include "engine/error.hpp"
#include "analysis/reach_graph.hpp"
#include "analysis/receptive_field.hpp"
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
    slot.text = dsl::script_file_read(path);
    slot.path = path;
    slot.name = std::filesystem::path(path).filename().string();
    slot.last_edit = 0;  // build at once
}

// [SECTION] plots

void plot_curves(App& app, const char* id, const std::vector<Curve>& curves, double x_max, ImVec2 size, double marker,
                 const char* title, const std::vector<PlotLimit>& limits) {
    ImGui::PushID(id);
    ImVec2 p0 = ImGui::GetCursorScreenPos();
    size.x = std::max(size.x, 120.0f);
    size.y = std::max(size.y, 90.0f);
    ImGui::InvisibleButton("plot", size);
    ImDrawList* dl = ImGui::GetWindowDrawList();
    const float line_h = ImGui::GetTextLineHeight();
    // The title wraps to the plot's width; the left margin fits "100%", the bottom the layer numbers.
    const float wrap = size.x - 8;
    const float title_h = title ? ImGui::CalcTextSize(title, nullptr, false, wrap).y + 6 : 8.0f;
    const float left = ImGui::CalcTextSize("100%").x + 10, right = 10, top = title_h, bottom = line_h + 8;
    ImVec2 a(p0.x + left, p0.y + top), b(p0.x + size.x - right, p0.y + size.y - bottom);
    dl->AddRectFilled(p0, ImVec2(p0.x + size.x, p0.y + size.y), IM_COL32(255, 255, 255, 255));
    dl->AddRect(a, b, IM_COL32(120, 120, 120, 255));
    if (title) {
        dl->AddText(ImGui::GetFont(), ImGui::GetFontSize(), ImVec2(p0.x + 4, p0.y + 3), IM_COL32(30, 30, 30, 255), title, nullptr, wrap);
        ImVec2 ts = ImGui::CalcTextSize(title, nullptr, false, wrap);
        layout_add(app, "plot_title", title, ImVec2(p0.x + 4, p0.y + 3), ImVec2(p0.x + 4 + ts.x, p0.y + 3 + ts.y), dl->GetClipRectMin(),
                   dl->GetClipRectMax());
    }
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
        text_at(app, dl, ImVec2(a.x - 4 - ImGui::CalcTextSize(label).x, s.y - line_h / 2), IM_COL32(60, 60, 60, 255), label, "plot_tick");
    }
    // Layer numbers far enough apart for the widest of them, and clear of the axis name.
    const float x_label_w = ImGui::CalcTextSize("layers").x;
    const float number_w = ImGui::CalcTextSize(std::to_string(static_cast<int>(x_max)).c_str()).x;
    int step = 1;
    while (static_cast<float>(step) / static_cast<float>(x_max) * (b.x - a.x) < number_w + 8) {
        int lead = step;  // 1, 2, 5, 10, 20, 50, ...
        while (lead >= 10) lead /= 10;
        step = lead == 2 ? step * 5 / 2 : step * 2;
    }
    for (int x = 0; x <= static_cast<int>(x_max); x += step) {
        ImVec2 s = to_screen(x, 0);
        char label[16];
        std::snprintf(label, sizeof label, "%d", x);
        float w = ImGui::CalcTextSize(label).x;
        if (s.x + w / 2 > b.x - x_label_w - 6) break;  // leave room for the axis name
        text_at(app, dl, ImVec2(s.x - w / 2, b.y + 3), IM_COL32(60, 60, 60, 255), label, "plot_tick");
    }
    text_at(app, dl, ImVec2(b.x - x_label_w, b.y + 3), IM_COL32(60, 60, 60, 255), "layers", "plot_tick");
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
            text_at(app, dl, ImVec2(legend_x + 16, legend_y), IM_COL32(30, 30, 30, 255), c.label, "plot_legend");
            legend_y += line_h + 2;
        }
    }
    for (const PlotLimit& limit : limits) {  // over the curves: its label stays readable
        ImVec2 s = to_screen(0, limit.y);
        for (float x = a.x; x < b.x; x += 10) dl->AddLine(ImVec2(x, s.y), ImVec2(std::min(x + 5, b.x), s.y), to_imgui(limit.color), 1.5f);
        // The label, shortened to fit the plot (the tooltip has it whole).
        std::string label = limit.label;
        if (ImGui::CalcTextSize(label.c_str()).x > b.x - a.x - 12) label = "causal limit";
        if (ImGui::CalcTextSize(label.c_str()).x > b.x - a.x - 12) continue;
        ImVec2 ts = ImGui::CalcTextSize(label.c_str());
        // Above the line when there is room, else below it; at the left, clear of the legend.
        float ty = s.y - ts.y - 2 < a.y + 2 ? s.y + 2 : s.y - ts.y - 2;
        dl->AddRectFilled(ImVec2(a.x + 4, ty), ImVec2(a.x + 8 + ts.x, ty + ts.y), IM_COL32(255, 255, 255, 220));
        text_at(app, dl, ImVec2(a.x + 6, ty), to_imgui(limit.color), label, "plot_limit");
    }
    if (ImGui::IsItemHovered()) {
        double x = (ImGui::GetIO().MousePos.x - a.x) / (b.x - a.x) * x_max;
        size_t i = static_cast<size_t>(std::clamp(std::lround(x), 0L, static_cast<long>(x_max)));
        std::string tip = "after layer " + std::to_string(i);
        for (const Curve& c : curves) {
            if (i < c.y.size()) tip += "\n" + (c.label.empty() ? std::string("coverage") : c.label) + ": " + percent(c.y[i]);
        }
        for (const PlotLimit& limit : limits) tip += "\n" + limit.label;
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

// The inline diagnostic's background, opaque so that tests can find it in screenshots.
constexpr uint32_t kColorErrorBack = 0xFFEBEBFF;
constexpr uint32_t kColorWarningBack = 0xFFF3D6FF;

void draw_editor(App& app, ImVec2 size) {
    ScriptSlot& s = app.main;
    app.layout_view = "editor";
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
    auto line_y = [&](int line) { return origin.y + style.FramePadding.y + static_cast<float>(line - 1) * line_h - scroll.y; };
    auto column_x = [&](size_t column0) { return origin.x + style.FramePadding.x + static_cast<float>(column0) * char_w - scroll.x; };
    // Where each line's text ends (columns, from 0), and, for --layout, the visible code of each line.
    std::vector<size_t> line_length;
    for (size_t start = 0;;) {
        size_t end = s.text.find('\n', start);
        size_t stop = end == std::string::npos ? s.text.size() : end;
        line_length.push_back(stop - start);
        size_t first = s.text.find_first_not_of(" \t", start);
        if (app.record_layout && first != std::string::npos && first < stop) {
            int line = static_cast<int>(line_length.size());
            ImVec2 a(std::max(clip0.x, column_x(first - start)), std::max(clip0.y, line_y(line)));
            ImVec2 b(std::min(clip1.x, column_x(stop - start)), std::min(clip1.y, line_y(line) + line_h));
            LayoutRect extra;
            extra.line = line;
            if (a.x < b.x && a.y < b.y) layout_add(app, "code_line", s.text.substr(start, stop - start), a, b, clip0, clip1, extra);
        }
        if (end == std::string::npos) break;
        start = end + 1;
    }
    // Each diagnostic: a wavy underline under its span, and its message at the end of its own
    // line, cut to the editor's width (the whole message is in the tooltip and the list below).
    // Never below the line: two diagnostics on consecutive lines would cover the next line's code.
    std::map<int, float> line_next_x;  // where the next message on a line may start
    dl->PushClipRect(clip0, clip1, true);
    for (const dsl::Diagnostic& d : s.state.diagnostics) {
        if (!d.source || d.source->name != s.name || d.source->text != s.text) continue;  // other files, or stale text
        int line = d.line(), column = d.column();
        float y = line_y(line);
        float x0 = column_x(static_cast<size_t>(column - 1));
        int span = std::max(1, static_cast<int>(d.end - d.begin));
        // The span: from begin to end of that line.
        size_t line_end = d.source->text.find('\n', static_cast<size_t>(d.begin));
        if (line_end != std::string::npos) span = std::min<int>(span, static_cast<int>(line_end) - d.begin);
        span = std::max(1, span);
        const bool error = d.severity == dsl::Severity::error;
        ImU32 color = error ? IM_COL32(220, 40, 40, 255) : IM_COL32(200, 140, 0, 255);
        float x1 = x0 + static_cast<float>(span) * char_w;
        for (float x = x0; x < x1; x += 4) {  // a wavy underline
            dl->AddLine(ImVec2(x, y + line_h + 1), ImVec2(std::min(x + 2, x1), y + line_h - 1), color, 1.5f);
            dl->AddLine(ImVec2(x + 2, y + line_h - 1), ImVec2(std::min(x + 4, x1), y + line_h + 1), color, 1.5f);
        }
        std::string tip = dsl::diagnostic_format(d);
        if (ImGui::IsMouseHoveringRect(ImVec2(x0, y), ImVec2(x1, y + line_h + 2))) ImGui::SetTooltip("%s", tip.c_str());
        const size_t length = static_cast<size_t>(line - 1) < line_length.size() ? line_length[static_cast<size_t>(line - 1)] : 0;
        float tx = std::max(column_x(length + 3), line_next_x.count(line) ? line_next_x[line] : 0.0f);
        tx = std::max(tx, clip0.x + 2);
        const float room = clip1.x - 4 - tx;
        const size_t fit = room > 0 ? static_cast<size_t>(room / char_w) : 0;
        std::string msg = (error ? "<- " : "<- warning: ") + d.message;
        if (fit < 6) continue;  // no room on the line: the list below and the tooltip say it
        if (msg.size() > fit) msg = msg.substr(0, fit - 3) + "...";
        ImVec2 ts = ImGui::CalcTextSize(msg.c_str());
        ImVec2 r0(tx - 2, y), r1(tx + ts.x + 2, y + line_h);
        dl->AddRectFilled(r0, r1, to_imgui(error ? kColorErrorBack : kColorWarningBack));
        dl->AddText(ImVec2(tx, y), color, msg.c_str());
        line_next_x[line] = r1.x + 2 * char_w;
        if (ImGui::IsMouseHoveringRect(r0, r1)) ImGui::SetTooltip("%s", tip.c_str());
        if (r1.y > clip0.y && r0.y < clip1.y) {
            LayoutRect extra;
            extra.line = line;
            layout_add(app, "diagnostic", msg, r0, r1, clip0, clip1, extra);
        }
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
        row("kept (full/partial)", std::to_string(s.kept_blocks) + " (" + std::to_string(s.full_blocks) + "/" +
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
        const ViewKind kinds[] = {ViewKind::mask, ViewKind::reach, ViewKind::hops, ViewKind::compare, ViewKind::overview, ViewKind::demo};
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
    app.layout.rects.clear();
    app.layout.width = width;
    app.layout.height = height;
    ImGui::SetNextWindowPos(ImVec2(0, 0));
    ImGui::SetNextWindowSize(ImVec2(static_cast<float>(width), static_cast<float>(height)));
    ImGui::Begin("sparsa-view", nullptr,
                 ImGuiWindowFlags_NoDecoration | ImGuiWindowFlags_MenuBar | ImGuiWindowFlags_NoMove |
                     ImGuiWindowFlags_NoBringToFrontOnFocus | ImGuiWindowFlags_NoSavedSettings);
    draw_menu(app);
    // The demo window gives the views more room: five of them share the right side.
    const float left_w = std::clamp(static_cast<float>(width) * (app.view == ViewKind::demo ? 0.25f : 0.32f), 300.0f, 480.0f);
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
        // Every view at once: the three square pictures above, the two wide views below.
        ImVec2 avail = ImGui::GetContentRegionAvail();
        const float gap = ImGui::GetStyle().ItemSpacing.x;
        const float top_h = std::floor((avail.y - gap) * 0.47f), bottom_h = avail.y - gap - top_h;
        const float third = std::floor((avail.x - 2 * gap) / 3), half = std::floor((avail.x - gap) / 2);
        auto panel = [&](const char* id, const char* title, void (*draw)(App&, ImVec2), ImVec2 cell) {
            ImGui::BeginChild(id, cell, true);
            app.layout_view = title;
            ImGui::TextUnformatted(title);
            layout_item(app, "panel_title", title);
            draw(app, ImGui::GetContentRegionAvail());
            ImGui::EndChild();
        };
        panel("demo mask", "mask", draw_mask_view, ImVec2(third, top_h));
        ImGui::SameLine();
        panel("demo overview", "overview", draw_overview_view, ImVec2(third, top_h));
        ImGui::SameLine();
        panel("demo hops", "hops", draw_hops_view, ImVec2(avail.x - 2 * third - 2 * gap, top_h));
        panel("demo reach", "receptive field", draw_reach_view, ImVec2(half, bottom_h));
        ImGui::SameLine();
        panel("demo compare", "compare", draw_compare_view, ImVec2(avail.x - half - gap, bottom_h));
    } else if (ImGui::BeginTabBar("views")) {
        struct Tab { ViewKind kind; const char* label; void (*draw)(App&, ImVec2); };
        const Tab tabs[] = {{ViewKind::mask, "mask", draw_mask_view},
                            {ViewKind::reach, "receptive field", draw_reach_view},
                            {ViewKind::hops, "hops", draw_hops_view},
                            {ViewKind::compare, "compare", draw_compare_view},
                            {ViewKind::overview, "overview", draw_overview_view}};
        for (const Tab& tab : tabs) {
            ImGuiTabItemFlags flags = app.select_tab && app.view == tab.kind ? ImGuiTabItemFlags_SetSelected : 0;
            if (ImGui::BeginTabItem(tab.label, nullptr, flags)) {
                if (!app.select_tab) app.view = tab.kind;
                app.layout_view = view_kind_name(tab.kind);
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

int viewer_run(const ViewArgs& args) {
    App app;
    app.args = args;
    app.view = args.view;
    app.n_ui = static_cast<int>(args.n);
    app.layer = static_cast<int>(args.layer);
    app.head = static_cast<int>(args.head);
    app.token = args.token;
    app.examples = find_examples();
    app.record_layout = !args.layout.empty();
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
        app.main.text = dsl::script_file_read(args.edit_file);
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
                    if (!args.layout.empty()) {
                        layout_save(a.layout, args.layout);
                        std::printf("sparsa-view: wrote %s (%zu rectangles)\n", args.layout.c_str(), a.layout.rects.size());
                    }
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
    for (Texture* t : {&app.block_tex, &app.cone_tex, &app.hops_tex}) t->release();
    for (MaskTexture* t : {&app.mask_tex, &app.minimap_tex, &app.compare_tex_a, &app.compare_tex_b}) t->release();
    for (auto& [key, t] : app.overview_tex) t.release();
    ImGui_ImplOpenGL3_Shutdown();
    ImGui_ImplGlfw_Shutdown();
    ImGui::DestroyContext();
    glfwDestroyWindow(window);
    glfwTerminate();
    return exit_code;
}

} // namespace sparsa::viz
