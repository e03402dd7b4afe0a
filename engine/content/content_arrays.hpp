// Explicit arrays for content-based heads, given instead of the seed's random numbers (lsh
// rotations, FAVOR+ features) or fitted beforehand (anchors): what the files a script names
// (ContentSpec::file) hold, read by io/content_files.hpp and handed to the engines, which read no
// files themselves. The engines check the shapes against the head they run (d, buckets, rounds).
#pragma once

#include "engine/content/content_spec.hpp"
#include "engine/error.hpp"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sparsa {

// One file's array, as float32 in C order.
//   lsh: rotations [rounds, d, buckets / 2]; anchors: [rounds, k, d] (unit rows); favor: [m, d].
struct ContentArray {
    std::string path;              // the file it came from, named in messages
    std::vector<int64_t> shape;
    std::vector<float> values;     // [product of shape]
};

// Arrays by ContentSpec::file, exactly as the spec writes it.
using ContentArrays = std::map<std::string, ContentArray>;

// "[2, 64, 32]"
inline std::string content_shape_text(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i > 0 ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// The array of spec.file: nullptr when the spec names no file (the seed's numbers). Throws
// sparsa::Error naming `what` when it names one that `arrays` (may be nullptr) does not hold.
inline const ContentArray* content_array_find(const ContentArrays* arrays, const ContentSpec& spec,
                                              const std::string& what) {
    if (spec.file.empty()) return nullptr;
    if (arrays != nullptr) {
        const auto it = arrays->find(spec.file);
        if (it != arrays->end()) return &it->second;
    }
    throw Error(what + ": the file '" + spec.file +
                "' named by the script was not loaded (read the script's content files with content_files_load, "
                "io/content_files.hpp, and pass them in the options)");
}

// Throws sparsa::Error unless array.shape == expected: "what: FILE has shape [..] but this head
// needs [..] (meaning)", meaning saying what the dimensions are.
inline void content_array_check_shape(const ContentArray& array, const std::vector<int64_t>& expected,
                                      const std::string& what, const std::string& meaning) {
    if (array.shape == expected) return;
    throw Error(what + ": " + array.path + " has shape " + content_shape_text(array.shape) + " but this head needs " +
                content_shape_text(expected) + " (" + meaning + ")");
}

} // namespace sparsa
