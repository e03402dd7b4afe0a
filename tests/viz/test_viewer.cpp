// sparsa-view end to end: open example scripts under Xvfb (xvfb-run -a, Mesa's software OpenGL),
// take screenshots, and check them: not blank, and the mask view's pixels at every block centre
// in the colour the independently compiled mask says (full, partial, background); with the
// layout file (--layout) the pixels inside the rectangles of axis labels, legends, diagnostics
// and overview cells, that no diagnostic covers code and nothing is clipped; at a zoom
// (--zoom, --center) every visible pair against the mask. Also the command line's errors, which
// need no display. Without xvfb-run these tests FAIL: CI installs it
// (scripts/setup.sh --tests), and a viewer test that cannot run must not pass.
#include "dsl/script.hpp"
#include "viz/image.hpp"
#include "viz/layout.hpp"
#include "viz/mask_image.hpp"

#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <unistd.h>

using namespace sparsa;
using namespace sparsa::viz;

namespace {

const std::string kExamples = SPARSA_SOURCE_DIR "/examples/patterns/";

std::string temp_path(const std::string& name) {
    return (std::filesystem::temp_directory_path() / ("sparsa_viewer_" + std::to_string(getpid()) + "_" + name)).string();
}

std::string find_xvfb_run() {
    const char* path = std::getenv("PATH");
    std::stringstream dirs(path ? path : "/usr/bin:/bin");
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
        std::string candidate = dir + "/xvfb-run";
        if (access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    return "";
}

struct Run {
    int rc = -1;
    std::string out;  // stdout and stderr together
};

// Runs sparsa-view with `args` (shell words, already quoted), under xvfb-run when `display`.
Run run_viewer(const std::string& args, bool display = true) {
    std::string prefix;
    if (display) {
        std::string xvfb = find_xvfb_run();
        if (xvfb.empty()) {
            FAIL("xvfb-run not found on PATH: install Debian's xvfb, xauth and libgl1-mesa-dri "
                 "(scripts/setup.sh --tests does)");
        }
        prefix = "LIBGL_ALWAYS_SOFTWARE=1 " + xvfb + " -a -s '-screen 0 1600x1000x24' ";
    }
    std::string log = temp_path("log.txt");
    std::string command = prefix + "'" SPARSA_VIEW_EXE "' " + args + " > '" + log + "' 2>&1";
    Run run;
    // `xvfb-run -a` can race another test for a display number (ctest -j): then retry.
    for (int attempt = 0; attempt < 4; ++attempt) {
        int status = std::system(command.c_str());
        run.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        std::ifstream in(log);
        std::ostringstream s;
        s << in.rdbuf();
        run.out = s.str();
        if (run.out.find("Xvfb failed to start") == std::string::npos) break;
        usleep(200000 * (attempt + 1));
    }
    std::filesystem::remove(log);
    return run;
}

// "sparsa-view: mask grid origin X Y scale S n N block B layer L head H"
struct GridLine {
    double x = 0, y = 0, scale = 0;
    long long n = 0;
    int block = 0, layer = 0, head = 0;
};
bool parse_grid(const std::string& out, GridLine& g) {
    size_t at = out.find("mask grid origin ");
    if (at == std::string::npos) return false;
    return std::sscanf(out.c_str() + at, "mask grid origin %lf %lf scale %lf n %lld block %d layer %d head %d", &g.x, &g.y,
                       &g.scale, &g.n, &g.block, &g.layer, &g.head) == 7;
}

// Not blank: many colours, and no single colour covering almost everything.
void check_not_blank(const Image& image) {
    std::map<uint32_t, int64_t> counts;
    for (int y = 0; y < image.height; ++y) {
        for (int x = 0; x < image.width; ++x) ++counts[image.pixel(x, y)];
    }
    int64_t most = 0;
    for (const auto& [color, count] : counts) most = std::max(most, count);
    INFO("distinct colours " << counts.size() << ", most common covers " << most << " of " << int64_t{image.width} * image.height);
    CHECK(counts.size() >= 16);
    CHECK(most < int64_t{image.width} * image.height * 9 / 10);
}

// The screenshot's mask grid against the compiled mask: the pixel at the centre of every block
// has the colour of the block's kind. Returns how many blocks of each kind were checked.
std::array<int64_t, 3> check_mask_pixels(const Image& image, const GridLine& g, const BlockMask& mask) {
    REQUIRE(g.n == mask.n);
    REQUIRE(g.block == mask.block);
    std::array<int64_t, 3> kinds{0, 0, 0};
    int64_t wrong = 0;
    for (int64_t qb = 0; qb < mask.q_blocks(); ++qb) {
        std::vector<int> kind(static_cast<size_t>(mask.k_blocks()), 0);
        for (int64_t i = mask.row_ptr[qb]; i < mask.row_ptr[qb + 1]; ++i) kind[static_cast<size_t>(mask.col_idx[i])] = mask.partial_idx[i] < 0 ? 1 : 2;
        for (int64_t kb = 0; kb < mask.k_blocks(); ++kb) {
            double q = std::min<double>(static_cast<double>(qb * mask.block) + mask.block / 2.0, static_cast<double>(mask.n) - 0.5);
            double k = std::min<double>(static_cast<double>(kb * mask.block) + mask.block / 2.0, static_cast<double>(mask.n) - 0.5);
            int x = static_cast<int>(g.x + k * g.scale), y = static_cast<int>(g.y + q * g.scale);
            REQUIRE((x >= 0 && y >= 0 && x < image.width && y < image.height));
            int kd = kind[static_cast<size_t>(kb)];
            uint32_t expect = kd == 0 ? kColorBackground : kd == 1 ? kColorFull : kColorPartial;
            if (image.pixel(x, y) != expect) {
                if (wrong < 5) UNSCOPED_INFO("block (" << qb << ", " << kb << ") at pixel (" << x << ", " << y << ") is " << std::hex << image.pixel(x, y) << ", expected " << expect << std::dec);
                ++wrong;
            }
            ++kinds[static_cast<size_t>(kd)];
        }
    }
    CHECK(wrong == 0);
    return kinds;
}

MaskSet compile_example(const std::string& name, int64_t n) {
    dsl::CompileOptions options;
    options.n = n;
    return dsl::script_compile(*dsl::script_load(kExamples + name), options).masks;
}

// Opens `name` in the mask view at n, takes a screenshot and checks it against the mask.
std::array<int64_t, 3> check_example_mask(const std::string& name, int64_t n, int layer, int head) {
    std::string png = temp_path(name + ".png");
    Run run = run_viewer("'" + kExamples + name + "' --n " + std::to_string(n) + " --layer " + std::to_string(layer) +
                         " --head " + std::to_string(head) + " --view mask --screenshot '" + png + "' --frames 3");
    INFO(run.out);
    REQUIRE(run.rc == 0);
    GridLine g;
    REQUIRE(parse_grid(run.out, g));
    CHECK(g.layer == layer);
    CHECK(g.head == head);
    Image image = image_png_load(png);
    std::filesystem::remove(png);
    CHECK(image.width == 1280);
    CHECK(image.height == 800);
    check_not_blank(image);
    return check_mask_pixels(image, g, compile_example(name, n).at(layer, head));
}

} // namespace

TEST_CASE("viewer screenshot: longformer's mask, pixel by block", "[viewer][xvfb]") {
    auto kinds = check_example_mask("longformer.pat", 2048, 0, 0);
    CHECK(kinds[0] > 0);  // background where the mask keeps nothing
    CHECK(kinds[1] > 0);  // full blocks
}

TEST_CASE("viewer screenshot: bigbird and a per-head mix, other layers and heads", "[viewer][xvfb]") {
    check_example_mask("bigbird.pat", 2048, 3, 5);
    auto kinds = check_example_mask("per_head_mix.pat", 4096, 2, 3);  // dilated(32, 4): partial blocks
    CHECK(kinds[2] > 0);
}

TEST_CASE("viewer screenshot: causal and 2-D window masks with partial blocks", "[viewer][xvfb]") {
    auto kinds = check_example_mask("causal.pat", 1000, 0, 0);  // short last block
    CHECK(kinds[2] > 0);  // the diagonal blocks are partial
    check_example_mask("image_window2d.pat", 4096, 0, 0);
}

TEST_CASE("viewer screenshot: every view renders and is not blank", "[viewer][xvfb]") {
    for (const char* view : {"reach", "hops", "compare", "demo"}) {
        INFO(view);
        std::string png = temp_path(std::string(view) + ".png");
        Run run = run_viewer("'" + kExamples + "longformer_growing.pat' --n 4096 --view " + view + " --screenshot '" + png + "'");
        INFO(run.out);
        REQUIRE(run.rc == 0);
        Image image = image_png_load(png);
        std::filesystem::remove(png);
        check_not_blank(image);
    }
}

TEST_CASE("viewer screenshot: a hover says which parts allow the pair", "[viewer][xvfb]") {
    std::string png = temp_path("hover.png");
    Run run = run_viewer("'" + kExamples + "longformer.pat' --n 2048 --screenshot '" + png + "' --hover 700,10 --frames 4");
    INFO(run.out);
    REQUIRE(run.rc == 0);
    Image image = image_png_load(png);
    std::filesystem::remove(png);
    check_not_blank(image);
}

TEST_CASE("viewer: a script that does not compile gives its diagnostic and a non-zero exit", "[viewer][xvfb]") {
    std::string bad = temp_path("bad.pat"), png = temp_path("bad.png");
    std::ofstream(bad) << "layers 2\nattend = window(64) | gobal(first(8))\n";
    Run run = run_viewer("'" + bad + "' --screenshot '" + png + "'");
    std::filesystem::remove(bad);
    INFO(run.out);
    CHECK(run.rc == 1);
    CHECK(run.out.find("unknown pattern 'gobal'") != std::string::npos);
    CHECK(run.out.find(":2:23:") != std::string::npos);
    std::filesystem::remove(png);
}

TEST_CASE("viewer: a bad edit shows its diagnostic and keeps the last good mask on screen", "[viewer][xvfb]") {
    std::string bad = temp_path("edit.pat"), png = temp_path("edit.png");
    std::ofstream(bad) << "block 64\nheads 12\nlayers 12\n\nattend = window(256) | global(first(64)\n";  // no ')'
    Run run = run_viewer("'" + kExamples + "longformer.pat' --n 2048 --edit '" + bad + "' --screenshot '" + png + "'");
    std::filesystem::remove(bad);
    INFO(run.out);
    REQUIRE(run.rc == 0);
    CHECK(run.out.find("the edit does not compile; showing the last good mask") != std::string::npos);
    CHECK(run.out.find("longformer.pat:5:") != std::string::npos);  // the diagnostic, at its line
    GridLine g;
    REQUIRE(parse_grid(run.out, g));
    Image image = image_png_load(png);
    std::filesystem::remove(png);
    check_not_blank(image);
    check_mask_pixels(image, g, compile_example("longformer.pat", 2048).at(0, 0));  // still longformer's
}

TEST_CASE("viewer: bad arguments are one clear line, a non-zero exit and no image", "[viewer]") {
    std::string png = temp_path("never.png");
    struct Case { std::string args, message; };
    const Case cases[] = {
        {"--n 0", "sparsa-view: --n 0 is out of range"},
        {"--view nope", "sparsa-view: --view 'nope' is not a view (use mask, reach, hops, compare, overview or demo)"},
        {"--frames x --screenshot '" + png + "'", "sparsa-view: --frames takes a whole number; got 'x'"},
        {"'/nonexistent/x.pat' --screenshot '" + png + "'", "sparsa-view: cannot read '/nonexistent/x.pat'"},
    };
    for (const Case& c : cases) {
        Run run = run_viewer(c.args, false);
        INFO(c.args << "\n" << run.out);
        CHECK(run.rc == 1);
        CHECK(run.out.rfind(c.message, 0) == 0);
        CHECK_FALSE(std::filesystem::exists(png));
    }
    Run help = run_viewer("--help", false);
    CHECK(help.rc == 0);
    CHECK(help.out.find("usage: sparsa-view") == 0);
}

TEST_CASE("viewer: --layer beyond the script fails before writing", "[viewer][xvfb]") {
    std::string png = temp_path("layer.png");
    Run run = run_viewer("'" + kExamples + "longformer.pat' --layer 12 --screenshot '" + png + "'");
    INFO(run.out);
    CHECK(run.rc == 1);
    CHECK(run.out.find("--layer 12 --head 0 is outside longformer.pat's 12 layers and 12 heads") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(png));
}

// [SECTION] layout: labels, legends, diagnostics, token level, overview, clipping

namespace {

// A screenshot and its layout file (--layout), taken with `args` (shell words).
struct Shot {
    Image image;
    Layout layout;
    GridLine grid;
    bool has_grid = false;
    std::string out;
};
Shot take_shot(const std::string& args, const std::string& name) {
    std::string png = temp_path(name + ".png"), json = temp_path(name + ".json");
    Run run = run_viewer(args + " --screenshot '" + png + "' --layout '" + json + "'");
    INFO(run.out);
    REQUIRE(run.rc == 0);
    Shot shot;
    shot.out = run.out;
    shot.image = image_png_load(png);
    shot.layout = layout_load(json);
    shot.has_grid = parse_grid(run.out, shot.grid);
    std::filesystem::remove(png);
    std::filesystem::remove(json);
    REQUIRE(shot.layout.width == shot.image.width);
    REQUIRE(shot.layout.height == shot.image.height);
    return shot;
}

int luminance(uint32_t c) { return (static_cast<int>(c >> 24) * 3 + static_cast<int>((c >> 16) & 0xFF) * 6 + static_cast<int>((c >> 8) & 0xFF)) / 10; }

// Pixels inside r that are dark (text, not background): luminance below `dark`.
int64_t ink(const Image& image, const LayoutRect& r, int dark = 150) {
    int64_t count = 0;
    for (int y = std::max(0, static_cast<int>(r.y0)); y < std::min(image.height, static_cast<int>(std::ceil(r.y1))); ++y) {
        for (int x = std::max(0, static_cast<int>(r.x0)); x < std::min(image.width, static_cast<int>(std::ceil(r.x1))); ++x) {
            count += luminance(image.pixel(x, y)) < dark;
        }
    }
    return count;
}

int64_t pixels_of(const Image& image, const LayoutRect& r, uint32_t color) {
    int64_t count = 0;
    for (int y = std::max(0, static_cast<int>(r.y0)); y < std::min(image.height, static_cast<int>(std::ceil(r.y1))); ++y) {
        for (int x = std::max(0, static_cast<int>(r.x0)); x < std::min(image.width, static_cast<int>(std::ceil(r.x1))); ++x) {
            count += image.pixel(x, y) == color;
        }
    }
    return count;
}

std::vector<const LayoutRect*> in_view(const Layout& layout, const std::string& kind, const std::string& view) {
    std::vector<const LayoutRect*> out;
    for (const LayoutRect* r : layout.of_kind(kind)) {
        if (r->view == view) out.push_back(r);
    }
    return out;
}

const LayoutRect* find_text(const Layout& layout, const std::string& kind, const std::string& view, const std::string& text) {
    for (const LayoutRect* r : in_view(layout, kind, view)) {
        if (r->text == text) return r;
    }
    return nullptr;
}

std::string describe(const LayoutRect& r) {
    std::ostringstream s;
    s << r.kind << " '" << r.text << "' in " << r.view << " at (" << r.x0 << ", " << r.y0 << ")-(" << r.x1 << ", " << r.y1
      << "), clip (" << r.clip_x0 << ", " << r.clip_y0 << ")-(" << r.clip_x1 << ", " << r.clip_y1 << ")";
    return s.str();
}

// The Query and Key labels of `view` are drawn (dark pixels inside), unclipped, outside the
// grid, and the tick numbers lie inside [lo, hi] tokens and are drawn too.
void check_axes(const Shot& shot, const std::string& view, double key_lo, double key_hi, double query_lo, double query_hi) {
    const LayoutRect* query = find_text(shot.layout, "axis_label", view, "Query");
    const LayoutRect* key = find_text(shot.layout, "axis_label", view, "Key");
    REQUIRE(query != nullptr);
    REQUIRE(key != nullptr);
    for (const LayoutRect* label : {query, key}) {
        INFO(describe(*label));
        CHECK(ink(shot.image, *label) >= 15);
        CHECK_FALSE(label->clipped());
    }
    CHECK(query->y1 - query->y0 > 4 * (query->x1 - query->x0));  // written downwards
    auto ticks = in_view(shot.layout, "tick", view);
    int64_t keys = 0, queries = 0;
    for (const LayoutRect* t : ticks) {
        INFO(describe(*t));
        CHECK(ink(shot.image, *t) >= 4);
        CHECK_FALSE(t->clipped());
        double value = std::stod(t->text);
        if (t->y1 <= key->y1 + 20 && t->x0 > query->x1) {  // the top row: keys
            ++keys;
            CHECK(value >= key_lo - 1);
            CHECK(value <= key_hi + 1);
        } else {
            ++queries;
            CHECK(value >= query_lo - 1);
            CHECK(value <= query_hi + 1);
        }
    }
    CHECK(keys >= 3);
    CHECK(queries >= 3);
}

} // namespace

TEST_CASE("viewer layout: the mask and hops views label Query and Key, ticks follow zoom and pan", "[viewer][xvfb][layout]") {
    Shot shot = take_shot("'" + kExamples + "longformer.pat' --n 2048", "axes");
    check_axes(shot, "mask", 0, 2048, 0, 2048);
    for (const LayoutRect* label : in_view(shot.layout, "axis_label", "mask")) {
        for (const LayoutRect* canvas : in_view(shot.layout, "mask_canvas", "mask")) CHECK(label->overlap_area(*canvas) == 0);
    }
    // Zoomed on (query 1500, key 300): the numbers are those of the visible part only.
    Shot zoomed = take_shot("'" + kExamples + "longformer.pat' --n 2048 --zoom 2 --center 1500,300", "axes_zoom");
    REQUIRE(zoomed.has_grid);
    auto canvas = in_view(zoomed.layout, "mask_canvas", "mask");
    REQUIRE(canvas.size() == 1);
    const GridLine& g = zoomed.grid;
    check_axes(zoomed, "mask", (canvas[0]->x0 - g.x) / g.scale, (canvas[0]->x1 - g.x) / g.scale, (canvas[0]->y0 - g.y) / g.scale,
               (canvas[0]->y1 - g.y) / g.scale);
    CHECK((canvas[0]->x1 - g.x) / g.scale < 600);     // keys past 600 are off screen at this zoom
    CHECK((canvas[0]->y0 - g.y) / g.scale > 1200);    // and queries before 1200

    Shot hops = take_shot("'" + kExamples + "longformer_growing.pat' --n 4096 --view hops", "axes_hops");
    check_axes(hops, "hops", 0, 4096, 0, 4096);
}

TEST_CASE("viewer layout: the receptive field's shading has a legend, a causal script says where it stops", "[viewer][xvfb][layout]") {
    Shot shot = take_shot("'" + kExamples + "longformer_growing.pat' --n 4096 --token 2048 --view reach", "legend");
    auto legend = in_view(shot.layout, "legend", "reach");
    REQUIRE(legend.size() >= 3);
    for (const LayoutRect* r : legend) {
        INFO(describe(*r));
        CHECK(ink(shot.image, *r) >= 4);
        CHECK_FALSE(r->clipped());
    }
    CHECK(legend[0]->text.find("share of a column's 4 tokens in the field") != std::string::npos);
    auto bar = in_view(shot.layout, "legend_bar", "reach");
    REQUIRE(bar.size() == 1);
    // The bar runs from the lightest shade the cone can have (1 token of 4) to the full colour.
    const int y = static_cast<int>((bar[0]->y0 + bar[0]->y1) / 2);
    auto near = [](uint32_t a, uint32_t b) {
        for (int shift = 8; shift <= 24; shift += 8) {
            if (std::abs(static_cast<int>((a >> shift) & 0xFF) - static_cast<int>((b >> shift) & 0xFF)) > 6) return false;
        }
        return true;
    };
    uint32_t left = shot.image.pixel(static_cast<int>(bar[0]->x0) + 1, y), right = shot.image.pixel(static_cast<int>(bar[0]->x1) - 2, y);
    INFO(std::hex << left << " " << right << " expected " << light_cone_color(0.25) << " " << kColorFull);
    CHECK(near(left, light_cone_color(0.25)));
    CHECK(near(right, kColorFull));
    // Causal: the note beside the curve, and the dashed limit of token 2048's field.
    auto note = in_view(shot.layout, "plateau_note", "reach");
    REQUIRE(note.size() == 1);
    CHECK(note[0]->text.find("about 50%") != std::string::npos);
    CHECK(note[0]->text.find("2049 of 4096 tokens") != std::string::npos);
    CHECK(ink(shot.image, *note[0]) >= 100);
    CHECK_FALSE(note[0]->clipped());
    auto limit = in_view(shot.layout, "plot_limit", "reach");
    REQUIRE(limit.size() == 1);
    CHECK(ink(shot.image, *limit[0], 200) >= 10);

    Shot plain = take_shot("'" + kExamples + "longformer.pat' --n 2048 --view reach", "legend_plain");  // not causal
    CHECK(in_view(plain.layout, "plateau_note", "reach").empty());
    CHECK(in_view(plain.layout, "plot_limit", "reach").empty());
}

TEST_CASE("viewer layout: diagnostics on consecutive lines never cover code", "[viewer][xvfb][layout]") {
    std::string script = temp_path("two_warnings.pat");
    std::ofstream(script) << "block 64\nheads 2\nlayers 2\nattend = window(128)\n"
                             "attend[layer 0..5] = window(256)\n"
                             "attend[head 0..7] = window(128)\n"
                             "attend[layer 1..9] = window(64) | global(first(64)) | dilated(128, 2)\n"
                             "attend[head 1..9] = window(64)\n";
    Shot shot = take_shot("'" + script + "' --n 1024", "diagnostics");
    std::filesystem::remove(script);
    auto diagnostics = shot.layout.of_kind("diagnostic");
    auto code = shot.layout.of_kind("code_line");
    REQUIRE(code.size() == 8);
    std::set<int64_t> lines;
    for (const LayoutRect* d : diagnostics) lines.insert(d->line);
    // Lines 5 and 6 have room for their message (cut to fit); 7 is too long for any; 8 has room.
    CHECK(lines == std::set<int64_t>{5, 6, 8});
    for (const LayoutRect* d : diagnostics) {
        INFO(describe(*d));
        CHECK(d->text.rfind("<- warning: th", 0) == 0);
        CHECK(d->text.size() >= 17);
        CHECK(pixels_of(shot.image, *d, 0xFFF3D6FF) > 50);  // its background
        CHECK(ink(shot.image, *d, 200) >= 20);              // and its text
        for (const LayoutRect* c : code) {
            INFO(describe(*c));
            CHECK(d->overlap_area(*c) == 0);
        }
    }
    for (const LayoutRect* c : code) {  // no diagnostic background inside code, whatever the layout says
        INFO(describe(*c));
        CHECK(ink(shot.image, *c) >= 10);
        CHECK(pixels_of(shot.image, *c, 0xFFF3D6FF) == 0);
        CHECK(pixels_of(shot.image, *c, 0xFFEBEBFF) == 0);
    }
}

TEST_CASE("viewer screenshot: zoomed in, a dilated causal pattern is drawn pair by pair", "[viewer][xvfb][layout]") {
    std::string script = temp_path("dilated.pat");
    std::ofstream(script) << "block 64\ncausal\nattend = dilated(96, 3) | global(first(8))\n";
    const BlockMask mask = [&] {
        dsl::CompileOptions options;
        options.n = 1024;
        return dsl::script_compile(*dsl::script_load(script), options).masks.at(0, 0);
    }();
    auto kind_of = [&](int64_t q, int64_t k) {  // 0 not kept, 1 full, 2 partial
        const int64_t qb = q / mask.block, kb = k / mask.block;
        for (int64_t i = mask.row_ptr[qb]; i < mask.row_ptr[qb + 1]; ++i) {
            if (mask.col_idx[i] == kb) return mask.partial_idx[i] < 0 ? 1 : 2;
        }
        return 0;
    };
    for (double zoom : {6.0, 3.0}) {
        INFO("zoom " << zoom);
        Shot shot = take_shot("'" + script + "' --n 1024 --zoom " + std::to_string(zoom) + " --center 500,420", "dilated");
        REQUIRE(shot.has_grid);
        CHECK(shot.grid.scale == Approx(zoom));
        auto canvas = in_view(shot.layout, "mask_canvas", "mask");
        auto minimap = in_view(shot.layout, "minimap", "mask");
        REQUIRE(canvas.size() == 1);
        REQUIRE(minimap.size() == 1);
        int64_t checked = 0, wrong = 0, kept = 0, cut = 0;
        for (int64_t q = 0; q < 1024; ++q) {
            for (int64_t k = 0; k < 1024; ++k) {
                double x = shot.grid.x + (static_cast<double>(k) + 0.5) * zoom, y = shot.grid.y + (static_cast<double>(q) + 0.5) * zoom;
                if (x < canvas[0]->x0 + 1 || x >= canvas[0]->x1 - 1 || y < canvas[0]->y0 + 1 || y >= canvas[0]->y1 - 1) continue;
                if (x >= minimap[0]->x0 - 1 && x < minimap[0]->x1 + 1 && y >= minimap[0]->y0 - 1 && y < minimap[0]->y1 + 1) continue;
                int kind = kind_of(q, k);
                uint32_t expect = kind == 0 ? kColorBackground : kind == 1 ? kColorFull : kColorPartial;
                if (zoom >= 4 && kind == 2 && !mask.allowed(q, k)) expect = kColorBackground;  // token level
                uint32_t got = shot.image.pixel(static_cast<int>(x), static_cast<int>(y));
                if (got != expect) {
                    if (wrong < 5) UNSCOPED_INFO("pair (" << q << ", " << k << ") at (" << x << ", " << y << ") is " << std::hex << got << ", expected " << expect << std::dec);
                    ++wrong;
                }
                ++checked;
                if (kind == 2) (mask.allowed(q, k) ? kept : cut) += 1;
            }
        }
        CHECK(wrong == 0);
        CHECK(checked > 10000);
        CHECK(kept > 1000);  // inside partial blocks: pairs kept by the dilation ...
        CHECK(cut > 1000);   // ... and pairs between them, or past the causal edge
    }
    std::filesystem::remove(script);
}

TEST_CASE("viewer layout: the overview's cells are the compiled masks, with their densities", "[viewer][xvfb][layout]") {
    for (auto [name, n] : {std::pair{"longformer_growing.pat", 2048}, std::pair{"bigbird.pat", 4096}}) {
        INFO(name);
        Shot shot = take_shot("'" + kExamples + name + "' --n " + std::to_string(n) + " --view overview", "overview");
        MaskSet set = compile_example(name, n);
        auto cells = in_view(shot.layout, "overview_cell", "overview");
        REQUIRE(static_cast<int64_t>(cells.size()) == set.layers * set.heads);
        int64_t wrong = 0, checked = 0;
        std::set<std::pair<int64_t, int64_t>> seen;
        for (const LayoutRect* cell : cells) {
            seen.insert({cell->layer, cell->head});
            const BlockMask& mask = set.at(cell->layer, cell->head);
            const int64_t g = cell->blocks_per_texel, texels = cell->texels;
            REQUIRE(g >= 1);
            REQUIRE(texels == (mask.q_blocks() + g - 1) / g);
            const double per = (cell->x1 - cell->x0) / static_cast<double>(texels);
            CHECK(per == Approx((cell->y1 - cell->y0) / static_cast<double>(texels)));
            std::vector<int> kind(static_cast<size_t>(texels * texels), 0);  // 0 none, 1 full, 2 partial only
            for (int64_t qb = 0; qb < mask.q_blocks(); ++qb) {
                for (int64_t i = mask.row_ptr[qb]; i < mask.row_ptr[qb + 1]; ++i) {
                    int& k = kind[static_cast<size_t>((qb / g) * texels + mask.col_idx[i] / g)];
                    k = mask.partial_idx[i] < 0 ? 1 : std::max(k == 1 ? 1 : 2, k);
                }
            }
            for (int64_t ty = 0; ty < texels; ++ty) {
                for (int64_t tx = 0; tx < texels; ++tx) {
                    int x = static_cast<int>(cell->x0 + (static_cast<double>(tx) + 0.5) * per);
                    int y = static_cast<int>(cell->y0 + (static_cast<double>(ty) + 0.5) * per);
                    int k = kind[static_cast<size_t>(ty * texels + tx)];
                    uint32_t expect = k == 0 ? kColorBackground : k == 1 ? kColorFull : kColorPartial;
                    if (shot.image.pixel(x, y) != expect) {
                        if (wrong < 5) UNSCOPED_INFO("layer " << cell->layer << " head " << cell->head << " texel (" << ty << ", " << tx << ") is " << std::hex << shot.image.pixel(x, y) << std::dec);
                        ++wrong;
                    }
                    ++checked;
                }
            }
        }
        CHECK(wrong == 0);
        CHECK(static_cast<int64_t>(seen.size()) == set.layers * set.heads);
        CHECK(checked >= set.layers * set.heads * 16 * 16);
        // The density under each cell: kept pairs / n^2 of that mask, as printed.
        auto densities = in_view(shot.layout, "overview_density", "overview");
        REQUIRE(densities.size() == cells.size());
        for (size_t i = 0; i < cells.size(); ++i) {
            const BlockMask& mask = set.at(cells[i]->layer, cells[i]->head);
            double expect = 100.0 * static_cast<double>(block_mask_stats(mask).kept_pairs) / (static_cast<double>(n) * n);
            INFO(describe(*densities[i]) << " expected " << expect);
            CHECK(std::stod(densities[i]->text) == Approx(expect).margin(expect >= 10 ? 0.5 : 0.05));
            CHECK(ink(shot.image, *densities[i]) >= 6);
            CHECK(densities[i]->y0 >= cells[i]->y1 - 1);  // under its cell
        }
    }
}

TEST_CASE("viewer layout: nothing is clipped in the demo window and with three-digit layers", "[viewer][xvfb][layout]") {
    std::string deep = temp_path("deep.pat");
    std::ofstream(deep) << "block 64\nheads 2\nlayers 120\nattend = window(64)\n";
    struct Case { std::string args; const char* what; bool overview_scrolls = false; };
    const Case cases[] = {
        {"'" + kExamples + "bigbird.pat' --n 4096 --view demo", "demo, 1280 x 800"},
        // 12 x 8 masks do not fit the demo's overview panel: it scrolls, and its cells are cut
        // at the scroll area's edge by design; everything else must fit.
        {"'" + kExamples + "longformer_growing.pat' --n 4096 --view demo", "demo of a causal script", true},
        {"'" + kExamples + "bigbird.pat' --n 4096 --view demo --size 1600x1000", "demo, 1600 x 1000"},
        {"'" + deep + "' --n 1024 --view reach", "120 layers"},
        {"'" + deep + "' --n 1024 --view compare", "120 layers, compare"},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        Shot shot = take_shot(c.args, "clip");
        int64_t texts = 0;
        for (const LayoutRect& r : shot.layout.rects) {
            if (r.kind == "code_line" || r.kind == "diagnostic") continue;  // the editor scrolls sideways
            if (c.overview_scrolls && r.kind.rfind("overview_", 0) == 0) continue;
            INFO(describe(r));
            CHECK_FALSE(r.clipped());
            texts += !r.text.empty();
        }
        CHECK(texts >= 25);
        // Layer labels, all digits of them, beside the light cone and not under it.
        for (const LayoutRect* label : shot.layout.of_kind("layer_label")) {
            INFO(describe(*label));
            for (const LayoutRect* cone : shot.layout.of_kind("cone")) CHECK(label->overlap_area(*cone) == 0);
            CHECK(ink(shot.image, *label) >= 10);
        }
        auto densities = shot.layout.of_kind("overview_density");  // side by side, never on each other
        for (size_t i = 0; i < densities.size(); ++i) {
            for (size_t j = i + 1; j < densities.size(); ++j) {
                INFO(describe(*densities[i]) << " and " << describe(*densities[j]));
                CHECK(densities[i]->overlap_area(*densities[j]) == 0);
            }
        }
        if (std::string(c.what) == "120 layers") {
            CHECK(find_text(shot.layout, "layer_label", "reach", "layer 120") != nullptr);
        }
    }
    std::filesystem::remove(deep);
}
