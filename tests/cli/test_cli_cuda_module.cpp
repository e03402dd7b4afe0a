// libsparsa_cli_cuda.so, the module that holds the CLI's CUDA engine (cli/cuda_module_abi.hpp):
// sparsa loads it from its own folder and only for --engine cuda, says clearly when it cannot,
// and the engine's errors come back through the C ABI as status codes with the same message the
// engine throws when linked in. Only in a sparsa built with the CUDA engine (test_cli_cuda.cpp
// covers the message of a sparsa built without it).
#ifdef SPARSA_HAVE_CUDA

#include <catch2/catch.hpp>

#include "cli/cuda_module_abi.hpp"
#include "cli_test.hpp"
#include "engine/cuda/attention_cuda.hpp"
#include "engine/error.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <filesystem>
#include <string>

using namespace cli_test;

namespace {

const fs::path kBuiltCli = SPARSA_CLI;
const fs::path kBuiltModule = kBuiltCli.parent_path() / "libsparsa_cli_cuda.so";

bool has(const Result& r, const std::string& text) { return r.out.find(text) != std::string::npos; }

// The module, dlopen'ed by this test as sparsa does (never closed, as sparsa never closes it).
const SparsaCliCudaApi& module_api() {
    static const SparsaCliCudaApi* api = [] {
        void* handle = dlopen(kBuiltModule.c_str(), RTLD_NOW | RTLD_LOCAL);
        INFO(kBuiltModule.string() << ": " << (handle == nullptr ? dlerror() : ""));
        REQUIRE(handle != nullptr);
        const auto entry = reinterpret_cast<SparsaCliCudaEntry>(dlsym(handle, SPARSA_CLI_CUDA_ENTRY));
        REQUIRE(entry != nullptr);
        return entry();
    }();
    return *api;
}

const std::string kRunCuda = " --n 256 --engine cuda";

} // namespace

TEST_CASE("sparsa without libsparsa_cli_cuda.so beside it: --engine cuda says so, everything else works", "[cli][cuda]") {
    REQUIRE(fs::exists(kBuiltModule));
    const fs::path dir = scratch("lonely-sparsa");
    fs::create_directories(dir);
    const fs::path cli = dir / "sparsa";
    fs::copy_file(kBuiltCli, cli);

    // Missing: one line naming the module, the folder looked in and dlerror's reason; exit 1.
    // LD_LIBRARY_PATH pointing at the build does not count: the module belongs to this sparsa.
    for (const std::string& env : {std::string(), "LD_LIBRARY_PATH='" + kBuiltModule.parent_path().string() + "'"}) {
        const Result r = run_at(cli, "run " + example("bigbird.pat") + kRunCuda, env);
        INFO(env << ": " << r.out);
        CHECK(r.code == 1);
        CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
        CHECK(has(r, "sparsa run: error: --engine cuda: this sparsa was built with the CUDA engine but libsparsa_cli_cuda.so "
                     "could not be loaded from " + dir.string() + ": "));
        CHECK(has(r, "No such file or directory"));
        CHECK(has(r, " (rebuild, or copy it beside sparsa)\n"));
    }
    // The commands that do not touch the GPU never look for it.
    Result r = run_at(cli, "check " + example("bigbird.pat"));
    INFO(r.out);
    CHECK(r.code == 0);
    CHECK(has(r, "bigbird.pat: ok"));
    r = run_at(cli, "run " + example("bigbird.pat") + " --n 256 --engine cpu --runs 1");
    CHECK(r.code == 0);

    // Not a shared object: dlopen's reason, same sentence.
    {
        std::FILE* f = std::fopen((dir / "libsparsa_cli_cuda.so").c_str(), "w");
        REQUIRE(f != nullptr);
        std::fputs("not an ELF file\n", f);
        std::fclose(f);
    }
    r = run_at(cli, "run " + example("bigbird.pat") + kRunCuda);
    INFO(r.out);
    CHECK(r.code == 1);
    CHECK(has(r, "libsparsa_cli_cuda.so could not be loaded from " + dir.string() + ": "));
    CHECK(has(r, "(rebuild, or copy it beside sparsa)"));

    // Copied beside it: loaded, and --engine cuda gets as far as the built sparsa does (no GPU
    // here, or the real run).
    fs::remove(dir / "libsparsa_cli_cuda.so");
    fs::copy_file(kBuiltModule, dir / "libsparsa_cli_cuda.so");
    r = run_at(cli, "run " + example("bigbird.pat") + kRunCuda);
    const Result built = run_at(kBuiltCli, "run " + example("bigbird.pat") + kRunCuda);
    INFO(r.out << "\nthe built sparsa: " << built.out);
    CHECK(!has(r, "could not be loaded"));
    CHECK(r.code == built.code);
    if (built.code != 0) CHECK(r.out == built.out);

    // A link to sparsa from another folder: the module is looked for beside the file it points to.
    const fs::path elsewhere = scratch("sparsa-link");
    fs::create_directories(elsewhere);
    fs::create_symlink(kBuiltCli, elsewhere / "sparsa");
    r = run_at(elsewhere / "sparsa", "run " + example("bigbird.pat") + kRunCuda);
    CHECK(!has(r, "could not be loaded"));
    CHECK(r.code == built.code);
    fs::remove_all(dir);
    fs::remove_all(elsewhere);
}

