// load("mask.npz") in the page: a browser page has no files to read, so the script's load()
// says so (dsl/eval.cpp reports it at the call) instead of linking io/ and nlohmann json.
#include "io/mask_io.hpp"

#include "engine/error.hpp"

namespace sparsa {

MaskSet mask_set_load(const std::string& path) {
    throw Error("'" + path + "' cannot be read in the page, which has no files (use load() with the sparsa "
                "command, e.g. sparsa compile script.pat --n 4096)");
}

} // namespace sparsa
