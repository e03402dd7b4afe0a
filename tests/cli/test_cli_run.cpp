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
