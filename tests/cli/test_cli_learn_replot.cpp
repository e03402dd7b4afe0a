// sparsa learn ruler --replot: the report redrawn from its report.json alone gives the same
// report.md byte for byte and depth.png as the run that measured it, with cost.png beside them;
// a missing or malformed report.json is named, exits non-zero and writes nothing.
#include <catch2/catch.hpp>

#include "cli_test.hpp"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace fs = std::filesystem;
using namespace cli_test;

namespace {
std::string quote(const fs::path& p) { return "'" + p.string() + "'"; }
std::string bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
bool is_png(const fs::path& p) { return bytes(p).rfind(std::string("\x89PNG\r\n\x1a\n", 8), 0) == 0 && fs::file_size(p) > 1000; }
} // namespace

TEST_CASE("sparsa learn ruler --replot: the same report.md and depth.png from report.json, and cost.png", "[cli][learn]") {
    const fs::path report = scratch("learn_replot");
    fs::remove_all(report);
    const std::string tiny = " --task ruler --n 128 --needles 2 --pairs 4 --queries 4 --d 16 --heads 2 --kv-heads 1 --layers 1 --mlp 16 --batch 8";
    Result r = run("learn ruler" + tiny + " --steps 5 --seeds 4,5 --test-inputs 10 --validation-inputs 5 --densities 0.125,0.25 --selectors none "
                   "--pooled-gate-inputs 0 --indexer-inputs 0 --quiet -o " + quote(report));
    INFO(r.out);
    REQUIRE(r.code == 0);
    REQUIRE(is_png(report / "cost.png"));
    const std::string md = bytes(report / "report.md");
    CHECK(md.find("![accuracy against time](cost.png)") != std::string::npos);

    // Only report.json copied to a fresh folder: everything else is drawn from it.
    const fs::path again = scratch("learn_replot_again");
    fs::remove_all(again);
    fs::create_directories(again);
    fs::copy_file(report / "report.json", again / "report.json");
    r = run("learn ruler --replot " + quote(again));
    REQUIRE(r.code == 0);
    CHECK(bytes(again / "report.md") == md);
    CHECK(bytes(again / "depth.png") == bytes(report / "depth.png"));
    CHECK(bytes(again / "cost.png") == bytes(report / "cost.png"));
    CHECK(bytes(again / "report.json") == bytes(report / "report.json"));   // kept as it was
    CHECK(is_png(again / "cost.png"));

    // Malformed or missing report.json: named, non-zero, nothing written.
    const fs::path bad = scratch("learn_replot_bad");
    fs::remove_all(bad);
    fs::create_directories(bad);
    { std::ofstream(bad / "report.json") << "{\"n\": 128, \"rows\": ["; }
    r = run("learn ruler --replot " + quote(bad));
    CHECK(r.code != 0);
    CHECK(r.out.find("report.json") != std::string::npos);
    for (const char* f : {"report.md", "depth.png", "cost.png"}) CHECK_FALSE(fs::exists(bad / f));
    // Well-formed JSON that is not a report (a row lacks its per-seed figures).
    std::string json = bytes(report / "report.json");
    json.replace(json.find("\"per_seed\""), 10, "\"per_sed\"");
    { std::ofstream(bad / "report.json") << json; }
    r = run("learn ruler --replot " + quote(bad));
    CHECK(r.code != 0);
    CHECK(r.out.find("per_seed") != std::string::npos);
    for (const char* f : {"report.md", "depth.png", "cost.png"}) CHECK_FALSE(fs::exists(bad / f));
    fs::remove(bad / "report.json");
    r = run("learn ruler --replot " + quote(bad));
    CHECK(r.code != 0);
    CHECK(r.out.find("report.json: cannot read it") != std::string::npos);
    CHECK(fs::is_empty(bad));
}
