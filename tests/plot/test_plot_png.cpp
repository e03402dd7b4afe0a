// Line plots' PNG files (plot/plot_png.*): the description chunk they carry (image_png_encode's
// iTXt "Description") and that a PNG decoder still reads the same pixels past it.
#include <catch2/catch.hpp>
#include "plot/plot_png.hpp"
#include "io/npz.hpp"
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

using namespace sparsa;

namespace {

uint32_t be32(const std::vector<uint8_t>& b, size_t at) {
    return uint32_t{b[at]} << 24 | uint32_t{b[at + 1]} << 16 | uint32_t{b[at + 2]} << 8 | uint32_t{b[at + 3]};
}

} // namespace

TEST_CASE("plot PNG: the description chunk after the header, and the same pixels", "[plot]") {
    Plot p;
    p.title = "accuracy by depth";
    p.x_label = "depth";
    p.y_label = "accuracy";
    p.y_percent = true;
    p.series.push_back({"dense", {0, 1}, {0.9, 0.8}, 0x000000});
    p.series.push_back({"", {0, 1}, {0.5, 0.5}, 0x808080});   // no legend entry: not named
    p.series.push_back({"diagonal ± sd", {0, 1}, {0.03, 0.04}, 0x8c564b});
    const std::string want = "accuracy by depth; x: depth; y: accuracy; series: dense, diagonal ± sd";
    CHECK(plot_description(p) == want);

    const std::vector<uint8_t> png = plot_png_encode(p, 400, 300);
    // signature, IHDR (13 bytes of data), then the iTXt chunk
    REQUIRE(png.size() > 64);
    CHECK(std::string(png.begin() + 12, png.begin() + 16) == "IHDR");
    const size_t at = 8 + 25;
    const uint32_t length = be32(png, at);
    CHECK(std::string(png.begin() + at + 4, png.begin() + at + 8) == "iTXt");
    const std::string data(png.begin() + at + 8, png.begin() + at + 8 + length);
    CHECK(data == std::string("Description") + std::string(5, '\0') + want);
    CHECK(be32(png, at + 8 + length) == crc32_update(0, png.data() + at + 4, 4 + length));

    int w = 0, h = 0, channels = 0;
    uint8_t* decoded = stbi_load_from_memory(png.data(), static_cast<int>(png.size()), &w, &h, &channels, 3);
    REQUIRE(decoded != nullptr);
    const std::vector<uint8_t> rgb = plot_render(p, 400, 300);
    CHECK(w == 400);
    CHECK(h == 300);
    CHECK(std::equal(rgb.begin(), rgb.end(), decoded));
    stbi_image_free(decoded);
}
