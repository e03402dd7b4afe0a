// RGBA images and their PNG files (stb_image / stb_image_write from Debian's libstb).
#include "viz/image.hpp"

#include "io/atomic_file.hpp"
#include "engine/error.hpp"

#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

namespace sparsa::viz {

uint32_t Image::pixel(int x, int y) const {
    const uint8_t* p = &rgba[(static_cast<size_t>(y) * width + x) * 4];
    return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}

void Image::set(int x, int y, uint32_t v) {
    uint8_t* p = &rgba[(static_cast<size_t>(y) * width + x) * 4];
    p[0] = static_cast<uint8_t>(v >> 24);
    p[1] = static_cast<uint8_t>(v >> 16);
    p[2] = static_cast<uint8_t>(v >> 8);
    p[3] = static_cast<uint8_t>(v);
}

Image image_make(int width, int height, uint32_t fill) {
    if (width < 1 || height < 1) throw Error("image size " + std::to_string(width) + " x " + std::to_string(height) + " is empty");
    Image image;
    image.width = width;
    image.height = height;
    image.rgba.resize(static_cast<size_t>(width) * height * 4);
    for (int y = 0; y < height; ++y) {
        for (int x = 0; x < width; ++x) image.set(x, y, fill);
    }
    return image;
}

namespace {
void append(void* context, void* data, int size) {
    auto* out = static_cast<std::vector<uint8_t>*>(context);
    const auto* bytes = static_cast<const uint8_t*>(data);
    out->insert(out->end(), bytes, bytes + size);
}
} // namespace

void image_png_save(const Image& image, const std::string& path) {
    std::vector<uint8_t> png;
    if (stbi_write_png_to_func(append, &png, image.width, image.height, 4, image.rgba.data(), image.width * 4) == 0 ||
        png.empty()) {
        throw Error("cannot encode '" + path + "' as PNG (" + std::to_string(image.width) + " x " +
                    std::to_string(image.height) + ")");
    }
    AtomicFile file(path);
    file.write(png.data(), png.size());
    file.commit();
}

Image image_png_load(const std::string& path) {
    int width = 0, height = 0, channels = 0;
    uint8_t* data = stbi_load(path.c_str(), &width, &height, &channels, 4);
    if (data == nullptr) {
        throw Error("cannot read image '" + path + "': " + (stbi_failure_reason() ? stbi_failure_reason() : "unknown reason"));
    }
    Image image;
    image.width = width;
    image.height = height;
    image.rgba.assign(data, data + static_cast<size_t>(width) * height * 4);
    stbi_image_free(data);
    return image;
}

} // namespace sparsa::viz
