// Golden cases of the language: tests/dsl/cases/NAME.pat beside NAME.expect, which holds the
// exact diagnostics, or the compiled summary of a clean script. Adding a case is adding two
// files. Regenerate after a deliberate change with SPARSA_UPDATE_GOLDEN=1 (then read the diff).
//
// A case may say how to compile it in a comment line: `# golden: n=300 block=32` (default
// n=256 and the script's own block). Content-based heads (lsh, anchors, favor) are compiled
// (CompileOptions::content) and their spec is shown after the head's fixed part, files relative
// to the cases folder. Below the harness, the content specs the compiler fills, field by field.
#include "dsl/script.hpp"
#include "io/mask_io.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <unistd.h>
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

// [SECTION] Content-based heads: the spec the compiler fills, field by field

namespace {

Compiled compile_text(const std::string& text, int64_t n, int32_t block = 0, const std::string& path = {}) {
    ScriptPtr script = script_parse(text, path.empty() ? "content.pat" : path, path);
    CompileOptions options;
    options.n = n;
    options.block = block;
    options.content = true;
    return script_compile(*script, options);
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const ScriptError& e) {
        std::string out;
        for (const auto& d : e.diagnostics()) out += diagnostic_format(d);
        return out;
    }
    return "";
}

} // namespace

TEST_CASE("content: each head's spec, its fixed part, sharing and causal", "[golden][content]") {
    const Compiled c = compile_text("block 32\ncausal\nheads 4\nlayers 2\n"
                                    "attend = window(4) | lsh(16, rounds = 2, seed = 9, shared_qk = false)\n"
                                    "attend[head 1] = favor(32, seed = 2, redraw = 5)\n"
                                    "attend[head 2] = lsh(16, 2, seed = 9, shared_qk = false) | window(4)\n"
                                    "attend[layer 1, head 3] = window(4)\n",
                                    300);
    const MaskSet& set = c.masks;
    REQUIRE(set.content.size() == 8);
    const ContentSpec& lsh = *set.content[0];
    CHECK(lsh.kind == ContentKind::lsh);
    CHECK(lsh.buckets == 16);
    CHECK(lsh.rounds == 2);
    CHECK(lsh.chunk == 32);  // the script's block
    CHECK(lsh.seed == 9);
    CHECK_FALSE(lsh.shared_qk);
    CHECK(lsh.causal);
    CHECK(lsh.file.empty());
    // Equal specs of different lines are one object; so are the fixed parts.
    CHECK(set.content[2].get() == set.content[0].get());
    CHECK(set.content[4].get() == set.content[0].get());
    CHECK(set.masks[2].get() == set.masks[0].get());
    const ContentSpec& favor = *set.content[1];
    CHECK(favor.kind == ContentKind::favor);
    CHECK(favor.features == 32);
    CHECK(favor.seed == 2);
    CHECK(favor.redraw == 5);
    CHECK(favor.causal);
    CHECK(set.content[1].get() == set.content[5].get());
    CHECK(set.content[7] == nullptr);  // layer 1, head 3: the fixed window alone
    CHECK(set.content[3].get() == set.content[0].get());
    // The fixed part is the window under causal, exactly as a script of the window alone.
    const Compiled window = compile_text("block 32\ncausal\nattend = window(4)\n", 300);
    CHECK(*set.masks[0] == window.masks.at(0, 0));
    CHECK(*set.masks[7] == window.masks.at(0, 0));
    CHECK(block_mask_stats(*set.masks[1]).kept_blocks == 0);  // favor: no mask
    // No empty-row warning for content heads (favor's and lsh's rows get keys per input).
    for (const auto& w : c.warnings) CHECK(w.message.find("no allowed key") == std::string::npos);
}

TEST_CASE("content: chunk follows the compile's block; a set without families has no content", "[golden][content]") {
    CHECK(compile_text("block 16\nattend = lsh(8)\n", 100, 64).masks.content[0]->chunk == 64);
    CHECK(compile_text("block 16\nattend = lsh(8, chunk = 5)\n", 100, 64).masks.content[0]->chunk == 5);
    CHECK(compile_text("attend = window(8)\n", 100).masks.content.empty());
    CHECK_FALSE(compile_text("attend = lsh(8)\n", 100).masks.content[0]->causal);
}

