// The mask pictures against the compiled masks they draw: every cell's pixels, token-level
// stripes, text where the layout says, and nothing outside the image or over the masks.
#include <catch2/catch.hpp>

#include "plot/mask_figure.hpp"
#include "plot/mask_stats_chart.hpp"
#include "dsl/script.hpp"

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>

#include <algorithm>
#include <cmath>
#include <string>

using namespace sparsa;

namespace {

MaskSet compile(const std::string& text, int64_t n, int32_t block = 0) {
    auto script = dsl::script_parse(text, "test.pat");
    dsl::CompileOptions options;
    options.n = n;
    options.block = block;
    MaskSet set = dsl::script_compile(*script, options).masks;
    set.script_name = "test.pat";
    return set;
}

// -1: block (qb, kb) is not kept; 0: full; 1: partial.
int block_kind(const BlockMask& m, int64_t qb, int64_t kb) {
    for (int64_t e = m.row_ptr[static_cast<size_t>(qb)]; e < m.row_ptr[static_cast<size_t>(qb) + 1]; ++e) {
        if (m.col_idx[static_cast<size_t>(e)] == kb) return m.partial_idx[static_cast<size_t>(e)] < 0 ? 0 : 1;
    }
    return -1;
}

// What a drawn cell must be, computed from the mask alone (cells of one token or one block).
uint32_t expected_color(const BlockMask& m, const MaskPlacement& p, int64_t r, int64_t c) {
    if (p.token_level()) {
        const int kind = block_kind(m, r / m.block, c / m.block);
        if (kind < 0) return kMaskColorEmpty;
        if (kind == 0) return kMaskColorFull;
        return m.allowed(r, c) ? kMaskColorPartial : kMaskColorPartialOff;
    }
    REQUIRE(p.cell_tokens == m.block);
    const int kind = block_kind(m, r, c);
    return kind < 0 ? kMaskColorEmpty : kind == 0 ? kMaskColorFull : kMaskColorPartial;
}

// Checks every pixel of every cell of a placement against the mask; returns the cells checked.
int64_t check_cells(const Image& image, const BlockMask& m, const MaskPlacement& p) {
    int64_t checked = 0;
    for (int64_t r = 0; r < p.cells; ++r) {
        for (int64_t c = 0; c < p.cells; ++c) {
            const uint32_t want = expected_color(m, p, r, c);
            for (int dy = 0; dy < p.cell_pixels; ++dy) {
                for (int dx = 0; dx < p.cell_pixels; ++dx) {
                    const uint32_t got = image.at(p.x + static_cast<int>(c) * p.cell_pixels + dx, p.y + static_cast<int>(r) * p.cell_pixels + dy);
                    if (got != want) {
                        FAIL_CHECK("cell (" << r << ", " << c << ") pixel (" << dx << ", " << dy << "): 0x" << std::hex << got << ", expected 0x" << want);
                        return checked;
                    }
                }
            }
            ++checked;
        }
    }
    return checked;
}

bool inside(const PixelBox& b, const Image& image) {
    return b.x >= 0 && b.y >= 0 && b.x + b.w <= image.width && b.y + b.h <= image.height;
}

bool overlap(const PixelBox& a, const PixelBox& b) {
    return a.w > 0 && b.w > 0 && a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
}

PixelBox box_of(const MaskPlacement& p) { return {p.x, p.y, p.side, p.side}; }

// Pixels of a box darker than 0x60 in every channel: text ink (no mask colour is that dark).
int ink_pixels(const Image& image, const PixelBox& b) {
    int ink = 0;
    for (int y = b.y; y < b.y + b.h; ++y) {
        for (int x = b.x; x < b.x + b.w; ++x) {
            const uint32_t c = image.at(x, y);
            if ((c >> 16 & 0xff) < 0x60 && (c >> 8 & 0xff) < 0x60 && (c & 0xff) < 0x60) ++ink;
        }
    }
    return ink;
}

int count_color(const Image& image, const PixelBox& b, uint32_t color) {
    int count = 0;
    for (int y = b.y; y < b.y + b.h; ++y) {
        for (int x = b.x; x < b.x + b.w; ++x) count += image.at(x, y) == color;
    }
    return count;
}

const char* const kMix = R"(block 64
heads 4
layers 2
attend = window(64)
attend[head 1..2] = dilated(16, 3)
attend[head 2..3] = causal & (window(32) | strided(128))
attend[head 3..4] = global(first(70)) | window(8)
attend[layer 1..2, head 0..1] = random(2, seed = 7) | window(16)
)";

} // namespace

