// libFuzzer target over the pattern language: parse, check, and (for small models) evaluate and
// compile whatever bytes come in. Any crash, sanitizer report or uncaught exception is a bug;
// a ScriptError or sparsa::Error is the correct answer to bad input.
#include "dsl/script.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > 4096) return 0;  // scripts are short; long inputs only slow the search
    std::string text(reinterpret_cast<const char*>(data), size);
    try {
        sparsa::dsl::ScriptPtr script = sparsa::dsl::script_parse(text, "fuzz.pat");
        const auto& settings = sparsa::dsl::script_settings(*script);
        if (settings.heads * settings.layers <= 16) {
            sparsa::dsl::CompileOptions options;
            options.n = 97;  // not a multiple of any block size: exercises the short last block
            options.block = 16;
            options.threads = 1;
            sparsa::dsl::script_compile(*script, options);
        }
    } catch (const sparsa::Error&) {
        // A diagnostic: the expected answer to a bad script.
    }
    return 0;
}
