// An RGB image in memory, and its PNG encoding: what every picture of plot/ returns.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

struct Image {
    int width = 0, height = 0;
    std::vector<uint8_t> rgb;  // [height, width, 3]

    // The colour of pixel (x, y) as 0xRRGGBB (no bounds check).
    uint32_t at(int x, int y) const {
        const uint8_t* p = rgb.data() + (static_cast<size_t>(y) * static_cast<size_t>(width) + static_cast<size_t>(x)) * 3;
        return uint32_t{p[0]} << 16 | uint32_t{p[1]} << 8 | p[2];
    }
};

// A rectangle of pixels [x, x + w) x [y, y + h), e.g. where a picture put some text (w = 0:
// nothing drawn there).
struct PixelBox {
    int x = 0, y = 0, w = 0, h = 0;
};

// The same pixels with an opaque alpha channel: [height, width, 4].
std::vector<uint8_t> image_rgba(const Image& image);

// The bytes of a PNG file of the image (stb_image_write). description (UTF-8, "" for none): what
// the picture shows in words, as an uncompressed iTXt chunk with the keyword "Description" after
// the header, for screen readers and for tools that list a figure's contents without looking.
// Throws sparsa::Error if encoding fails.
std::vector<uint8_t> image_png_encode(const Image& image, const std::string& description = "");

// Writes the image as a PNG file to `path`, whole or not at all (encoded in memory first, then
// an AtomicFile, so within a cli OutputSet it appears only with the command's other outputs).
void image_png_save(const Image& image, const std::string& path, const std::string& description = "");

} // namespace sparsa