TEST_CASE("overview: every cell's pixels are its compiled mask's, block by block", "[plot]") {
    const MaskSet set = compile(kMix, 1000);
    const MaskOverviewLayout layout = mask_overview_layout(set, 900);
    const Image image = mask_overview_render(set, 900);
    REQUIRE(image.width == layout.width);
    REQUIRE(image.height == layout.height);
    REQUIRE(layout.cells.size() == 8);
    int64_t checked = 0;
    for (int64_t l = 0; l < set.layers; ++l) {
        for (int64_t h = 0; h < set.heads; ++h) {
            const MaskPlacement& p = layout.cells[static_cast<size_t>(l * set.heads + h)];
            CHECK(p.cell_tokens == 64);  // cells of ~200 pixels: blocks, not tokens (n = 1000)
            CHECK(p.cells == 16);
            checked += check_cells(image, set.at(l, h), p);
            CHECK(inside(box_of(p), image));
            const PixelBox& d = layout.densities[static_cast<size_t>(l * set.heads + h)];
            CHECK(d.w > 0);
            CHECK(ink_pixels(image, d) > 20);
            CHECK_FALSE(overlap(d, box_of(p)));
        }
    }
    CHECK(checked == 8 * 16 * 16);
    // The layer and head labels, the title and the legend hold text and stay clear of the cells.
    for (const auto* labels : {&layout.layer_labels, &layout.head_labels}) {
        for (const PixelBox& b : *labels) {
            REQUIRE(b.w > 0);
            CHECK(ink_pixels(image, b) > 10);
            for (const auto& p : layout.cells) CHECK_FALSE(overlap(b, box_of(p)));
        }
    }
    CHECK(ink_pixels(image, layout.title) > 200);
    CHECK(count_color(image, layout.legend, kMaskColorFull) > 20);
    CHECK(count_color(image, layout.legend, kMaskColorPartial) > 20);
    CHECK(count_color(image, layout.legend, kMaskColorEmpty) > 20);
    CHECK(ink_pixels(image, layout.legend) > 100);
}

TEST_CASE("overview: token by token when each token has a pixel, for 1 x 1 and 12 x 12", "[plot]") {
    SECTION("1 x 1: one large cell, drawn token by token") {
        const MaskSet set = compile("block 16\nattend = causal & (window(20) | strided(7))\n", 200);
        const MaskOverviewLayout layout = mask_overview_layout(set, 600);
        const Image image = mask_overview_render(set, 600);
        REQUIRE(layout.cells.size() == 1);
        const MaskPlacement& p = layout.cells[0];
        CHECK(p.token_level());
        CHECK(p.cell_pixels >= 2);
        CHECK(check_cells(image, set.at(0, 0), p) == 200 * 200);
        CHECK(inside(box_of(p), image));
        CHECK(layout.layer_labels[0].w > 0);
        CHECK(layout.head_labels[0].w > 0);
        CHECK(ink_pixels(image, layout.densities[0]) > 20);
    }
    SECTION("12 x 12 at 1200 pixels: every cell and label inside, no two labels overlapping") {
        const MaskSet set = compile("block 16\nheads 12\nlayers 12\nattend = dilated(8, 1 + h % 4) | global(first(16)) | window(8 * (l + 1))\n", 64);
        const MaskOverviewLayout layout = mask_overview_layout(set, 1200);
        const Image image = mask_overview_render(set, 1200);
        REQUIRE(layout.cells.size() == 144);
        for (int64_t i = 0; i < 144; ++i) {
            const MaskPlacement& p = layout.cells[static_cast<size_t>(i)];
            CHECK(p.token_level());  // n = 64 in cells of ~85 pixels
            CHECK(check_cells(image, set.at(i / 12, i % 12), p) == 64 * 64);
            const PixelBox& d = layout.densities[static_cast<size_t>(i)];
            CHECK(inside(d, image));
            if (i % 12 != 11) CHECK_FALSE(overlap(d, layout.densities[static_cast<size_t>(i + 1)]));
            if (i + 12 < 144) CHECK_FALSE(overlap(d, box_of(layout.cells[static_cast<size_t>(i + 12)])));
        }
        for (int i = 0; i < 12; ++i) {
            CHECK(ink_pixels(image, layout.layer_labels[static_cast<size_t>(i)]) > 10);
            CHECK(ink_pixels(image, layout.head_labels[static_cast<size_t>(i)]) > 10);
        }
        CHECK(inside(layout.title, image));
        CHECK(inside(layout.legend, image));
    }
}

