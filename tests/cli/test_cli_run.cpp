// sparsa run as a user meets it: the CPU engine against the dense reference, tensors from .npy,
// and bad input refused with a message naming the tensor, before any output is written.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "cli_test.hpp"
#include "io/npy.hpp"

#include <cmath>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace cli_test;

namespace {

// A float32 .npy of the given shape with standard normal values from `seed`.
fs::path random_npy(const std::string& name, std::vector<int64_t> shape, unsigned seed) {
    int64_t count = 1;
    for (int64_t s : shape) count *= s;
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<float> values(static_cast<size_t>(count));
    for (float& x : values) x = normal(rng);
    fs::path p = scratch(name);
    sparsa::npy_save(sparsa::npy_array_make<float>(std::move(shape), values), p.string());
    return p;
}

std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

} // namespace

TEST_CASE("sparsa run --check: the cpu engine matches the dense reference, in text and JSON", "[cli][run]") {
    Result r = run("run " + example("bigbird.pat") + " --n 300 --d 16 --batch 2 --layer 1 --check --json");
    REQUIRE(r.code == 0);
    nlohmann::json j = nlohmann::json::parse(r.out);
    CHECK(j["engine"] == "cpu");
    CHECK(j["n"] == 300);
    CHECK(j["batch"] == 2);
    CHECK(j["layer"] == 1);
    CHECK(j["check"]["ok"] == true);
    CHECK(j["check"]["max_rel_error"].get<double>() < 1e-5);
    CHECK(j["kept_pairs"].get<int64_t>() > 0);
    CHECK(j["seconds_median"].get<double>() > 0);

    Result text = run("run " + example("causal.pat") + " --n 130 --d 32 --check");
    CHECK(text.code == 0);
    CHECK(text.out.find("check       max abs error") != std::string::npos);
    CHECK(text.out.find(": ok (tolerance 1e-05)") != std::string::npos);
}

TEST_CASE("sparsa run: tensors from .npy, O written as float32 [batch, heads, n, d]", "[cli][run]") {
    // per_head_mix.pat has 8 heads with different masks; n = 100 leaves a short last block.
    fs::path q = random_npy("run-q.npy", {1, 8, 100, 16}, 1), k = random_npy("run-k.npy", {1, 8, 100, 16}, 2),
             v = random_npy("run-v.npy", {1, 8, 100, 16}, 3);
    fs::path out = scratch("run-o.npy");
    Result r = run("run " + example("per_head_mix.pat") + " --n 100 --q " + quoted(q) + " --k " + quoted(k) + " --v " +
                   quoted(v) + " --out " + quoted(out) + " --check");
    INFO(r.out);
    REQUIRE(r.code == 0);
    sparsa::NpyArray o = sparsa::npy_load(out.string());
    CHECK(o.shape == std::vector<int64_t>{1, 8, 100, 16});
    std::vector<float> values = sparsa::npy_array_values<float>(o, "O");
    for (float x : values) REQUIRE(std::isfinite(x));

    // The same tensors give the same O through --engine dense (the double reference, rounded).
    fs::path dense_out = scratch("run-o-dense.npy");
    Result d = run("run " + example("per_head_mix.pat") + " --n 100 --engine dense --q " + quoted(q) + " --k " +
                   quoted(k) + " --v " + quoted(v) + " --out " + quoted(dense_out));
    REQUIRE(d.code == 0);
    std::vector<float> reference = sparsa::npy_array_values<float>(sparsa::npy_load(dense_out.string()), "O");
    REQUIRE(reference.size() == values.size());
    float worst = 0, largest = 0;
    for (size_t i = 0; i < values.size(); ++i) {
        worst = std::max(worst, std::abs(values[i] - reference[i]));
        largest = std::max(largest, std::abs(reference[i]));
    }
    CHECK(worst <= 1e-5f * largest);
}

