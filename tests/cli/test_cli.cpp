// The sparsa command as a user meets it: exit codes, messages, and no partial output.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "cli_test.hpp"
#include "io/mask_io.hpp"
#include "plot/mask_figure.hpp"  // the mask colours (constants only: the pictures come from sparsa)

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace fs = std::filesystem;
using namespace cli_test;
using sparsa::kMaskColorEmpty, sparsa::kMaskColorFull, sparsa::kMaskColorPartial, sparsa::kMaskColorPartialOff;

TEST_CASE("sparsa check: clean scripts exit 0, bad ones 1 with FILE:LINE:COL", "[cli]") {
    Result ok = run("check " + example("bigbird.pat") + " " + example("causal.pat"));
    CHECK(ok.code == 0);
    CHECK(ok.out.find("bigbird.pat: ok (6 layers x 8 heads, block 64)") != std::string::npos);

    fs::path bad = scratch("typo.pat");
    std::ofstream(bad) << "heads 2\nattend = window(8) | globl(first(4))\n";
    Result r = run("check '" + bad.string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("typo.pat:2:22: error: unknown pattern 'globl'") != std::string::npos);
    CHECK(r.out.find("did you mean 'global'?") != std::string::npos);

    r = run("check '" + (bad.parent_path() / "missing.pat").string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("No such file or directory") != std::string::npos);
}

TEST_CASE("sparsa compile writes whole files or none", "[cli]") {
    fs::path npz = scratch("bigbird.npz"), dense = scratch("bigbird.npy");
    Result r = run("compile " + example("bigbird.pat") + " --n 300 -o '" + npz.string() + "' --dense '" + dense.string() + "'");
    CHECK(r.code == 0);
    CHECK(fs::file_size(npz) > 0);
    CHECK(fs::file_size(dense) == 128 + 6 * 8 * 300 * 300);  // npy header + [6, 8, 300, 300] bools

    // --dense above 8192 is refused before anything is compiled or written.
    fs::path big = scratch("big.npy"), big_npz = scratch("big.npz");
    r = run("compile " + example("local_window.pat") + " --n 9000 --dense '" + big.string() + "' -o '" + big_npz.string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("limited to N <= 8192") != std::string::npos);
    CHECK_FALSE(fs::exists(big));
    CHECK_FALSE(fs::exists(big_npz));

    // A folder that does not exist: a clear error, no temporary file left anywhere.
    r = run("compile " + example("bigbird.pat") + " --n 300 -o '" + (npz.parent_path() / "nope" / "x.npz").string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("nope") != std::string::npos);
    CHECK_FALSE(folder_has_temp_files(npz.parent_path()));

    // A script with errors writes nothing.
    fs::path bad = scratch("bad.pat"), out = scratch("bad.npz");
    std::ofstream(bad) << "attend = window(3\n";
    r = run("compile '" + bad.string() + "' --n 100 -o '" + out.string() + "'");
    CHECK(r.code == 1);
    CHECK_FALSE(fs::exists(out));
}

TEST_CASE("sparsa options are checked and named in errors", "[cli]") {
    Result r = run("compile " + example("bigbird.pat") + " --n abc");
    CHECK(r.code == 1);
    CHECK(r.out.find("--n expects an integer; got 'abc'") != std::string::npos);
    r = run("compile " + example("bigbird.pat"));
    CHECK(r.code == 1);
    CHECK(r.out.find("--n is required") != std::string::npos);
    r = run("compile " + example("bigbird.pat") + " --n 100 --block 48");
    CHECK(r.code == 1);
    CHECK(r.out.find("use 16, 32, 64, 128 or 256") != std::string::npos);
    r = run("stats " + example("bigbird.pat") + " --n 100 --frobnicate");
    CHECK(r.code == 1);
    CHECK(r.out.find("unknown option '--frobnicate'") != std::string::npos);
    r = run("frobnicate");
    CHECK(r.code == 2);
    r = run("show " + example("bigbird.pat") + " --n 300 --layer 99");
    CHECK(r.code == 1);
    CHECK(r.out.find("--layer must be from 0 to 5") != std::string::npos);
}