TEST_CASE("overview: cells of many blocks are shaded by the share kept", "[plot]") {
    CHECK(mask_cell_color(0, 0, 100) == kMaskColorEmpty);
    CHECK(mask_cell_color(100, 100, 100) == kMaskColorFull);
    CHECK(mask_cell_color(1, 1, 1) == kMaskColorFull);
    CHECK(mask_cell_color(1, 0, 1) == kMaskColorPartial);
    // One block of 16,384 kept: a faint tint of the partial colour, nearer the empty colour.
    const uint32_t faint = mask_cell_color(1, 0, 16384);
    auto distance = [](uint32_t a, uint32_t b) {
        int d = 0;
        for (int s : {16, 8, 0}) d += std::abs(static_cast<int>(a >> s & 0xff) - static_cast<int>(b >> s & 0xff));
        return d;
    };
    CHECK(distance(faint, kMaskColorEmpty) < distance(faint, kMaskColorPartial) / 4);
    CHECK(faint != kMaskColorEmpty);
    CHECK(distance(mask_cell_color(50, 0, 100), kMaskColorPartial) < distance(faint, kMaskColorPartial));

    // n = 65,536 at block 16: 4096 blocks in a cell of at most ~270 pixels: groups of blocks,
    // each pixel the shade of its group's counts.
    const MaskSet set = compile("block 16\nattend = window(40) | global(first(16))\n", 65536);
    const MaskOverviewLayout layout = mask_overview_layout(set, 300);
    const Image image = mask_overview_render(set, 300);
    const MaskPlacement& p = layout.cells[0];
    REQUIRE(p.cell_tokens > 16);
    const BlockMask& m = set.at(0, 0);
    const int64_t group = p.cell_tokens / 16, blocks = m.q_blocks();
    for (int64_t r = 0; r < p.cells; r += 7) {
        for (int64_t c = 0; c < p.cells; ++c) {
            int64_t kept = 0, full = 0, area = 0;
            for (int64_t qb = r * group; qb < std::min(blocks, (r + 1) * group); ++qb) {
                for (int64_t kb = c * group; kb < std::min(blocks, (c + 1) * group); ++kb) {
                    const int kind = block_kind(m, qb, kb);
                    kept += kind >= 0;
                    full += kind == 0;
                    ++area;
                }
            }
            const uint32_t got = image.at(p.x + static_cast<int>(c) * p.cell_pixels, p.y + static_cast<int>(r) * p.cell_pixels);
            CHECK(got == mask_cell_color(kept, full, area));
        }
    }
}

