// sparsa learn as a user runs it, on a tiny config that finishes in seconds: the chain teacher ->
// distill (oracle, search, gate) -> eval, and bad input refused with nothing written.
#include <catch2/catch.hpp>

#include "cli_test.hpp"

#include "io/npy.hpp"
#include "engine/tensor.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>

namespace fs = std::filesystem;
using namespace cli_test;

namespace {
std::string quote(const fs::path& p) { return "'" + p.string() + "'"; }
const std::string kTiny = " --task passkey --n 64 --d 16 --heads 2 --layers 1 --mlp 16 --batch 8 --lr 0.01 --seed 3";
} // namespace

TEST_CASE("sparsa learn: teacher, distill, eval on a tiny config", "[cli][learn]") {
    const fs::path teacher = scratch("learn_teacher.bin"), pat = scratch("learn_search.pat"), gate = scratch("learn_gate.json"),
                   oracle = scratch("learn_oracle.npz"), report = scratch("learn_report"), pooled = scratch("learn_pooled.npy");
    fs::remove_all(report);
    Result r = run("learn teacher" + kTiny + " --steps 40 -o " + quote(teacher));
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK(r.out.find("tokens/s") != std::string::npos);
    CHECK(r.out.find("validation acc") != std::string::npos);
    CHECK(r.out.find("teacher: causal") != std::string::npos);
    CHECK(fs::file_size(teacher) > 0);

    r = run("learn distill --method search --teacher " + quote(teacher) + " --inputs 4 --share 0.8 -o " + quote(pat));
    REQUIRE(r.code == 0);
    CHECK(r.out.find("attend[layer 0, head 1] = ") != std::string::npos);
    // The written script is a valid script of the language.
    CHECK(run("check " + quote(pat)).code == 0);

    r = run("learn distill --method gate --teacher " + quote(teacher) + " --inputs 4 --steps 20 --quiet -o " + quote(gate));
    REQUIRE(r.code == 0);
    CHECK(r.out.find("gate: KL") != std::string::npos);
    const fs::path unwritten = scratch("learn_gate_unwritten.json");
    r = run("learn distill --method gate --teacher " + quote(teacher) + " --inputs 2 --steps 2 --gate-key magic -o " + quote(unwritten));
    CHECK(r.code == 1);
    CHECK(r.out.find("--gate-key") != std::string::npos);
    CHECK(r.out.find("'keys'") != std::string::npos);
    r = run("learn distill --method gate --teacher " + quote(teacher) + " --inputs 2 --steps 2 --gate-query block --gate-target rows -o " +
            quote(unwritten));
    CHECK(r.code == 1);
    CHECK(r.out.find("--gate-target rows needs --gate-query rows") != std::string::npos);
    CHECK_FALSE(fs::exists(unwritten));

    r = run("learn distill --method oracle --teacher " + quote(teacher) + " --density 0.5 -o " + quote(oracle));
    REQUIRE(r.code == 0);
    CHECK(r.out.find("oracle: 2 of 4 blocks per row") != std::string::npos);

    r = run("learn pool --teacher " + quote(teacher) + " --inputs 2 -o " + quote(pooled));
    REQUIRE(r.code == 0);
    CHECK(fs::file_size(pooled) == 128 + 2 * 1 * 2 * 4 * 4 * 8);   // header + [2, 1, 2, 4, 4] doubles

    r = run("learn eval --teacher " + quote(teacher) + " --gate " + quote(gate) + " --inputs 4 --search-inputs 4 -o " + quote(report));
    REQUIRE(r.code == 0);
    for (const char* f : {"report.md", "report.json", "recall.png", "accuracy.png"}) CHECK(fs::exists(report / f));
    std::ifstream in(report / "report.json");
    const auto j = nlohmann::json::parse(in);
    CHECK(j["rows"].size() == 1 + 4 * 5);   // dense, then 5 methods at 4 densities
    for (const auto& row : j["rows"]) {
        CHECK(row["recall"].get<double>() >= 0.0);
        CHECK(row["recall"].get<double>() <= 1.0 + 1e-9);
    }
}