TEST_CASE("sparsa stats --json adds up", "[cli]") {
    Result r = run("stats " + example("per_head_mix.pat") + " --n 1000 --json");
    REQUIRE(r.code == 0);
    auto j = nlohmann::json::parse(r.out);
    CHECK(j["layers"] == 4);
    CHECK(j["heads"] == 8);
    int64_t pairs = 0;
    for (const auto& m : j["masks"]) pairs += m["kept_pairs"].get<int64_t>();
    CHECK(j["total"]["kept_pairs"].get<int64_t>() == pairs);
    CHECK(j["masks"].size() == 32);
}

TEST_CASE("sparsa show draws the block grid", "[cli]") {
    Result r = run("show " + example("local_window.pat") + " --n 512 --ascii");
    REQUIRE(r.code == 0);
    // window(128), 64-token blocks: blocks within 127 tokens are full, those reaching 128+ partial.
    CHECK(r.out.find("       0 ##+.....\n") != std::string::npos);
    CHECK(r.out.find("     192 .+###+..\n") != std::string::npos);
}

TEST_CASE("sparsa stats and compile warn when the layers cannot connect every pair", "[cli][reach]") {
    fs::path script = scratch("window32.pat");
    std::ofstream(script) << "# 24 layers of window(32): 8192 / 32 = 256 layers would be needed\nlayers 24\nattend = window(32)\n";
    Result r = run("stats '" + script.string() + "' --n 8192 --brief");
    CHECK(r.code == 0);
    CHECK(r.out.find("window32.pat:3:1: warning: some query cannot reach some key within 24 layers: 82.1% of pairs are "
                     "still out of reach (it would need 256 layers; token resolution)") != std::string::npos);
    CHECK(r.out.find("raise `layers` to 256") != std::string::npos);
    r = run("compile '" + script.string() + "' --n 8192");
    CHECK(r.code == 0);
    CHECK(r.out.find("within 24 layers") != std::string::npos);
    r = run("stats '" + script.string() + "' --n 8192 --json");
    REQUIRE(r.code == 0);
    auto j = nlohmann::json::parse(r.out);
    REQUIRE(j["warnings"].size() == 1);
    CHECK(j["warnings"][0]["line"] == 3);
    // Connected within its layers: no such warning.
    r = run("stats " + example("bigbird.pat") + " --n 4096 --brief");
    CHECK(r.code == 0);
    CHECK(r.out.find("cannot reach") == std::string::npos);
}