TEST_CASE("mask figure: axis labels, ticks, legend and title hold text, clear of the mask", "[plot]") {
    const MaskSet set = compile(kMix, 1000);
    for (auto [w, h] : {std::pair{640, 640}, std::pair{240, 240}, std::pair{1000, 500}}) {
        CAPTURE(w, h);
        const MaskFigureLayout layout = mask_figure_layout(set, 1, 3, w, h);
        const Image image = mask_figure_render(set, 1, 3, w, h);
        REQUIRE(image.width == w);
        REQUIRE(image.height == h);
        CHECK(check_cells(image, set.at(1, 3), layout.mask) > 0);
        const PixelBox square = box_of(layout.mask);
        for (const PixelBox& b : {layout.title, layout.x_label, layout.y_label, layout.x_ticks, layout.y_ticks, layout.legend}) {
            CHECK(inside(b, image));
            CHECK_FALSE(overlap(b, square));
            CHECK(ink_pixels(image, b) > 10);
        }
        CHECK_FALSE(overlap(layout.x_label, layout.legend));
        CHECK_FALSE(overlap(layout.y_label, layout.y_ticks));
        CHECK_FALSE(overlap(layout.x_ticks, layout.x_label));
        // "Query" is written upwards: taller than wide; "Key" across.
        CHECK(layout.y_label.h > layout.y_label.w);
        CHECK(layout.x_label.w > layout.x_label.h);
        CHECK(count_color(image, layout.legend, kMaskColorFull) > 10);
        CHECK(count_color(image, layout.legend, kMaskColorPartial) > 10);
        CHECK(count_color(image, layout.legend, kMaskColorEmpty) > 10);
    }
    CHECK_THROWS_WITH(mask_figure_render(set, 2, 0, 640, 640), Catch::Contains("layer 2 is outside 0 to 1 (the set has 2 layers)"));
    CHECK_THROWS_WITH(mask_figure_render(set, 0, -1, 640, 640), Catch::Contains("head -1 is outside 0 to 3"));
    CHECK_THROWS_WITH(mask_figure_render(set, 0, 0, 100, 640), Catch::Contains("use 240 to 8192 each way"));
    const MaskSet wide = compile("block 16\nheads 200\nattend = window(8)\n", 64);
    CHECK_THROWS_WITH(mask_overview_render(wide, 800), Catch::Contains("200 heads do not fit in 800 pixels (use a width of at least"));
    CHECK_THROWS_WITH(mask_overview_render(set, 100), Catch::Contains("use 240 to 8192"));
}

TEST_CASE("mask figure: a dilated head drawn token by token shows its stripes", "[plot]") {
    // dilated(8, 4): k = q + 4 i, |i| <= 8. Every block it touches is partial.
    const MaskSet set = compile("block 64\nattend = dilated(8, 4)\n", 256);
    const MaskFigureLayout layout = mask_figure_layout(set, 0, 0, 640, 640);
    const Image image = mask_figure_render(set, 0, 0, 640, 640);
    const MaskPlacement& p = layout.mask;
    REQUIRE(p.token_level());
    REQUIRE(p.cell_pixels >= 1);
    CHECK(check_cells(image, set.at(0, 0), p) == 256 * 256);
    // Along query 128's row: kept every 4th key from 96 to 160, the 3 between not kept.
    const int y = p.y + 128 * p.cell_pixels + p.cell_pixels / 2;
    int stripes = 0;
    for (int k = 96; k <= 160; ++k) {
        const uint32_t got = image.at(p.x + k * p.cell_pixels + p.cell_pixels / 2, y);
        CHECK(got == ((k - 128) % 4 == 0 ? kMaskColorPartial : kMaskColorPartialOff));
        stripes += got == kMaskColorPartial;
    }
    CHECK(stripes == 17);
    // The same pattern at a length with fewer pixels than tokens: blocks, no stripes.
    const MaskSet long_set = compile("block 64\nattend = dilated(8, 4)\n", 4096);
    const MaskFigureLayout long_layout = mask_figure_layout(long_set, 0, 0, 640, 640);
    CHECK_FALSE(long_layout.mask.token_level());
    CHECK(count_color(mask_figure_render(long_set, 0, 0, 640, 640), box_of(long_layout.mask), kMaskColorPartialOff) == 0);
}

