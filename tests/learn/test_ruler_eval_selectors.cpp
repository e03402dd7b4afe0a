// The ruler evaluation with the cheap selectors, the pooled gate and the indexer: their rows come at every
// density beside the baselines, at the identity gate's density (top-k selectors) or within the
// target (DuoAttention), with a selection time; the test stream read in chunks gives the same
// figures as read whole; the report has the select / dense column and the gate's training note.
#include "learn/ruler_eval.hpp"
#include "tests/learn/learn_testing.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

using namespace sparsa;
using namespace sparsa::learn;

TEST_CASE("ruler evaluation: the selectors' rows, chunked test stream, report", "[ruler_eval]") {
    const Teacher teacher = testing::tiny_ruler_teacher();
    RulerEvalOptions o;
    o.densities = {0.25};
    o.test_inputs = 10;
    o.validation_inputs = 5;
    o.time_repeats = 1;
    o.selectors = true;
    o.pooled_gate_inputs = 4;
    o.pooled_gate_train.steps = 20;
    o.indexer_inputs = 3;
    o.indexer_rows = 32;
    o.indexer_train.steps = 10;
    o.chunk = 3;
    const RulerEval e = ruler_evaluate(teacher, o);
    const std::vector<std::string> names = {"dense", "diagonal", "identity gate", "best fixed", "moba", "quest", "vertical-slash", "duo", "pooled gate", "indexer"};
    REQUIRE(e.rows.size() == names.size());
    for (size_t r = 0; r < names.size(); ++r) {
        INFO(names[r]);
        CHECK(e.rows[r].method == names[r]);
        CHECK(e.rows[r].scores.total_answers() == e.rows[0].scores.total_answers());
        CHECK(e.rows[r].recall > 0);
        CHECK(e.rows[r].recall <= 1.0 + 1e-9);
        CHECK(e.rows[r].select_ms >= 0);
        CHECK(e.rows[r].forward_ms > 0);
    }
    for (const std::string top_k : {"moba", "quest", "vertical-slash", "pooled gate", "indexer"}) {
        const auto row = std::find_if(e.rows.begin(), e.rows.end(), [&](const RulerRow& r) { return r.method == top_k; });
        CHECK(row->density == Approx(e.rows[2].density));   // every row keeps min(keep, r + 1) blocks, as the identity gate
    }
    // duo: within the target, or (here) the least it can keep: the sink and the diagonal, 15 of the causal mask's 36 blocks.
    CHECK(e.rows[7].density == Approx(15.0 / 36.0));
    REQUIRE(e.notes.size() == 2);
    CHECK(e.notes[0].find("pooled gate: width 32") == 0);
    CHECK(e.notes[1].find("indexer: 2 index heads of width 16") == 0);
    // Read whole, the same figures (the streams are indexed, not drawn in order).
    o.chunk = 100;
    const RulerEval whole = ruler_evaluate(teacher, o);
    for (size_t r = 0; r < names.size(); ++r) {
        INFO(names[r]);
        CHECK(whole.rows[r].scores.correct == e.rows[r].scores.correct);
        CHECK(whole.rows[r].recall == Approx(e.rows[r].recall));
        CHECK(whole.rows[r].density == Approx(e.rows[r].density));
    }
    const std::string dir = (std::filesystem::temp_directory_path() / "sparsa_learn_ruler_selectors").string();
    std::filesystem::remove_all(dir);
    ruler_report_write({e, whole}, {"a", "b"}, dir, "# test\n");
    std::stringstream md;
    md << std::ifstream(dir + "/report.md").rdbuf();
    CHECK(md.str().find("| select / dense |") != std::string::npos);
    CHECK(md.str().find("| vertical-slash | 25% |") != std::string::npos);
    CHECK(md.str().find("- seed a: pooled gate: width 32") != std::string::npos);
    CHECK(std::filesystem::file_size(dir + "/depth.png") > 0);
    std::filesystem::remove_all(dir);
}