TEST_CASE("sparsa reach: coverage, layers needed, one token, JSON, PNG and .npy", "[cli][reach]") {
    fs::path script = scratch("reach32.pat");
    std::ofstream(script) << "layers 24\nattend = window(32)\n";
    const std::string file = "'" + script.string() + "'";
    Result r = run("reach " + file + " --n 8192");
    REQUIRE(r.code == 0);
    CHECK(r.out.find("token resolution (exact)") != std::string::npos);
    CHECK(r.out.find("layers needed to connect every pair: 256 (past the script's layers, the last layer repeats)") != std::string::npos);
    CHECK(r.out.find("pairs out of reach after 24 layers: 55,108,352 (82.12%)") != std::string::npos);

    r = run("reach " + file + " --n 8192 --json");
    REQUIRE(r.code == 0);
    auto j = nlohmann::json::parse(r.out);
    CHECK(j["layers_needed"] == 256);
    CHECK(j["coverage"].size() == 257);
    CHECK(j["coverage"][256] == 1.0);
    CHECK(j["out_of_reach"] == 55108352);

    r = run("reach " + file + " --n 8192 --token 0 --direction out --json");
    REQUIRE(r.code == 0);
    j = nlohmann::json::parse(r.out);
    REQUIRE(j["sizes"].size() == 25);
    for (int l = 0; l <= 24; ++l) CHECK(j["sizes"][static_cast<size_t>(l)] == 32 * l + 1);
    CHECK(j["layers_to_all"].is_null());

    // Above 8192 tokens: block resolution, said so; one token stays exact.
    r = run("reach " + file + " --n 20000 --token 10000");
    CHECK(r.code == 0);
    CHECK(r.out.find("     24          1,537") != std::string::npos);  // 2 * 24 * 32 + 1
    r = run("reach " + example("bigbird.pat") + " --n 20000");
    CHECK(r.code == 0);
    CHECK(r.out.find("block resolution, nodes of 64 tokens (over-approximates)") != std::string::npos);

    // --png: a whole PNG; --dense: [layers, N, N] bools, [l, q, k] = |q - k| <= 32 (l + 1).
    fs::path png = scratch("reach.png"), dense = scratch("reach.npy");
    r = run("reach " + file + " --n 100 --png '" + png.string() + "' --dense '" + dense.string() + "'");
    REQUIRE(r.code == 0);
    std::ifstream png_in(png, std::ios::binary);
    std::string magic(8, '\0');
    png_in.read(magic.data(), 8);
    CHECK(magic == "\x89PNG\r\n\x1a\n");
    std::ifstream npy_in(dense, std::ios::binary);
    std::string bytes(static_cast<size_t>(fs::file_size(dense)), '\0');
    npy_in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(bytes.size() > 24u * 100u * 100u);
    const size_t header = bytes.size() - 24u * 100u * 100u;
    CHECK(header % 64 == 0);
    CHECK(bytes.find("'shape': (24, 100, 100)") != std::string::npos);
    bool dense_ok = true;
    for (int l = 0; l < 24; ++l) {
        for (int q = 0; q < 100; ++q) {
            for (int k = 0; k < 100; ++k) {
                const bool want = (q > k ? q - k : k - q) <= 32 * (l + 1);
                dense_ok = dense_ok && (bytes[header + static_cast<size_t>((l * 100 + q) * 100 + k)] == 1) == want;
            }
        }
    }
    CHECK(dense_ok);
}

TEST_CASE("sparsa reach: options are checked, and nothing partial is written", "[cli][reach]") {
    fs::path big = scratch("reach-big.npy");
    Result r = run("reach " + example("local_window.pat") + " --n 9000 --dense '" + big.string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("limited to N <= 8192") != std::string::npos);
    CHECK_FALSE(fs::exists(big));
    r = run("reach " + example("local_window.pat") + " --n 100 --direction out");
    CHECK(r.code == 1);
    CHECK(r.out.find("--direction applies to --token T") != std::string::npos);
    r = run("reach " + example("local_window.pat") + " --n 100 --token 3 --direction up");
    CHECK(r.code == 1);
    CHECK(r.out.find("--direction expects 'in' or 'out'; got 'up'") != std::string::npos);
    r = run("reach " + example("local_window.pat") + " --n 100 --token 100");
    CHECK(r.code == 1);
    CHECK(r.out.find("--token 100 is outside 0 to 99 (n = 100)") != std::string::npos);
    fs::path nowhere = scratch("x.png").parent_path() / "nope" / "x.png";
    r = run("reach " + example("local_window.pat") + " --n 100 --png '" + nowhere.string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("nope") != std::string::npos);
    CHECK_FALSE(folder_has_temp_files(nowhere.parent_path().parent_path()));
}

