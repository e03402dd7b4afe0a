// The sparsa command as a user meets it: exit codes, messages, and no partial output.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "cli_test.hpp"

#include <filesystem>
#include <fstream>
#include <string>

namespace fs = std::filesystem;
using namespace cli_test;

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