TEST_CASE("sparsa run: bad input names what is wrong and writes nothing", "[cli][run]") {
    fs::path out = scratch("run-bad-o.npy");
    const std::string o = " --out " + quoted(out);

    Result layer = run("run " + example("bigbird.pat") + " --n 300 --layer 9" + o);
    CHECK(layer.code != 0);
    CHECK(layer.out.find("sparsa run: error: --layer must be from 0 to 5; got 9\n") != std::string::npos);

    Result engine = run("run " + example("bigbird.pat") + " --n 300 --engine gpu" + o);
    CHECK(engine.code != 0);
    CHECK(engine.out.find("--engine 'gpu' is not an engine") != std::string::npos);

    // bigbird.pat has 8 heads: a 4-head tensor is refused, naming the tensor.
    fs::path q = random_npy("run-bad-q.npy", {4, 64, 16}, 4), k = random_npy("run-bad-k.npy", {4, 64, 16}, 5),
             v = random_npy("run-bad-v.npy", {4, 64, 16}, 6);
    Result heads = run("run " + example("bigbird.pat") + " --n 64 --q " + quoted(q) + " --k " + quoted(k) + " --v " +
                       quoted(v) + o);
    CHECK(heads.code != 0);
    CHECK(heads.out.find("the masks have 8 heads per layer but the tensors have 4") != std::string::npos);

    // NaN in K: the message names K and the index of the first bad value.
    std::vector<float> values(8 * 64 * 16, 0.5f);
    values[3 * 64 * 16 + 5 * 16 + 7] = std::numeric_limits<float>::quiet_NaN();
    fs::path nan_k = scratch("run-nan-k.npy");
    sparsa::npy_save(sparsa::npy_array_make<float>({8, 64, 16}, values), nan_k.string());
    fs::path q4 = random_npy("run-q4.npy", {8, 64, 16}, 7), v4 = random_npy("run-v4.npy", {8, 64, 16}, 8);
    Result nan = run("run " + example("per_head_mix.pat") + " --n 64 --q " + quoted(q4) + " --k " + quoted(nan_k) +
                     " --v " + quoted(v4) + o);
    INFO(nan.out);
    CHECK(nan.code != 0);
    CHECK((nan.out.find("NaN") != std::string::npos || nan.out.find("nan") != std::string::npos));
    CHECK(nan.out.find("[0, 3, 5, 7]") != std::string::npos);

    // A truncated .npy is refused.
    fs::path truncated = scratch("run-truncated.npy");
    {
        std::ifstream in(q4, std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::ofstream(truncated, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
    }
    Result cut = run("run " + example("per_head_mix.pat") + " --n 64 --q " + quoted(truncated) + " --k " + quoted(k) +
                     " --v " + quoted(v4) + o);
    CHECK(cut.code != 0);

    CHECK_FALSE(fs::exists(out));
    CHECK_FALSE(folder_has_temp_files(out.parent_path()));
}

// [content] Scripts with content-based heads (lsh, anchors, favor): each head's report on the
// input, --check against the reference over the same allowed pairs (favor: exact attention, its
// error reported without a bound), and what is refused before anything is written.
namespace {

fs::path write_script(const std::string& name, const std::string& text) {
    fs::path p = scratch(name);
    std::ofstream(p) << text;
    return p;
}

// The JSON object of --json's output, without the favor warnings stderr adds around it.
std::string json_part(const std::string& out) {
    const size_t begin = out.find("{\n");
    return begin == std::string::npos ? out : out.substr(begin, out.find("\n}", begin) + 2 - begin);
}

const char* const kMixedScript = "heads 4\nblock 32\n"
                                 "attend = lsh(8, rounds = 2)\n"
                                 "attend[head 1] = window(16) | lsh(6, rounds = 4, chunk = 20)\n"
                                 "attend[head 2] = window(8)\n"
                                 "attend[head 3] = favor(features = 64)\n";

} // namespace

TEST_CASE("sparsa run --check on lsh, fixed and favor heads: per-head reports, the reference over A, favor's error",
          "[cli][run][content]") {
    const fs::path script = write_script("run-mixed.pat", kMixedScript);
    // n = 150 is not a multiple of the chunks; batch 2.
    Result r = run("run " + quoted(script) + " --n 150 --d 16 --batch 2 --check --json --runs 1");
    INFO(r.out);
    REQUIRE(r.code == 0);
    const nlohmann::json j = nlohmann::json::parse(json_part(r.out));
    CHECK(j["check"]["ok"] == true);
    CHECK(j["check"]["max_rel_error"].get<double>() < 1e-5);
    CHECK(j["gflops"].is_null());   // favor heads keep no pairs
    REQUIRE(j["per_head"].size() == 4);
    int64_t pairs = 0;
    for (int h : {0, 1}) {
        const auto& e = j["per_head"][h];
        CHECK(e["kind"] == "lsh");
        CHECK(e["fixed_part"] == (h == 1));
        CHECK(e["bucket_min"].get<int64_t>() <= e["bucket_max"].get<int64_t>());
        CHECK(e["imbalance"].get<double>() >= 1.0);
        // Recall is measured with --check: a share of the softmax's mass.
        CHECK(e["recall_mean"].get<double>() > 0);
        CHECK(e["recall_mean"].get<double>() <= 1.0 + 1e-9);
        CHECK(e["recall_min"].get<double>() <= e["recall_mean"].get<double>());
        pairs += e["pairs"].get<int64_t>();
    }
    CHECK(j["per_head"][2]["kind"] == "fixed");
    pairs += j["per_head"][2]["pairs"].get<int64_t>();
    CHECK(j["kept_pairs"].get<int64_t>() == pairs);
    const auto& favor = j["per_head"][3];
    CHECK(favor["kind"] == "favor");
    CHECK(favor["features"] == 64);
    CHECK(favor["error"].get<double>() > 0);
    CHECK(std::isfinite(favor["error"].get<double>()));
    CHECK(favor["predicted_error"].get<double>() > 0);
    CHECK(j["phases"]["hashing"].get<double>() >= 0);
    CHECK(j["phases"]["favor"].get<double>() > 0);

    // The text says the same per head, and that favor has no tolerance.
    Result text = run("run " + quoted(script) + " --n 150 --d 16 --check --runs 1");
    INFO(text.out);
    REQUIRE(text.code == 0);
    CHECK(text.out.find("  head 0      lsh(buckets 8, rounds 2, chunk 32): buckets of ") != std::string::npos);
    CHECK(text.out.find("  head 1      lsh(buckets 6, rounds 4, chunk 20) | fixed mask: ") != std::string::npos);
    CHECK(text.out.find("recall ") != std::string::npos);
    CHECK(text.out.find("  head 3      favor(64 features): predicted error ") != std::string::npos);
    CHECK(text.out.find("error against exact attention ") != std::string::npos);
    CHECK(text.out.find("  phases      hashing ") != std::string::npos);
    CHECK(text.out.find("heads with pairs against the dense reference over the same allowed pairs: ") != std::string::npos);
    CHECK(text.out.find(": ok (tolerance 1e-05)") != std::string::npos);
    CHECK(text.out.find("no tolerance") != std::string::npos);

    // Without --recall or --check, recall is not measured (null in JSON).
    Result plain = run("run " + quoted(script) + " --n 150 --d 16 --json --runs 1");
    REQUIRE(plain.code == 0);
    const nlohmann::json p = nlohmann::json::parse(json_part(plain.out));
    CHECK(p["per_head"][0]["recall_mean"].is_null());
    CHECK(p.find("check") == p.end());
}

TEST_CASE("sparsa run: content heads on tensors from .npy give the same O every time", "[cli][run][content]") {
    const fs::path script = write_script("run-mixed-npy.pat", kMixedScript);
    fs::path q = random_npy("run-c-q.npy", {4, 100, 16}, 11), k = random_npy("run-c-k.npy", {4, 100, 16}, 12),
             v = random_npy("run-c-v.npy", {4, 100, 16}, 13);
    const std::string inputs = " --q " + quoted(q) + " --k " + quoted(k) + " --v " + quoted(v);
    fs::path out1 = scratch("run-c-o1.npy"), out2 = scratch("run-c-o2.npy");
    Result a = run("run " + quoted(script) + " --n 100" + inputs + " --out " + quoted(out1) + " --threads 1");
    Result b = run("run " + quoted(script) + " --n 100" + inputs + " --out " + quoted(out2) + " --threads 3");
    INFO(a.out << b.out);
    REQUIRE(a.code == 0);
    REQUIRE(b.code == 0);
    const std::vector<float> o1 = sparsa::npy_array_values<float>(sparsa::npy_load(out1.string()), "O");
    const std::vector<float> o2 = sparsa::npy_array_values<float>(sparsa::npy_load(out2.string()), "O");
    CHECK(o1.size() == size_t{4 * 100 * 16});
    CHECK(o1 == o2);
    for (float x : o1) REQUIRE(std::isfinite(x));
}

TEST_CASE("sparsa run: content heads' bad input is refused before anything is written", "[cli][run][content]") {
    const fs::path script = write_script("run-bad-content.pat", kMixedScript);
    fs::path out = scratch("run-bad-content-o.npy");
    const std::string o = " --out " + quoted(out);

    Result big = run("run " + quoted(script) + " --n 9000 --d 8 --check" + o);
    CHECK(big.code == 1);
    CHECK(big.out.find("--check on content-based heads takes n up to 8192") != std::string::npos);

    Result dense = run("run " + quoted(script) + " --n 100 --engine dense" + o);
    CHECK(dense.code == 1);
    CHECK(dense.out.find("use --engine cpu --check") != std::string::npos);

    Result recall = run("run " + example("bigbird.pat") + " --n 100 --recall" + o);
    CHECK(recall.code == 1);
    CHECK(recall.out.find("--recall is for content-based heads") != std::string::npos);

    // Rotations made for d = 8, run at d = 16: a caret under the file's name.
    fs::path rotations = scratch("run-rot-d8.npy");
    sparsa::npy_save(sparsa::npy_array_make<float>({2, 8, 4}, std::vector<float>(64, 0.5f)), rotations.string());
    const fs::path rot_script =
        write_script("run-rot.pat", "heads 2\nattend = lsh(8, rounds = 2, file = \"run-rot-d8.npy\")\n");
    Result rot = run("run " + quoted(rot_script) + " --n 100 --d 16" + o);
    INFO(rot.out);
    CHECK(rot.code == 1);
    CHECK(rot.out.find("run-rot.pat:2:36: error: lsh: run-rot-d8.npy has shape [2, 8, 4] but these inputs need [2, 16, 4]") !=
          std::string::npos);
    CHECK(rot.out.find("                                     ^~~~~~~~~~~~~~~~") != std::string::npos);

    CHECK_FALSE(fs::exists(out));
    CHECK_FALSE(folder_has_temp_files(out.parent_path()));
}

TEST_CASE("sparsa run --check on every content-based example: lsh and anchors match the reference over their pairs",
          "[cli][run][content]") {
    for (const char* name : {"reformer_lsh.pat", "anchors.pat", "performer_favor.pat"}) {
        INFO(name);
        Result r = run("run " + example(name) + " --n 1000 --check --json --runs 1");  // d = 64: anchors.pat's anchors
        REQUIRE(r.code == 0);
        // stdout's JSON after favor's warning on stderr (run() gives both together)
        nlohmann::json j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
        // favor heads report their error without a bound; every head with pairs is held to the tolerance
        CHECK(j["check"]["ok"] == true);
        CHECK(j["check"]["max_rel_error"].get<double>() < 1e-5);
    }
}