TEST_CASE("libsparsa_cli_cuda.so: errors come back as a status with the engine's own message", "[cli][cuda]") {
    const SparsaCliCudaApi& api = module_api();
    CHECK(api.version == SPARSA_CLI_CUDA_VERSION);
    CHECK(api.layout == sparsa_cli_cuda_layout());
    CHECK(api.kernel_count() == sparsa::cuda_kernel_count());

    std::string why;
    const bool gpu = sparsa::cuda_device_available(&why);
    int32_t available = -1;
    const char* module_why = nullptr;
    REQUIRE(api.device_available(&available, &module_why).code == sparsa_cli_cuda_ok);
    CHECK(available == (gpu ? 1 : 0));
    if (!gpu) CHECK(std::string(module_why) == why);

    // The same rounding as the engine linked in.
    sparsa::Tensor x = sparsa::tensor_random({1, 2, 33, 8}, 7);
    x.data[0] = 1e5f;   // past fp16's range: rounds to inf
    for (const auto dtype : {sparsa::CudaDtype::bfloat16, sparsa::CudaDtype::float16, sparsa::CudaDtype::float32}) {
        sparsa::Tensor rounded;
        REQUIRE(api.round_to(&x, dtype, &rounded).code == sparsa_cli_cuda_ok);
        const sparsa::Tensor want = sparsa::tensor_round_to(x, dtype);
        CHECK(rounded.shape.n == want.shape.n);
        CHECK(std::equal(rounded.data.begin(), rounded.data.end(), want.data.begin(), want.data.end(),
                         [](float a, float b) { return a == b || (a != a && b != b); }));
    }

    // What the engine throws, caught inside the module: code 1 and the very message.
    auto thrown = [](auto&& f) -> std::string {
        try {
            f();
        } catch (const sparsa::Error& e) {
            return e.what();
        }
        return "(nothing thrown)";
    };
    void* engine = nullptr;
    const SparsaCliCudaStatus made = api.engine_new(&engine);
    if (!gpu) {
        const std::string want = thrown([] { sparsa::CudaAttention a; });
        CHECK(made.code == sparsa_cli_cuda_error);
        CHECK(engine == nullptr);
        REQUIRE(made.message != nullptr);
        CHECK(std::string(made.message) == want);
        const char* name = nullptr;
        const SparsaCliCudaStatus named = api.device_name(&name);
        CHECK(named.code == sparsa_cli_cuda_error);
        CHECK(std::string(named.message) == thrown([] { sparsa::cuda_device_name(); }));
        return;
    }
    REQUIRE(made.code == sparsa_cli_cuda_ok);
    REQUIRE(engine != nullptr);
    // Q of 64 rows against masks made for no rows: the engine's check refuses the call.
    const sparsa::Tensor q = sparsa::tensor_random({1, 1, 64, 64}, 1);
    const sparsa::MaskSet masks;
    const sparsa::CudaAttentionOptions options;
    const SparsaCliCudaStatus prepared = api.engine_prepare(engine, &q, &q, &q, &masks, 0, &options);
    sparsa::CudaAttention direct;
    CHECK(prepared.code == sparsa_cli_cuda_error);
    CHECK(std::string(prepared.message) == thrown([&] { direct.prepare(q, q, q, masks, 0, options); }));
    api.engine_free(engine);
}

#endif // SPARSA_HAVE_CUDA