TEST_CASE("stats chart: each cell's colour and text are its head's density and block FLOPs", "[plot]") {
    const MaskSet set = compile(kMix, 1000);
    const MaskStatsChartLayout layout = mask_stats_chart_layout(set, 1000);
    const Image image = mask_stats_chart_render(set, 1000);
    REQUIRE(image.height == layout.height);
    const double n2 = 1000.0 * 1000.0;
    double max_flops = 0;
    for (int64_t i = 0; i < 8; ++i) {
        const BlockMask& m = *set.masks[static_cast<size_t>(i)];
        const BlockMaskStats s = block_mask_stats(m);
        int64_t block_pairs = 0;
        for (int64_t qb = 0; qb < m.q_blocks(); ++qb) {
            for (int64_t kb = 0; kb < m.k_blocks(); ++kb) block_pairs += block_kind(m, qb, kb) >= 0 ? block_valid_pairs(m, qb, kb) : 0;
        }
        CHECK(layout.panels[0].values[static_cast<size_t>(i)] == Approx(static_cast<double>(s.kept_pairs) / n2));
        CHECK(layout.panels[1].values[static_cast<size_t>(i)] == Approx(static_cast<double>(block_pairs) / n2));
        CHECK(layout.panels[1].values[static_cast<size_t>(i)] >= layout.panels[0].values[static_cast<size_t>(i)]);
        max_flops = std::max(max_flops, static_cast<double>(block_pairs) / n2);
    }
    CHECK(layout.scale_max == Approx(max_flops));
    for (const MaskStatsPanel& panel : layout.panels) {
        CHECK(ink_pixels(image, panel.title) > 20);
        for (size_t i = 0; i < 8; ++i) {
            const PixelBox& c = panel.cells[i];
            CHECK(image.at(c.x + 2, c.y + 2) == mask_stats_color(panel.values[i], layout.scale_max));
            REQUIRE(panel.value_text[i].w > 0);
            CHECK_FALSE(count_color(image, panel.value_text[i], image.at(c.x + 2, c.y + 2)) == panel.value_text[i].w * panel.value_text[i].h);
        }
        for (const PixelBox& b : panel.layer_labels) CHECK(ink_pixels(image, b) > 5);
        for (const PixelBox& b : panel.head_labels) CHECK(ink_pixels(image, b) > 5);
    }
    CHECK(mask_stats_color(0, 1) == 0xf7fbff);
    CHECK(mask_stats_color(1, 1) == 0x08306b);
    CHECK(ink_pixels(image, layout.title) > 200);
    CHECK(inside(layout.scale_labels, image));
}

TEST_CASE("PNG bytes decode to the rendered pixels", "[plot]") {
    const MaskSet set = compile(kMix, 1000);
    for (int which = 0; which < 3; ++which) {
        const Image image = which == 0 ? mask_figure_render(set, 0, 1, 500, 400) : which == 1 ? mask_overview_render(set, 700) : mask_stats_chart_render(set, 700);
        const std::vector<uint8_t> png = which == 0 ? mask_figure_png(set, 0, 1, 500, 400) : which == 1 ? mask_overview_png(set, 700) : mask_stats_chart_png(set, 700);
        int w = 0, h = 0, channels = 0;
        uint8_t* decoded = stbi_load_from_memory(png.data(), static_cast<int>(png.size()), &w, &h, &channels, 3);
        REQUIRE(decoded != nullptr);
        CHECK(w == image.width);
        CHECK(h == image.height);
        CHECK(std::equal(image.rgb.begin(), image.rgb.end(), decoded));
        stbi_image_free(decoded);
    }
    const Image small = mask_figure_render(set, 0, 0, 240, 240);
    const std::vector<uint8_t> rgba = image_rgba(small);
    REQUIRE(rgba.size() == 240 * 240 * 4);
    CHECK(rgba[3] == 255);
    CHECK(rgba[4 * 1000 + 1] == small.rgb[3 * 1000 + 1]);
}

TEST_CASE("overview: a content-based head is labelled by its family, not by its fixed part's density", "[plot]") {
    MaskSet set = compile("block 64\nheads 2\nattend = window(64)\n", 512);
    const MaskOverviewLayout plain = mask_overview_layout(set, 600);
    ContentSpec spec;
    spec.kind = ContentKind::lsh;
    spec.buckets = 8;
    spec.chunk = 64;
    set.content = {std::make_shared<const ContentSpec>(spec), nullptr};   // head 0: window(64) | lsh(8)
    const MaskOverviewLayout labelled = mask_overview_layout(set, 600);
    REQUIRE(plain.densities[0].w > 0);
    CHECK(labelled.densities[0].w > 0);
    CHECK(labelled.densities[0].w < plain.densities[0].w);   // "lsh" is narrower than "25.00%"-like text
    CHECK(labelled.densities[1].w == plain.densities[1].w);  // head 1 keeps its density
    CHECK(labelled.title.h > plain.title.h);                 // the note line under the title
}