TEST_CASE("sparsa learn ruler: teachers per seed, the trivial baselines, mean and deviation over seeds", "[cli][learn]") {
    const fs::path report = scratch("learn_ruler");
    fs::remove_all(report);
    const std::string tiny = " --task ruler --n 128 --needles 2 --pairs 4 --queries 4 --d 16 --heads 2 --kv-heads 1 --layers 1 --mlp 16 --batch 8";
    Result r = run("learn ruler" + tiny + " --steps 5 --seeds 4,5 --test-inputs 10 --validation-inputs 5 --densities 0.25 --selectors none --pooled-gate-inputs 0 --indexer-inputs 0 --families none --quiet -o " +
                   quote(report));
    INFO(r.out);
    REQUIRE(r.code == 0);
    for (const char* f : {"report.md", "report.json", "depth.png", "teacher-seed4.bin", "teacher-seed5.bin"}) CHECK(fs::exists(report / f));
    std::ifstream in(report / "report.json");
    const auto j = nlohmann::json::parse(in);
    CHECK(j["causal"].get<bool>());
    REQUIRE(j["rows"].size() == 4);   // dense, diagonal, identity gate, best fixed
    CHECK(j["rows"][0]["method"] == "dense");
    CHECK(j["rows"][1]["method"] == "diagonal");
    CHECK(j["rows"][2]["method"] == "identity gate");
    CHECK(j["rows"][3]["method"] == "best fixed");
    CHECK(j["rows"][3]["per_seed"].size() == 2);
    for (const auto& seed : j["rows"][3]["per_seed"]) CHECK(seed["density"].get<double>() <= 0.25 + 1e-9);
    std::ifstream md(report / "report.md");
    const std::string text((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
    CHECK(text.find("test stream") != std::string::npos);
    CHECK(text.find(" ± ") != std::string::npos);
    // The same teachers read back give the same report figures.
    const fs::path again = scratch("learn_ruler_again");
    fs::remove_all(again);
    r = run("learn ruler --teachers " + quote(report / "teacher-seed4.bin") + "," + quote(report / "teacher-seed5.bin") +
            " --test-inputs 10 --validation-inputs 5 --densities 0.25 --selectors none --pooled-gate-inputs 0 --indexer-inputs 0 --families fixed "
            "--search-inputs 2 -o " + quote(again));
    REQUIRE(r.code == 0);
    std::ifstream in2(again / "report.json");
    const auto j2 = nlohmann::json::parse(in2);
    for (size_t row = 0; row < 4; ++row) CHECK(j2["rows"][row]["accuracy_mean"] == j["rows"][row]["accuracy_mean"]);
    // --families fixed: the fixed patterns and the search script after them, no content family.
    REQUIRE(j2["rows"].size() == 8);
    for (size_t row = 4; row < 8; ++row) CHECK(j2["rows"][row]["method"] == std::vector<std::string>{"window", "longformer", "bigbird", "search script"}[row - 4]);
    CHECK(fs::exists(again / "families.png"));
    r = run("learn ruler --teachers " + quote(report / "teacher-seed4.bin") + " --families some -o " + quote(scratch("learn_ruler_bad")));
    CHECK(r.code == 1);
    CHECK(r.out.find("--families expects all") != std::string::npos);
    r = run("learn ruler --teachers " + quote(report / "teacher-seed4.bin") + " --pooled-gate-target mean -o " + quote(scratch("learn_ruler_bad")));
    CHECK(r.code == 1);
    CHECK(r.out.find("--pooled-gate-target expects sum") != std::string::npos);
    CHECK_FALSE(fs::exists(scratch("learn_ruler_bad") / "report.json"));
    // Measured at another length: dense and the diagonal only, the report saying both lengths.
    const fs::path longer = scratch("learn_ruler_longer");
    fs::remove_all(longer);
    r = run("learn ruler --teachers " + quote(report / "teacher-seed4.bin") + " --n 256 --densities none --test-inputs 5 -o " + quote(longer));
    REQUIRE(r.code == 0);
    std::ifstream in3(longer / "report.json");
    const auto j3 = nlohmann::json::parse(in3);
    CHECK(j3["n"] == 256);
    CHECK(j3["rows"].size() == 2);
    std::ifstream md3(longer / "report.md");
    const std::string text3((std::istreambuf_iterator<char>(md3)), std::istreambuf_iterator<char>());
    CHECK(text3.find("trained at n = 128; measured here at n = 256") != std::string::npos);
    // --train-n: trained short, measured long, in one command.
    const fs::path short_long = scratch("learn_ruler_train_n");
    fs::remove_all(short_long);
    r = run("learn ruler" + tiny + " --train-n 64 --steps 3 --seeds 4 --densities none --test-inputs 5 --quiet -o " + quote(short_long));
    INFO(r.out);
    REQUIRE(r.code == 0);
    std::ifstream in4(short_long / "report.json");
    const auto j4 = nlohmann::json::parse(in4);
    CHECK(j4["n"] == 128);
    std::ifstream saved(short_long / "teacher-seed4.bin", std::ios::binary);   // the header's JSON names the length trained at
    const std::string bytes((std::istreambuf_iterator<char>(saved)), std::istreambuf_iterator<char>());
    CHECK(bytes.find("\"n\":64,") != std::string::npos);
    std::ifstream md4(short_long / "report.md");
    const std::string text4((std::istreambuf_iterator<char>(md4)), std::istreambuf_iterator<char>());
    CHECK(text4.find("trained at n = 64, measured here at n = 128") != std::string::npos);
    r = run("learn ruler --teachers " + quote(report / "teacher-seed4.bin") + " --train-n 64 -o " + quote(scratch("learn_ruler_bad")));
    CHECK(r.code == 1);
    CHECK(r.out.find("--train-n is the length --seeds trains at") != std::string::npos);
    r = run("learn ruler --seeds 1,x -o " + quote(scratch("learn_ruler_bad")));
    CHECK(r.code == 1);
    CHECK(r.out.find("--seeds expects whole numbers") != std::string::npos);
    CHECK_FALSE(fs::exists(scratch("learn_ruler_bad") / "report.md"));
}

TEST_CASE("sparsa learn: bad input is named, exits non-zero and writes nothing", "[cli][learn]") {
    const fs::path bad = scratch("learn_bad.bin"), out = scratch("learn_out.pat");
    std::ofstream(bad) << "not a checkpoint at all";
    Result r = run("learn distill --method search --teacher " + quote(bad) + " -o " + quote(out));
    CHECK(r.code == 1);
    CHECK(r.out.find("not a sparsa teacher checkpoint") != std::string::npos);
    const fs::path never = scratch("learn_never.bin");
    r = run("learn teacher --sharpness -1 --steps 1 -o " + quote(never));
    CHECK(r.code != 0);
    CHECK(r.out.find("--sharpness") != std::string::npos);
    CHECK(!fs::exists(never));
    CHECK_FALSE(fs::exists(out));
    r = run("learn distill --method magic --teacher " + quote(bad));
    CHECK(r.code == 1);
    CHECK(r.out.find("--method must be oracle, search or gate") != std::string::npos);
    r = run("learn teacher --n 8 -o " + quote(out));
    CHECK(r.code == 1);
    CHECK(r.out.find("--n must be from 16") != std::string::npos);
    CHECK_FALSE(fs::exists(out));
    r = run("learn teacher --lr fast");
    CHECK(r.code == 1);
    CHECK(r.out.find("--lr expects a number") != std::string::npos);
    r = run("learn teach");
    CHECK(r.code == 1);
    CHECK(r.out.find("unknown step 'teach'") != std::string::npos);
}

TEST_CASE("sparsa learn: Q and K dumped from another model drive pool, search and gate", "[cli][learn]") {
    const fs::path q0 = scratch("learn_q0.npy"), k0 = scratch("learn_k0.npy"), q1 = scratch("learn_q1.npy"), k1 = scratch("learn_k1.npy");
    const fs::path pat = scratch("learn_dump.pat"), pooled = scratch("learn_dump_pooled.npy"), gate = scratch("learn_dump_gate.json");
    int seed = 1;
    for (const fs::path& p : {q0, k0, q1, k1})
        sparsa::npy_save(sparsa::npy_array_make<float>({2, 96, 8}, sparsa::tensor_random({1, 2, 96, 8}, seed++).data), p.string());
    const std::string dumps = " --q " + quote(q0) + "," + quote(q1) + " --k " + quote(k0) + "," + quote(k1);
    Result r = run("learn pool" + dumps + " -o " + quote(pooled));
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK(fs::file_size(pooled) == 128 + 2 * 2 * 2 * 6 * 6 * 8);   // [2, layers 2, heads 2, 6, 6] doubles
    r = run("learn distill --method search --share 0.5" + dumps + " -o " + quote(pat));
    REQUIRE(r.code == 0);
    CHECK(r.out.find("attend[layer 1, head 1] = ") != std::string::npos);
    CHECK(run("check " + quote(pat)).code == 0);
    r = run("learn distill --method gate --steps 5 --quiet" + dumps + " -o " + quote(gate));
    REQUIRE(r.code == 0);
    // One layer's K missing: refused, nothing written.
    const fs::path none = scratch("learn_none.pat");
    r = run("learn distill --method search --q " + quote(q0) + "," + quote(q1) + " --k " + quote(k0) + " -o " + quote(none));
    CHECK(r.code == 1);
    CHECK(r.out.find("one Q file and one K file per layer") != std::string::npos);
    CHECK_FALSE(fs::exists(none));
}
