// The sparsa command as a user meets it: exit codes, messages, and no partial output.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <sys/wait.h>

namespace fs = std::filesystem;

namespace {

struct Result {
    int code = -1;
    std::string out;  // stdout and stderr together
};

// Runs `sparsa ARGS` from a scratch folder and captures what it printed.
Result run(const std::string& args) {
    std::string command = "cd '" + fs::temp_directory_path().string() + "' && '" SPARSA_CLI "' " + args + " 2>&1";
    Result r;
    FILE* pipe = popen(command.c_str(), "r");
    REQUIRE(pipe != nullptr);
    std::array<char, 4096> buffer{};
    size_t got = 0;
    while ((got = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) r.out.append(buffer.data(), got);
    int status = pclose(pipe);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

std::string example(const std::string& name) { return "'" SPARSA_SOURCE_DIR "/examples/patterns/" + name + "'"; }

fs::path scratch(const std::string& name) {
    fs::path dir = fs::temp_directory_path() / "sparsa-cli-test";
    fs::create_directories(dir);
    fs::path p = dir / name;
    fs::remove(p);
    return p;
}

bool folder_has_temp_files(const fs::path& dir) {
    for (const auto& entry : fs::directory_iterator(dir)) {
        if (entry.path().filename().string().find(".tmp") != std::string::npos) return true;
    }
    return false;
}

} // namespace

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
