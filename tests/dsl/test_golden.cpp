// Golden cases of the language: tests/dsl/cases/NAME.pat beside NAME.expect, which holds the
// exact diagnostics, or the compiled summary of a clean script. Adding a case is adding two
// files. Regenerate after a deliberate change with SPARSA_UPDATE_GOLDEN=1 (then read the diff).
//
// A case may say how to compile it in a comment line: `# golden: n=300 block=32` (default
// n=256 and the script's own block). Content-based heads (lsh, anchors, favor) are compiled
// (CompileOptions::content) and their spec is shown after the head's fixed part, files relative
// to the cases folder.
#include "dsl/script.hpp"
#include "io/mask_io.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

namespace fs = std::filesystem;
using namespace sparsa;
using namespace sparsa::dsl;

namespace {

std::string read_text(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

std::string summary(const Compiled& c, const std::string& folder) {
    std::ostringstream out;
    const MaskSet& set = c.masks;
    out << "n=" << set.n << " block=" << set.block << " layers=" << set.layers << " heads=" << set.heads
        << " distinct=" << set.unique_masks().size();
    if (!set.content.empty()) {
        std::vector<const ContentSpec*> specs;
        for (const auto& spec : set.content) {
            if (spec && std::find(specs.begin(), specs.end(), spec.get()) == specs.end()) specs.push_back(spec.get());
        }
        out << " content_specs=" << specs.size();
    }
    out << "\n";
    for (int64_t l = 0; l < set.layers; ++l) {
        for (int64_t h = 0; h < set.heads; ++h) {
            BlockMaskStats s = block_mask_stats(set.at(l, h));
            out << "L" << l << " H" << h << ": kept=" << s.kept_blocks << " full=" << s.full_blocks
                << " partial=" << s.partial_blocks << " pairs=" << s.kept_pairs << " empty_rows=" << s.empty_rows;
            if (!set.content.empty() && set.content[static_cast<size_t>(l * set.heads + h)]) {
                const ContentSpec& spec = *set.content[static_cast<size_t>(l * set.heads + h)];
                std::string text = content_spec_text(spec);
                for (size_t at = text.find(folder); at != std::string::npos; at = text.find(folder)) text.erase(at, folder.size());
                out << " | " << text << (spec.causal ? " causal" : "");
            }
            out << "\n";
        }
    }
    return out.str();
}

// What a case produces: the diagnostics of a failure, or warnings then the summary.
std::string run_case(const fs::path& pat) {
    std::string text = read_text(pat);
    int64_t n = 256;
    int32_t block = 0;
    std::smatch m;
    if (std::regex_search(text, m, std::regex(R"(# golden:.*\bn=(\d+))"))) n = std::stoll(m[1]);
    if (std::regex_search(text, m, std::regex(R"(# golden:.*\bblock=(\d+))"))) block = std::stoi(m[1]);
    std::string out;
    try {
        ScriptPtr script = script_parse(text, pat.filename().string(), pat.string());
        CompileOptions options;
        options.n = n;
        options.block = block;
        options.content = true;
        Compiled compiled = script_compile(*script, options);
        for (const auto& w : compiled.warnings) out += diagnostic_format(w);
        out += summary(compiled, fs::absolute(pat.parent_path()).lexically_normal().string() + "/");
    } catch (const ScriptError& e) {
        for (const auto& d : e.diagnostics()) out += diagnostic_format(d);
    }
    return out;
}

} // namespace

TEST_CASE("golden cases: diagnostics and compiled summaries", "[golden]") {
    fs::path dir = fs::path(SPARSA_TEST_DIR) / "dsl" / "cases";
    std::vector<fs::path> cases;
    for (const auto& entry : fs::directory_iterator(dir)) {
        if (entry.path().extension() == ".pat") cases.push_back(entry.path());
    }
    std::sort(cases.begin(), cases.end());
    REQUIRE(cases.size() >= 30);
    const bool update = std::getenv("SPARSA_UPDATE_GOLDEN") != nullptr;
    for (const auto& pat : cases) {
        fs::path expect = fs::path(pat).replace_extension(".expect");
        std::string got = run_case(pat);
        if (update) {
            std::ofstream(expect, std::ios::binary) << got;
            continue;
        }
        INFO("case " << pat.filename().string() << " (regenerate with SPARSA_UPDATE_GOLDEN=1)");
        REQUIRE(fs::exists(expect));
        CHECK(got == read_text(expect));
    }
}
