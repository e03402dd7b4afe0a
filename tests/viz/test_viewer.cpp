// sparsa-view end to end: open example scripts under Xvfb (xvfb-run -a, Mesa's software OpenGL),
// take screenshots, and check them: not blank, and the mask view's pixels at every block centre
// in the colour the independently compiled mask says (full, partial, background). Also the
// command line's errors, which need no display. Without xvfb-run these tests FAIL: CI installs it
// (scripts/setup.sh --tests), and a viewer test that cannot run must not pass.
#include "dsl/script.hpp"
#include "viz/image.hpp"
#include "viz/mask_image.hpp"

#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
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
        {"--view nope", "sparsa-view: --view 'nope' is not a view (use mask, reach, hops, compare or demo)"},
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
