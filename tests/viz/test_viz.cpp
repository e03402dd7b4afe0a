// The viewer's pure parts, no display needed: mask and hops images against the compiled masks,
// screen <-> pair mapping, the hover explanation (dsl/pattern_parts.hpp) against the compiled
// mask pair by pair, the model that keeps the last good mask, and the command line's errors.
#include "dsl/pattern_parts.hpp"
#include "dsl/script.hpp"
#include "engine/error.hpp"
#include "analysis/reach_graph.hpp"
#include "analysis/receptive_field.hpp"
#include "viz/grid_view.hpp"
#include "viz/hops.hpp"
#include "viz/image.hpp"
#include "viz/layout.hpp"
#include "viz/mask_image.hpp"
#include "viz/view_args.hpp"
#include "viz/view_model.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

using namespace sparsa;
using namespace sparsa::viz;

namespace {

dsl::ScriptPtr parse(const std::string& text) { return dsl::script_parse(text, "<test>"); }

MaskSet compile(const dsl::Script& script, int64_t n) {
    dsl::CompileOptions options;
    options.n = n;
    options.threads = 1;
    return dsl::script_compile(script, options).masks;
}

std::vector<std::filesystem::path> example_scripts() {
    std::vector<std::filesystem::path> out;
    for (const auto& e : std::filesystem::directory_iterator(SPARSA_SOURCE_DIR "/examples/patterns")) {
        if (e.path().extension() == ".pat") out.push_back(e.path());
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// What kind of block (qb, kb) is: 0 not kept, 1 full, 2 partial.
int block_kind(const BlockMask& m, int64_t qb, int64_t kb) {
    for (int64_t i = m.row_ptr[qb]; i < m.row_ptr[qb + 1]; ++i) {
        if (m.col_idx[i] == kb) return m.partial_idx[i] < 0 ? 1 : 2;
    }
    return 0;
}

std::vector<std::string> allowing_texts(const dsl::PatternParts& parts, int64_t n, int32_t block, int64_t q, int64_t k) {
    std::vector<std::string> out;
    for (size_t i : dsl::pattern_parts_allowing(parts, n, block, q, k)) out.push_back(parts.parts[i].text);
    return out;
}

} // namespace

TEST_CASE("pattern parts name the operands of the attend line that allow a pair", "[viz][parts]") {
    auto script = parse("block 64\nlayers 2\n\nattend = window(256) | global(first(64))\n");
    dsl::PatternParts parts = dsl::script_pattern_parts(*script, 1024, 64, 0, 0);
    REQUIRE(parts.parts.size() == 2);
    CHECK(parts.parts[0].text == "window(256)");
    CHECK(parts.parts[1].text == "global(first(64))");
    CHECK(parts.line == 4);
    using V = std::vector<std::string>;
    CHECK(allowing_texts(parts, 1024, 64, 500, 400) == V{"window(256)"});
    CHECK(allowing_texts(parts, 1024, 64, 500, 10) == V{"global(first(64))"});
    CHECK(allowing_texts(parts, 1024, 64, 10, 900) == V{"global(first(64))"});
    CHECK(allowing_texts(parts, 1024, 64, 10, 20) == V{"window(256)", "global(first(64))"});
    CHECK(allowing_texts(parts, 1024, 64, 500, 100).empty());
}

TEST_CASE("pattern parts follow selectors, parentheses, names and the causal statement", "[viz][parts]") {
    auto script = parse("heads 4\nlayers 2\ncausal\nlet far = strided(128)\n"
                        "attend = (window(32) | far)\nattend[head 2..4] = chunk(256)\n");
    dsl::PatternParts h0 = dsl::script_pattern_parts(*script, 1024, 64, 1, 0);
    REQUIRE(h0.parts.size() == 2);
    CHECK(h0.parts[1].text == "far");
    CHECK(h0.causal);
    CHECK(h0.line == 5);
    CHECK(allowing_texts(h0, 1024, 64, 300, 44) == std::vector<std::string>{"far"});
    CHECK(allowing_texts(h0, 1024, 64, 44, 300).empty());  // cut by causal
    dsl::PatternParts h3 = dsl::script_pattern_parts(*script, 1024, 64, 0, 3);
    REQUIRE(h3.parts.size() == 1);
    CHECK(h3.parts[0].text == "chunk(256)");
    CHECK(h3.line == 6);
    CHECK_THROWS_AS(dsl::script_pattern_parts(*script, 1024, 64, 2, 0), Error);

    // One operand that is a union behind a name is split into its evaluated leaves.
    auto named = parse("let both = window(16) | columns(first(8))\nattend = both\n");
    dsl::PatternParts leaves = dsl::script_pattern_parts(*named, 256, 16, 0, 0);
    REQUIRE(leaves.parts.size() == 2);
    CHECK(leaves.parts[0].begin == -1);
    CHECK(allowing_texts(leaves, 256, 16, 200, 3).size() == 1);
}

TEST_CASE("pattern parts allow exactly the pairs the compiled mask keeps, for every example", "[viz][parts]") {
    const int64_t n = 384;  // not a multiple of 64: short last blocks
    for (const auto& path : example_scripts()) {
        auto script = dsl::script_load(path.string());
        dsl::CompileOptions with_content;
        with_content.n = n;
        with_content.threads = 1;
        with_content.content = true;
        if (!dsl::script_compile(*script, with_content).masks.content.empty()) {
            // lsh, anchors, favor: their pairs come from Q and K, so the viewer, which draws every
            // pair beforehand, refuses them with the language's diagnostic (no parts to compare)
            const ViewAttempt a = view_model_build(read_file(path), path.filename().string(), path.string(), n);
            CHECK(a.model == nullptr);
            REQUIRE(!a.diagnostics.empty());
            CHECK_THAT(a.diagnostics[0].message, Catch::Contains("needs every pair beforehand"));
            continue;
        }
        MaskSet set = compile(*script, n);
        for (int64_t l : {int64_t{0}, set.layers - 1}) {
            for (int64_t h : {int64_t{0}, set.heads - 1}) {
                INFO(path.filename().string() << " layer " << l << " head " << h);
                dsl::PatternParts parts = dsl::script_pattern_parts(*script, n, set.block, l, h);
                const BlockMask& mask = set.at(l, h);
                int64_t mismatches = 0;
                for (int64_t q = 0; q < n; ++q) {
                    for (int64_t k = 0; k < n; ++k) {
                        bool by_parts = !dsl::pattern_parts_allowing(parts, n, set.block, q, k).empty();
                        mismatches += by_parts != mask.allowed(q, k);
                    }
                }
                CHECK(mismatches == 0);
            }
        }
    }
}

TEST_CASE("the mask image has one pixel per block in the colour of its kind", "[viz][image]") {
    auto script = parse("block 16\nattend = window(40) | columns(first(5)) | strided(100)\n");
    MaskSet set = compile(*script, 300);
    const BlockMask& m = set.at(0, 0);
    MaskImage image = mask_image_make(m);
    REQUIRE(image.blocks_per_pixel == 1);
    REQUIRE(image.image.width == m.q_blocks());
    int seen[3] = {0, 0, 0};
    for (int64_t qb = 0; qb < m.q_blocks(); ++qb) {
        for (int64_t kb = 0; kb < m.k_blocks(); ++kb) {
            int kind = block_kind(m, qb, kb);
            ++seen[kind];
            uint32_t expect = kind == 0 ? kColorBackground : kind == 1 ? kColorFull : kColorPartial;
            CHECK(image.image.pixel(static_cast<int>(kb), static_cast<int>(qb)) == expect);
        }
    }
    CHECK(seen[0] > 0);
    CHECK(seen[1] > 0);
    CHECK(seen[2] > 0);

    // Downsampled: a cell is full when it holds a full block, partial when only partial ones.
    MaskImage small = mask_image_make(m, 5);
    REQUIRE(small.blocks_per_pixel == 4);
    REQUIRE(small.image.width == 5);
    for (int y = 0; y < 5; ++y) {
        for (int x = 0; x < 5; ++x) {
            bool any_full = false, any_partial = false;
            for (int64_t qb = y * 4; qb < std::min<int64_t>(y * 4 + 4, m.q_blocks()); ++qb) {
                for (int64_t kb = x * 4; kb < std::min<int64_t>(x * 4 + 4, m.k_blocks()); ++kb) {
                    any_full |= block_kind(m, qb, kb) == 1;
                    any_partial |= block_kind(m, qb, kb) == 2;
                }
            }
            uint32_t expect = any_full ? kColorFull : any_partial ? kColorPartial : kColorBackground;
            CHECK(small.image.pixel(x, y) == expect);
        }
    }
    CHECK_THROWS_AS(mask_image_make(m, 0), Error);
}

TEST_CASE("a partial block's image shows its exact pairs", "[viz][image]") {
    auto script = parse("block 16\nattend = window(5) | columns({3, 40})\n");
    MaskSet set = compile(*script, 70);  // the last block is short: 70 = 4 * 16 + 6
    const BlockMask& m = set.at(0, 0);
    for (int64_t qb = 0; qb < m.q_blocks(); ++qb) {
        for (int64_t kb = 0; kb < m.k_blocks(); ++kb) {
            Image image = block_pairs_image(m, qb, kb);
            int kind = block_kind(m, qb, kb);
            for (int i = 0; i < 16; ++i) {
                for (int j = 0; j < 16; ++j) {
                    int64_t q = qb * 16 + i, k = kb * 16 + j;
                    uint32_t expect = (q >= 70 || k >= 70) ? kColorNever
                                      : !m.allowed(q, k)   ? kColorBackground
                                      : kind == 1          ? kColorFull
                                                           : kColorPartial;
                    CHECK(image.pixel(j, i) == expect);
                }
            }
        }
    }
    CHECK_THROWS_AS(block_pairs_image(m, 5, 0), Error);
}

TEST_CASE("grid view: pixels map to pairs and back, zoom keeps the point under the mouse", "[viz][grid]") {
    GridView view = grid_view_fit(1000, 10, 20, 500, 400);  // a 400-pixel square
    CHECK(view.scale == Approx(0.4));
    CHECK(grid_pair_at(view, 1000, 10.1, 20.1) == std::make_pair(int64_t{0}, int64_t{0}));
    CHECK(grid_pair_at(view, 1000, 10 + 0.4 * 7.5, 20 + 0.4 * 3.5) == std::make_pair(int64_t{3}, int64_t{7}));
    CHECK_FALSE(grid_pair_at(view, 1000, 9.9, 30));
    CHECK_FALSE(grid_pair_at(view, 1000, 30, 20 + 400.1));
    for (int64_t q : {0, 1, 499, 999}) {
        for (int64_t k : {0, 3, 998}) {
            auto [x, y] = grid_pair_corner(view, q, k);
            CHECK(grid_pair_at(view, 1000, x + view.scale / 2, y + view.scale / 2) == std::make_pair(q, k));
        }
    }
    GridView zoomed = grid_view_zoom(view, 4, 150, 120, view.scale / 2);
    CHECK(zoomed.scale == Approx(1.6));
    CHECK(grid_pair_at(zoomed, 1000, 150, 120) == grid_pair_at(view, 1000, 150, 120));
    CHECK(grid_view_zoom(view, 1e6, 0, 0, 0.2).scale == 64);
    CHECK(grid_view_zoom(view, 1e-6, 0, 0, 0.2).scale == Approx(0.2));
}

TEST_CASE("hops at token resolution are the first layer of the brute-force reach", "[viz][hops]") {
    std::vector<std::string> scripts = {
        "block 16\nlayers 4\nattend = window(3)\n",
        "block 16\nlayers 3\nheads 2\ncausal\nattend = window(8)\nattend[head 1] = strided(20)\n",
        "block 16\nlayers 3\nattend = segments({30, 70}) | columns({5})\n",
    };
    for (const auto& text : scripts) {
        INFO(text);
        MaskSet set = compile(*parse(text), 100);
        HopsMatrix hops = hops_compute(set, 1024);
        REQUIRE(hops.exact);
        REQUIRE(hops.nodes == 100);
        auto ref = receptive_field_reference(set, set.layers);
        int64_t mismatches = 0;
        for (int64_t q = 0; q < 100; ++q) {
            for (int64_t k = 0; k < 100; ++k) {
                int64_t expect = -1;
                for (int64_t l = 0; l <= set.layers && expect < 0; ++l) {
                    if (ref[static_cast<size_t>(l)][static_cast<size_t>(q * 100 + k)]) expect = l;
                }
                mismatches += hops.at(q, k) != expect;
            }
        }
        CHECK(mismatches == 0);
    }
}

TEST_CASE("hops at block resolution: band(1) takes |a - b| layers, and never later than tokens", "[viz][hops]") {
    MaskSet band = compile(*parse("block 16\nlayers 12\nattend = band(1)\n"), 160);
    HopsMatrix h = hops_compute(band, 10);  // 10 blocks, one node each
    REQUIRE_FALSE(h.exact);
    REQUIRE(h.nodes == 10);
    REQUIRE(h.node_tokens == 16);
    for (int64_t a = 0; a < 10; ++a) {
        for (int64_t b = 0; b < 10; ++b) CHECK(h.at(a, b) == std::abs(a - b));
    }

    MaskSet set = compile(*parse("block 16\nlayers 5\nattend = window(9) | columns({77})\n"), 256);
    HopsMatrix tokens = hops_compute(set, 256), blocks = hops_compute(set, 8);  // 2 blocks a node
    REQUIRE(blocks.node_tokens == 32);
    for (int64_t q = 0; q < 256; ++q) {
        for (int64_t k = 0; k < 256; ++k) {
            int64_t t = tokens.at(q, k), b = blocks.at(q / 32, k / 32);
            if (t >= 0) CHECK((b >= 0 && b <= t));
        }
    }
    CHECK_THROWS_AS(hops_compute(set, 0), Error);
}

TEST_CASE("the light cone stacks a token's field by layer, layer 0 at the bottom", "[viz][image]") {
    MaskSet set = compile(*parse("block 16\nlayers 3\nattend = window(2)\n"), 64);
    ReachGraph graph = reach_graph_make(set, true);
    TokenReach field = receptive_field_token(graph, 32, ReachDirection::in, true);
    Image cone = light_cone_image(field, 64, 64);
    REQUIRE(cone.height == 4);
    for (int64_t l = 0; l <= 3; ++l) {
        int y = static_cast<int>(3 - l);
        for (int x = 0; x < 64; ++x) {
            bool in = std::abs(x - 32) <= 2 * l;
            CHECK((cone.pixel(x, y) != kColorBackground) == in);
        }
    }
    TokenReach bare = receptive_field_token(graph, 32, ReachDirection::in, false);
    CHECK_THROWS_AS(light_cone_image(bare, 64, 64), Error);
}

TEST_CASE("stats: density and FLOPs saved against dense", "[viz][stats]") {
    MaskSet dense = compile(*parse("attend = dense\n"), 256);
    ReachCoverage c = receptive_field_coverage(dense);
    ViewStats s = view_stats_make(dense, c);
    CHECK(s.density == Approx(1.0));
    CHECK(s.flops_saved == Approx(0.0));
    CHECK(s.layers_needed == 1);
    CHECK(s.empty_rows == 0);

    MaskSet chunk = compile(*parse("block 16\nheads 2\nattend = chunk(64)\nattend[head 1] = rows({0})\n"), 256);
    ViewStats t = view_stats_make(chunk, receptive_field_coverage(chunk));
    // head 0: 4 chunks of 64 (density 1/4); head 1: one row of 256 (a 16 x 256 strip computed).
    CHECK(t.density == Approx((0.25 + 1.0 / 256) / 2));
    CHECK(t.flops_saved == Approx(1 - (0.25 + 16.0 / 256) / 2));
    CHECK(t.empty_rows == 255);
    CHECK(t.layers_needed == -1);
}

TEST_CASE("a bad script keeps the last good model and says where it is wrong", "[viz][model]") {
    ViewState state;
    view_state_apply(state, view_model_build("layers 3\nattend = window(64)\n", "a.pat", "", 1024));
    REQUIRE(state.model);
    CHECK(state.model->masks.layers == 3);
    CHECK_FALSE(state.stale);
    CHECK(state.model->hops.nodes > 0);
    const ViewModel* good = state.model.get();

    view_state_apply(state, view_model_build("layers 3\nattend = window(64) | gobal(first(8))\n", "a.pat", "", 1024));
    CHECK(state.model.get() == good);
    CHECK(state.stale);
    REQUIRE_FALSE(state.diagnostics.empty());
    CHECK(state.diagnostics[0].severity == dsl::Severity::error);
    CHECK(state.diagnostics[0].line() == 2);
    CHECK(state.diagnostics[0].column() == 23);
    CHECK(state.diagnostics[0].message.find("gobal") != std::string::npos);

    ViewAttempt big = view_model_build("attend = dense\n", "a.pat", "", kViewMaxN + 1);
    CHECK_FALSE(big.model);
    CHECK(big.error.find("outside what the viewer compiles") != std::string::npos);
    ViewAttempt lsh = view_model_build("attend = lsh(4)\n", "a.pat", "", 256);
    CHECK_FALSE(lsh.model);
    CHECK_FALSE((lsh.diagnostics.empty() && lsh.error.empty()));

    view_state_apply(state, view_model_build("layers 2\nattend = window(8)\n", "a.pat", "", 512));
    CHECK(state.model.get() != good);
    CHECK(state.model->serial > good->serial);
    CHECK_FALSE(state.stale);
}

TEST_CASE("building never throws, whatever is typed", "[viz][model]") {
    // Every prefix of every example, as typed one character at a time, and random edits.
    std::mt19937_64 rng(7);
    int built = 0;
    for (const auto& path : example_scripts()) {
        std::string text = read_file(path);
        for (size_t cut = 0; cut <= text.size(); cut += 7) {
            ViewAttempt a = view_model_build(text.substr(0, cut), "x.pat", path.string(), 256);
            CHECK((a.model || !a.diagnostics.empty() || !a.error.empty() || cut == 0));
            built += a.model != nullptr;
        }
        const std::string junk = "()|&!-+*/%^.,{}[]=#\"\n 0123456789abcxyz";
        for (int i = 0; i < 20; ++i) {
            std::string edited = text;
            for (int e = 0; e < 3; ++e) {
                size_t at = rng() % (edited.size() + 1);
                edited.insert(at, 1, junk[rng() % junk.size()]);
            }
            ViewAttempt a = view_model_build(edited, "x.pat", path.string(), 256);
            CHECK((a.model || !a.diagnostics.empty() || !a.error.empty()));
        }
    }
    CHECK(built > 0);
}

TEST_CASE("sparsa-view's command line: values, and errors that name the option", "[viz][args]") {
    ViewArgs a = view_args_parse({"x.pat", "--n", "2048", "--view", "hops", "--screenshot", "o.png", "--frames", "5",
                                  "--size", "1024x640", "--hover", "7,3", "--layer", "1", "--head", "2"});
    CHECK(a.file == "x.pat");
    CHECK(a.n == 2048);
    CHECK(a.view == ViewKind::hops);
    CHECK(a.screenshot == "o.png");
    CHECK(a.frames == 5);
    CHECK(a.width == 1024);
    CHECK(a.height == 640);
    CHECK(a.hover_q == 7);
    CHECK(a.hover_k == 3);
    CHECK(a.layer == 1);
    CHECK(a.head == 2);
    CHECK(view_args_parse({"--help"}).help);

    auto error_of = [](std::vector<std::string> args) {
        try {
            view_args_parse(args);
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    CHECK(error_of({"--n", "abc"}) == "--n takes a whole number; got 'abc'");
    // A position beyond n is refused, never moved (it once became n / 2 without a word).
    CHECK(error_of({"--n", "4096", "--token", "5000"}) == "--token 5000 is outside 0 to 4095 (n = 4096)");
    CHECK(error_of({"--token", "4096"}) == "--token 4096 is outside 0 to 4095 (n = 4096)");
    CHECK(error_of({"--token", "300", "--n", "256"}) == "--token 300 is outside 0 to 255 (n = 256)");
    CHECK(error_of({"--n", "256", "--hover", "10,256", "--screenshot", "o.png"}) == "--hover key 256 is outside 0 to 255 (n = 256)");
    CHECK(view_args_parse({"--n", "256", "--token", "255"}).token == 255);
    CHECK(error_of({"--n", "0"}).find("--n 0 is out of range") == 0);
    CHECK(error_of({"--n", "99999999"}).find("out of range") != std::string::npos);
    CHECK(error_of({"--n"}) == "--n needs a value (see sparsa-view --help)");
    CHECK(error_of({"--view", "masks"}).find("--view 'masks' is not a view") == 0);
    CHECK(error_of({"--frames", "0"}).find("--frames 0 is out of range") == 0);
    CHECK(error_of({"--size", "100"}).find("--size takes WIDTHxHEIGHT") == 0);
    CHECK(error_of({"--bogus"}) == "unknown option '--bogus' (see sparsa-view --help)");
    CHECK(error_of({"a.pat", "b.pat"}).find("one script at a time") == 0);
    CHECK(error_of({"--hover", "1,2"}).find("--hover is for screenshots") == 0);
    CHECK(error_of({"--compare", "b.pat", "--compare-head", "1"}).find("both given") != std::string::npos);

    ViewArgs z = view_args_parse({"--n", "1024", "--zoom", "6.5", "--center", "500,420", "--view", "overview",
                                  "--screenshot", "o.png", "--layout", "o.json"});
    CHECK(z.zoom == 6.5);
    CHECK(z.center_q == 500);
    CHECK(z.center_k == 420);
    CHECK(z.view == ViewKind::overview);
    CHECK(z.layout == "o.json");
    CHECK(error_of({"--zoom", "big"}) == "--zoom takes a number; got 'big'");
    CHECK(error_of({"--zoom", "100"}).find("--zoom 100 is out of range") == 0);
    CHECK(error_of({"--center", "5,5"}) == "--center needs --zoom PX (the pixels per token to show it at)");
    CHECK(error_of({"--n", "256", "--zoom", "4", "--center", "5,300"}) == "--center key 300 is outside 0 to 255 (n = 256)");
    CHECK(error_of({"--zoom", "4", "--center", "5"}).find("--center takes QUERY,KEY") == 0);
    CHECK(error_of({"--layout", "o.json"}) == "--layout is written with a screenshot: add --screenshot OUT.png");
}

TEST_CASE("the token-level picture of a mask region is the compiled mask, pair by pair", "[viz][image]") {
    // Dilation, a stride and the causal edge: partial blocks with holes in them.
    MaskSet set = compile(*parse("block 16\nheads 2\ncausal\nattend = dilated(24, 3) | global(first(4))\n"
                                 "attend[head 1] = strided(10) | window(8)\n"), 100);  // n = 100: a short last block
    for (int64_t head = 0; head < 2; ++head) {
        const BlockMask& mask = set.at(0, head);
        for (auto [q0, k0, rows, cols] : {std::array<int64_t, 4>{0, 0, 100, 100}, {37, 5, 40, 29}, {90, 80, 20, 30}}) {
            Image image = mask_region_image(mask, q0, k0, rows, cols);
            REQUIRE(image.width == cols);
            REQUIRE(image.height == rows);
            int64_t wrong = 0;
            for (int64_t q = q0; q < q0 + rows; ++q) {
                for (int64_t k = k0; k < k0 + cols; ++k) {
                    uint32_t expect = kColorNever;
                    if (q < 100 && k < 100) {
                        int kind = block_kind(mask, q / 16, k / 16);
                        expect = !mask.allowed(q, k) ? kColorBackground : kind == 1 ? kColorFull : kColorPartial;
                    }
                    wrong += image.pixel(static_cast<int>(k - k0), static_cast<int>(q - q0)) != expect;
                }
            }
            CHECK(wrong == 0);
        }
    }
    CHECK_THROWS_AS(mask_region_image(set.at(0, 0), -1, 0, 4, 4), Error);
    CHECK_THROWS_AS(mask_region_image(set.at(0, 0), 0, 0, 0, 4), Error);
}

TEST_CASE("axis ticks: round steps at least min_gap apart, inside the visible range", "[viz][grid]") {
    CHECK(axis_ticks(0, 4096, 4096, 0.2, 60) == std::vector<int64_t>{0, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000});
    CHECK(axis_ticks(-50, 2000, 1024, 0.5, 40) == std::vector<int64_t>{0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000});
    CHECK(axis_ticks(403.5, 431, 1024, 6, 40) == std::vector<int64_t>{410, 420, 430});
    CHECK(axis_ticks(3, 9, 10, 50, 40) == std::vector<int64_t>{3, 4, 5, 6, 7, 8, 9});
    CHECK(axis_ticks(0, 10, 10, 50, 40).back() == 10);  // n itself
    CHECK(axis_ticks(20, 30, 10, 5, 40).empty());         // past n
}

TEST_CASE("the layout file round-trips, text escaped", "[viz][layout]") {
    Layout layout;
    layout.width = 1280;
    layout.height = 800;
    LayoutRect r;
    r.kind = "diagnostic";
    r.view = "editor";
    r.text = "<- warning: a \"quoted\" name, a \\ and a tab\t";
    r.x0 = 1.5, r.y0 = 2, r.x1 = 30.25, r.y1 = 15;
    r.clip_x0 = 0, r.clip_y0 = 0, r.clip_x1 = 20, r.clip_y1 = 100;
    r.line = 6;
    LayoutRect cell;
    cell.kind = "overview_cell";
    cell.layer = 3, cell.head = 7, cell.texels = 32, cell.blocks_per_texel = 2;
    layout.rects = {r, cell};
    std::string path = (std::filesystem::temp_directory_path() / "sparsa_viz_layout.json").string();
    layout_save(layout, path);
    Layout back = layout_load(path);
    std::filesystem::remove(path);
    CHECK(back.width == 1280);
    CHECK(back.height == 800);
    REQUIRE(back.rects.size() == 2);
    CHECK(back.rects[0].text == r.text);
    CHECK(back.rects[0].line == 6);
    CHECK(back.rects[0].x1 == 30.25);
    CHECK(back.rects[0].clipped());  // x1 30.25 past clip_x1 20
    CHECK(back.rects[1].layer == 3);
    CHECK(back.rects[1].head == 7);
    CHECK(back.rects[1].texels == 32);
    CHECK(back.rects[1].blocks_per_texel == 2);
    CHECK_FALSE(back.rects[1].clipped());
    CHECK(r.overlap_area(back.rects[0]) == Approx(28.75 * 13));
    CHECK_THROWS_AS(layout_load("/nonexistent/layout.json"), Error);
}

TEST_CASE("images round-trip through PNG files, written whole", "[viz][image]") {
    Image image = image_make(7, 5, kColorBackground);
    image.set(3, 2, kColorFull);
    image.set(6, 4, kColorPartial);
    std::string path = (std::filesystem::temp_directory_path() / "sparsa_viz_roundtrip.png").string();
    image_png_save(image, path);
    Image back = image_png_load(path);
    CHECK(back.width == 7);
    CHECK(back.height == 5);
    CHECK(back.rgba == image.rgba);
    std::filesystem::remove(path);
    CHECK_THROWS_AS(image_png_save(image, "/nonexistent-folder/x.png"), Error);
    CHECK_THROWS_AS(image_png_load("/nonexistent-folder/x.png"), Error);
}