TEST_CASE("content: files become absolute paths, resolved against the script's folder", "[golden][content]") {
    const fs::path folder = fs::absolute(fs::path(SPARSA_TEST_DIR) / "dsl" / "cases").lexically_normal();
    const std::string path = (folder / "inline.pat").string();
    const Compiled c = compile_text("block 16\nheads 2\nattend = anchors(4, fit = \"content/anchors_1x4x16.npz\")\n"
                                    "attend[head 1] = lsh(8, rounds = 2, file = \"content/../content/rotations_2x16x4.npy\")\n",
                                    64, 0, path);
    CHECK(c.masks.content[0]->file == (folder / "content" / "anchors_1x4x16.npz").string());
    CHECK(c.masks.content[0]->buckets == 4);
    CHECK(c.masks.content[1]->file == (folder / "content" / "rotations_2x16x4.npy").string());
    // A script given as text resolves against the current folder, and says so when it is not there.
    const std::string missing = error_of([] { compile_text("attend = favor(8, file = \"no/such.npy\")\n", 64); });
    CHECK(missing.find("favor: file 'no/such.npy' not found (looked for no/such.npy, relative to the current folder)") !=
          std::string::npos);
}

TEST_CASE("content: tools that need every pair refuse the families; check waits for n", "[golden][content]") {
    ScriptPtr script = script_parse("block 16\nattend = window(2) | lsh(64)\n", "x.pat");
    CompileOptions options;
    options.n = 128;
    const std::string refused = error_of([&] { script_compile(*script, options); });
    CHECK(refused.find("lsh(64, chunk = 16) is content-based: its pairs are realised from Q and K when attention runs, "
                       "and this tool needs every pair beforehand") != std::string::npos);
    // sparsa check without --n evaluates at a stand-in n: buckets > n waits for the compile.
    CHECK(error_of([&] { script_evaluate_all(*script, 32, 0, false); }).empty());
    CHECK(error_of([&] { script_evaluate_all(*script, 32, 0, true); }).find("64 buckets is more than the n = 32 tokens") !=
          std::string::npos);
    options.content = true;
    options.n = 64;
    CHECK(script_compile(*script, options).masks.content[0]->buckets == 64);  // buckets == n is allowed
}

TEST_CASE("content: a mask file with content heads is refused by load()", "[golden][content]") {
    const fs::path dir = fs::temp_directory_path() / ("sparsa-content-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const Compiled c = compile_text("attend = window(2) | lsh(8)\n", 64);
    mask_set_save(c.masks, (dir / "m.npz").string());
    CHECK(mask_set_load((dir / "m.npz").string()).content.at(0)->buckets == 8);
    const std::string refused = error_of([&] { compile_text("attend = load(\"m.npz\")\n", 64, 0, (dir / "x.pat").string()); });
    CHECK(refused.find("load: 'm.npz' has content-based heads (lsh, anchors or favor): load reads fixed masks only") !=
          std::string::npos);
    fs::remove_all(dir);
}

TEST_CASE("content: a union thousands deep splits without recursion", "[golden][content]") {
    ContentSpec spec;
    spec.buckets = 4;
    spec.chunk = 16;
    PatternPtr p = pattern_content(spec);
    for (int i = 0; i < 20000; ++i) p = i % 2 ? pattern_union(p, pattern_window(i % 7, 0)) : pattern_union(pattern_window(i % 5, 1), p);
    const PatternContentSplit split = pattern_content_split(p);
    REQUIRE(split.content);
    CHECK(split.content->content->buckets == 4);
    CHECK_FALSE(split.fixed->content);
    CHECK(pattern_compile(*split.fixed, 200, 16, 1) == pattern_compile(*pattern_window(6, 1), 200, 16, 1));
    CHECK_THROWS_WITH(pattern_union(p, pattern_content(spec)), Catch::Contains("two content-based families"));
    CHECK_THROWS_WITH(pattern_intersect(p, pattern_causal()), Catch::Contains("not intersected"));
}
