// RGBA images of the viewer's views (built without OpenGL, so tests need no display) and PNG files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa::viz {

struct Image {
    int width = 0;
    int height = 0;
    std::vector<uint8_t> rgba;  // [height, width, 4] bytes, row 0 at the top

    uint32_t pixel(int x, int y) const;           // 0xRRGGBBAA
    void set(int x, int y, uint32_t rgba_value);  // 0xRRGGBBAA
};

Image image_make(int width, int height, uint32_t fill);  // fill: 0xRRGGBBAA

// Writes the image as PNG to `path` whole or not at all (AtomicFile). Throws sparsa::Error.
void image_png_save(const Image& image, const std::string& path);

// Reads a PNG (or any image stb_image reads) as RGBA. Throws sparsa::Error naming the path.
Image image_png_load(const std::string& path);

} // namespace sparsa::viz