TEST_CASE("sparsa reach --resolution: token is exact above 8192 tokens, block a lower bound", "[cli][reach]") {
    // window(64) at 16,384 tokens: 16383 / 64 rounds up to 256 layers; block resolution counts
    // each kept block as connecting all its pairs and says "at least 255". Token resolution
    // took 1.3 s here (2 cores), so the exact case runs in Catch2 itself.
    fs::path script = scratch("window64.pat");
    std::ofstream(script) << "block 64\nattend = window(64)\n";
    const std::string file = "'" + script.string() + "'";
    Result r = run("reach " + file + " --n 16384 --resolution token");
    REQUIRE(r.code == 0);
    CHECK(r.out.find("token resolution (exact)") != std::string::npos);
    CHECK(r.out.find("layers needed to connect every pair: 256 (past the script's layers") != std::string::npos);
    r = run("reach " + file + " --n 16384 --resolution block");
    REQUIRE(r.code == 0);
    CHECK(r.out.find("layers needed to connect every pair: at least 255") != std::string::npos);
    r = run("reach " + file + " --n 16384");  // auto above 8192: block
    CHECK(r.out.find("at least 255") != std::string::npos);
    r = run("reach " + file + " --n 16384 --resolution token --json");
    REQUIRE(r.code == 0);
    auto j = nlohmann::json::parse(r.out);
    CHECK(j["resolution"] == "token");
    CHECK(j["node_tokens"] == 1);
    CHECK(j["layers_needed"] == 256);
    r = run("reach " + file + " --n 4096 --resolution block --json");  // block below 8192 too
    REQUIRE(r.code == 0);
    CHECK(nlohmann::json::parse(r.out)["resolution"] == "block");
    CHECK(nlohmann::json::parse(r.out)["node_tokens"] == 64);
    CHECK(run("reach " + file + " --n 4096 --resolution auto --json").out.find("\"resolution\": \"token\"") != std::string::npos);

    r = run("reach " + file + " --n 100 --resolution exact");
    CHECK(r.code == 1);
    CHECK(r.out.find("--resolution expects token, block or auto; got 'exact'") != std::string::npos);
    r = run("reach " + file + " --n 100 --resolution token --token 5");
    CHECK(r.code == 1);
    CHECK(r.out.find("--resolution applies to all pairs") != std::string::npos);
    r = run("reach " + file + " --n 70000 --resolution token");
    CHECK(r.code == 1);
    CHECK(r.out.find("limited to N <= 65536; got N = 70000") != std::string::npos);
    fs::path dense = scratch("block.npy");
    r = run("reach " + file + " --n 100 --resolution block --dense '" + dense.string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("--dense writes the token-level reach") != std::string::npos);
    CHECK_FALSE(fs::exists(dense));
    r = run("reach --help");
    CHECK(r.out.find("--resolution token") != std::string::npos);
    CHECK(r.out.find("N * N / 8 bytes") != std::string::npos);
}

namespace {

struct Decoded {
    int width = 0, height = 0;
    std::vector<uint8_t> rgb;
    int count(uint32_t color) const {
        int c = 0;
        for (size_t i = 0; i + 2 < rgb.size(); i += 3) c += (uint32_t{rgb[i]} << 16 | uint32_t{rgb[i + 1]} << 8 | rgb[i + 2]) == color;
        return c;
    }
};

Decoded png_read(const fs::path& path) {
    Decoded d;
    int channels = 0;
    uint8_t* pixels = stbi_load(path.string().c_str(), &d.width, &d.height, &channels, 3);
    REQUIRE(pixels != nullptr);
    d.rgb.assign(pixels, pixels + static_cast<size_t>(d.width) * static_cast<size_t>(d.height) * 3);
    stbi_image_free(pixels);
    return d;
}

} // namespace

