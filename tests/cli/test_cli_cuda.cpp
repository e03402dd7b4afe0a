// sparsa run --engine cuda as a user meets it: without the CUDA engine built in, or without a
// GPU, one clear line and exit 1; with a GPU, the real run in every dtype, checked against the
// dense reference (--check), in text and JSON.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "cli_test.hpp"
#ifdef SPARSA_HAVE_CUDA
#include "engine/cuda/attention_cuda.hpp"
#endif

#include <algorithm>
#include <string>

using namespace cli_test;

namespace {

// Whether the sparsa under test can run on a GPU here; `why` says why not.
bool gpu_here(std::string& why) {
#ifdef SPARSA_HAVE_CUDA
    return sparsa::cuda_device_available(&why);
#else
    why = "built without the CUDA engine";
    return false;
#endif
}

bool has(const Result& r, const std::string& text) { return r.out.find(text) != std::string::npos; }

} // namespace

TEST_CASE("sparsa run --engine cuda: options are checked before anything runs", "[cli][cuda]") {
    Result r = run("run " + example("bigbird.pat") + " --n 300 --dtype bf16");
    CHECK(r.code == 1);
    CHECK(has(r, "--dtype is for --engine cuda only"));
    r = run("run " + example("bigbird.pat") + " --n 300 --engine cpu --kernel 2");
    CHECK(r.code == 1);
    CHECK(has(r, "--kernel is for --engine cuda only"));
    r = run("run " + example("bigbird.pat") + " --n 300 --engine cuda --dtype bf32");
    CHECK(r.code == 1);
    CHECK(has(r, "--dtype 'bf32' is not a GPU dtype (use bf16, fp16 or f32)"));
    r = run("run " + example("bigbird.pat") + " --n 300 --engine gpu");
    CHECK(r.code == 1);
    CHECK(has(r, "(use cpu, dense or cuda)"));
}

TEST_CASE("sparsa run --engine cuda: one clear line without a GPU, the real run with one", "[cli][cuda]") {
    std::string why;
    const bool gpu = gpu_here(why);
    const std::string call = "run " + example("bigbird.pat") + " --n 1000 --engine cuda --check";
    Result r = run(call);
    if (!gpu) {
        std::printf("test_cli_cuda: no GPU run here (%s): checking the error instead\n", why.c_str());
        INFO(r.out);
        CHECK(r.code == 1);
        CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
#ifdef SPARSA_HAVE_CUDA
        CHECK(has(r, "--engine cuda: no CUDA GPU here ("));
#else
        CHECK(has(r, "--engine cuda: this sparsa was built without the CUDA engine"));
#endif
        CHECK(has(r, "use --engine cpu"));
        return;
    }
    INFO(r.out);
    CHECK(r.code == 0);
    CHECK(has(r, "engine cuda, "));
    CHECK(has(r, ", bf16, kernel "));
    CHECK(has(r, "TFLOP/s effective"));
    CHECK(has(r, ": ok (tolerance 2e-02)"));

    // Every dtype, d = 64 and 128, a block of 128, batch 2: the reference agrees within the bounds.
    for (const char* dtype : {"bf16", "fp16", "f32"}) {
        for (const char* shape : {"--d 64 --batch 2", "--d 128 --block 128"}) {
            r = run("run " + example("bigbird.pat") + " --n 700 --layer 1 --engine cuda --check --json --runs 3 --dtype " +
                    dtype + " " + shape);
            INFO(dtype << ", " << shape << ": " << r.out);
            REQUIRE(r.code == 0);
            const nlohmann::json j = nlohmann::json::parse(r.out);
            CHECK(j["engine"] == "cuda");
            CHECK(j["dtype"] == dtype);
            CHECK(j["kernel"].get<int>() >= 1);
            CHECK(j["seconds"].size() == 3);
            CHECK(j["tflops"].get<double>() > 0);
            CHECK(j["check"]["ok"] == true);
            CHECK(j["check"]["finite"] == true);
            CHECK(j["check"]["tolerance"].get<double>() == (std::string(dtype) == "f32" ? 1e-5 : 2e-2));
            CHECK(j["check"]["max_rel_error"].get<double>() <= j["check"]["tolerance"].get<double>());
        }
    }

    // A kernel that does not run the call says which does; one that does not exist says the range.
    r = run("run " + example("bigbird.pat") + " --n 300 --engine cuda --dtype f32 --kernel 2");
    CHECK(r.code == 1);
    CHECK(has(r, "kernel 1 runs any"));
    r = run("run " + example("bigbird.pat") + " --n 300 --engine cuda --kernel 99");
    CHECK(r.code == 1);
    CHECK(has(r, "--kernel 99 does not exist"));
}