TEST_CASE("sparsa show --png: the overview, or one mask's figure", "[cli][plot]") {
    fs::path overview = scratch("overview.png"), figure = scratch("figure.png");
    Result r = run("show " + example("per_head_mix.pat") + " --n 512 --png '" + overview.string() + "'");
    REQUIRE(r.code == 0);
    CHECK(r.out.find("overview.png (4 layers x 8 heads; 1200 x ") != std::string::npos);
    Decoded d = png_read(overview);
    CHECK(d.width == 1200);
    // Window heads keep full blocks, dilated and strided ones partial blocks; most is not kept.
    CHECK(d.count(kMaskColorFull) > 1000);
    CHECK(d.count(kMaskColorPartial) > 1000);
    CHECK(d.count(kMaskColorEmpty) > d.count(kMaskColorPartial));
    CHECK(r.out.find("\u2588") == std::string::npos);  // no terminal grid

    // One dilated head at 512 tokens in a 700-pixel figure: token by token, so the pairs a
    // partial block does not keep have their own colour.
    r = run("show " + example("per_head_mix.pat") + " --n 512 --layer 0 --head 3 --width 700 --height 700 --png '" + figure.string() + "'");
    REQUIRE(r.code == 0);
    CHECK(r.out.find("figure.png (layer 0, head 3; 700 x 700 pixels)") != std::string::npos);
    d = png_read(figure);
    CHECK(d.width == 700);
    CHECK(d.height == 700);
    CHECK(d.count(kMaskColorPartialOff) > 10000);
    CHECK(d.count(kMaskColorPartial) > 10000);
    CHECK(d.count(kMaskColorFull) < 200);  // the legend's swatch only: dilation 4 has no full block

    r = run("show " + example("per_head_mix.pat") + " --n 512 --head 9 --png '" + figure.string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("--head must be from 0 to 7") != std::string::npos);
    r = run("show " + example("per_head_mix.pat") + " --n 512 --height 500 --png '" + figure.string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("the overview's height follows from --width") != std::string::npos);
    r = run("show " + example("per_head_mix.pat") + " --n 512 --ascii --png '" + figure.string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("--ascii chooses the terminal grid's characters") != std::string::npos);
    r = run("show " + example("per_head_mix.pat") + " --n 512 --width 800");
    CHECK(r.code == 1);
    CHECK(r.out.find("give --png OUT.png too") != std::string::npos);
    r = run("show " + example("per_head_mix.pat") + " --n 512 --width 100 --png '" + figure.string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("--width must be from 240 to 8192") != std::string::npos);
}

TEST_CASE("sparsa stats --png: the heat maps; stdout stays JSON with --json", "[cli][plot]") {
    fs::path chart = scratch("chart.png");
    Result r = run("stats " + example("per_head_mix.pat") + " --n 4096 --png '" + chart.string() + "'");
    REQUIRE(r.code == 0);
    CHECK(r.out.find("layer/head") != std::string::npos);  // the table as before
    CHECK(r.out.find("chart.png (1000 x ") != std::string::npos);
    Decoded d = png_read(chart);
    CHECK(d.width == 1000);
    CHECK(d.count(0x08306b) > 100);  // the darkest colour: the head with the most block FLOPs
    fs::remove(chart);
    r = run("stats " + example("per_head_mix.pat") + " --n 4096 --json --png '" + chart.string() + "' --width 600");
    REQUIRE(r.code == 0);
    auto j = nlohmann::json::parse(r.out);  // nothing else on the output
    CHECK(j["heads"] == 8);
    CHECK(png_read(chart).width == 600);

    fs::path other = scratch("two.png");
    r = run("stats " + example("per_head_mix.pat") + " " + example("bigbird.pat") + " --n 512 --png '" + other.string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("--png draws the chart of one script; got 2 scripts") != std::string::npos);
    CHECK_FALSE(fs::exists(other));
    r = run("stats " + example("per_head_mix.pat") + " --n 512 --png '" + SPARSA_SOURCE_DIR "/examples/patterns/per_head_mix.pat'");
    CHECK(r.code == 1);
    CHECK(r.out.find("is the script; choose another name") != std::string::npos);
}

// [SECTION] content-based heads (lsh, anchors, favor)

TEST_CASE("content-based heads: compile, stats and show count the fixed part and say what comes per input", "[cli][content]") {
    fs::path script = scratch("content.pat");
    std::ofstream(script) << "heads 3\nattend = window(16) | lsh(8, rounds = 2)\nattend[head 1] = favor(64)\nattend[head 2] = window(16)\n";
    const std::string name = "'" + script.string() + "'";
    Result r = run("check " + name);
    CHECK(r.code == 0);

    fs::path out = scratch("content.npz");
    r = run("compile " + name + " --n 256 -o '" + out.string() + "'");
    REQUIRE(r.code == 0);
    CHECK(r.out.find("2 of 3 heads are content-based") != std::string::npos);
    CHECK(r.out.find("  lsh(8, rounds = 2, chunk = 64): 1 head (L0 H0)\n  favor(64): 1 head (L0 H1)\n") != std::string::npos);
    const sparsa::MaskSet set = sparsa::mask_set_load(out.string());
    REQUIRE(set.content.size() == 3);
    CHECK(set.content[0]->kind == sparsa::ContentKind::lsh);
    CHECK(set.content[0]->rounds == 2);
    CHECK(set.content[1]->features == 64);
    CHECK(set.content[2] == nullptr);
    CHECK(*set.masks[0] == *set.masks[2]);  // lsh's head keeps the window as its fixed part

    // --dense cannot write pairs that come per input: refused, and -o is not written either.
    fs::path dense = scratch("content.npy"), other = scratch("other.npz");
    r = run("compile " + name + " --n 256 -o '" + other.string() + "' --dense '" + dense.string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("--dense writes every pair, but layer 0, head 0 is content-based (lsh(8, rounds = 2, chunk = 64))") != std::string::npos);
    CHECK_FALSE(fs::exists(dense));
    CHECK_FALSE(fs::exists(other));

    r = run("stats " + name + " --n 256");
    REQUIRE(r.code == 0);
    CHECK(r.out.find("L0 H0 +lsh ") != std::string::npos);
    CHECK(r.out.find("L0 H1 favor ") != std::string::npos);
    CHECK(r.out.find("\nL0 H2  ") != std::string::npos);
    CHECK(r.out.find("2 of 3 heads are content-based: their pairs are realised per input") != std::string::npos);
    CHECK(r.out.find("so the counts above are the fixed part's alone") != std::string::npos);
    CHECK(r.out.find("no allowed key") == std::string::npos);  // favor's empty fixed mask is no empty row

    r = run("stats " + name + " --n 256 --json");
    REQUIRE(r.code == 0);
    auto j = nlohmann::json::parse(r.out);
    CHECK(j["content_heads"] == 2);
    CHECK(j["counts"] == "fixed part only");
    CHECK(j["masks"][0]["content"] == nlohmann::json::parse(R"({"kind": "lsh", "buckets": 8, "rounds": 2, "chunk": 64,
        "seed": 0, "shared_qk": true, "causal": false, "file": ""})"));
    CHECK(j["masks"][1]["content"]["kind"] == "favor");
    CHECK(j["masks"][2]["content"].is_null());
    CHECK(j["masks"][0]["fixed_part"]["kept_pairs"] == j["masks"][2]["kept_pairs"]);   // a content head's own figures are its fixed part's

    r = run("show " + name + " --n 256 --ascii");
    REQUIRE(r.code == 0);
    CHECK(r.out.find("content-based: lsh(8, rounds = 2, chunk = 64) adds its pairs per input") != std::string::npos);
    r = run("show " + name + " --n 256 --head 1");
    REQUIRE(r.code == 0);
    CHECK(r.out.find("layer 0, head 1 is favor(64): FAVOR+ approximates dense attention for this head, so it has no mask to draw") !=
          std::string::npos);

    // Tools that need every pair beforehand refuse the script, with a caret on its line.
    r = run("reach " + name + " --n 256");
    CHECK(r.code == 1);
    CHECK(r.out.find("content.pat:2:10: error: lsh(8, rounds = 2, chunk = 64) is content-based") != std::string::npos);
}

TEST_CASE("content-based heads: more buckets than tokens is refused where n is known, nothing written", "[cli][content]") {
    fs::path script = scratch("buckets.pat");
    std::ofstream(script) << "attend = window(4) | lsh(64)\n";
    const std::string name = "'" + script.string() + "'";
    CHECK(run("check " + name).code == 0);  // n unknown: the compile decides
    Result r = run("check " + name + " --n 32");
    CHECK(r.code == 1);
    CHECK(r.out.find("buckets.pat:1:26: error: lsh: 64 buckets is more than the n = 32 tokens") != std::string::npos);
    fs::path out = scratch("buckets.npz");
    r = run("compile " + name + " --n 32 -o '" + out.string() + "'");
    CHECK(r.code == 1);
    CHECK(r.out.find("  attend = window(4) | lsh(64)\n                           ^~\n") != std::string::npos);
    CHECK_FALSE(fs::exists(out));
    CHECK(run("compile " + name + " --n 64 -o '" + out.string() + "'").code == 0);
    CHECK(fs::exists(out));
}
