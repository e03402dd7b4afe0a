// The other families of the ruler evaluation (learn/ruler_families.hpp): the window row keeps
// exactly the window pattern's pairs (band of blocks, causal) at the widest band within the
// density, Longformer and BigBird within it; the LSH row's masks give the content engine's
// attention and pairs (layer_attention_forward) and the LSH and anchors rows' density is what
// their masks keep; FAVOR+'s output error is the engine's own (favor_error_curve) and falls as its
// features grow; the report with every family round-trips through report.json (replot gives the
// same report.md and pictures).
#include "engine/content/layer_attention.hpp"
#include "engine/content/favor.hpp"
#include "learn/causal_mask.hpp"
#include "learn/ruler_eval.hpp"
#include "tests/learn/learn_testing.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

using namespace sparsa;
using namespace sparsa::learn;

namespace {

std::string bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

const RulerMethod& find(const std::vector<RulerMethod>& methods, const std::string& name) {
    const auto it = std::find_if(methods.begin(), methods.end(), [&](const RulerMethod& m) { return m.name == name; });
    REQUIRE(it != methods.end());
    return *it;
}

} // namespace

TEST_CASE("ruler families: the window row is the causal band of blocks, the widest within the density", "[ruler_eval][families]") {
    const int64_t n = 128, heads = 2;
    const int32_t block = 16;
    for (double target : {0.45, 0.6, 0.75}) {
        INFO("target " << target);
        const auto methods = ruler_fixed_families(n, block, heads, target, true);
        const RulerMethod& window = find(methods, "window");
        REQUIRE(window.detail.rfind("band(", 0) == 0);
        const int64_t r = std::stoll(window.detail.substr(5));
        const Tensor none;
        const MaskSet set = window.masks(0, none, none);
        for (int64_t h = 0; h < heads; ++h)
            for (int64_t q = 0; q < n; ++q)
                for (int64_t k = 0; k < n; ++k) CHECK(set.at(0, h).allowed(q, k) == (k <= q && q / block - k / block <= r));
        // Within the density, and one block wider would not be.
        const double blocks = static_cast<double>(causal_block_count(n, block));
        CHECK(static_cast<double>(set.at(0, 0).kept_blocks()) / blocks <= target);
        const auto wider = ruler_fixed_set(expression_compile("band(" + std::to_string(r + 1) + ")", n, block), heads, true);
        CHECK(wider.second > target);
        // Longformer and BigBird likewise within it, their expressions the prelude's.
        CHECK(find(methods, "longformer").detail.rfind("longformer(w = ", 0) == 0);
        CHECK(find(methods, "bigbird").detail.rfind("bigbird(r = ", 0) == 0);
        for (const char* name : {"longformer", "bigbird"}) {
            const MaskSet m = find(methods, name).masks(0, none, none);
            CHECK(static_cast<double>(m.at(0, 0).kept_blocks()) / blocks <= target);
        }
    }
}

TEST_CASE("ruler families: LSH and anchors masks are the content engine's allowed sets, their density what they keep", "[ruler_eval][families]") {
    const Teacher teacher = testing::tiny_ruler_teacher();
    const int64_t n = teacher.task.n;
    const TaskBatch validation = task_batch(teacher.task, task_stream_seed(TaskStream::validation, 0), 0, 4);
    ContentFamilyInputs in;
    in.teacher = &teacher;
    in.validation = &validation;
    int64_t asked = 0;
    in.accuracy = [&](const MaskChooser&) { return 0.5 + 0.01 * static_cast<double>(asked++); };   // the later candidate wins
    ContentFamilyOptions co;
    co.fit_inputs = 2;
    co.iterations = 3;
    std::vector<std::string> notes;
    const std::vector<RulerMethod> methods = ruler_content_families(in, {0.25}, co, notes);
    REQUIRE(methods.size() == 2);
    CHECK(asked > 0);
    REQUIRE(notes.size() == 3);   // the anchors' fit, and one choice per family
    CHECK(notes[1].find("lsh at 25%: validation density and accuracy of each candidate within it: ") == 0);

    const TaskBatch test = task_batch(teacher.task, task_stream_seed(TaskStream::test, 0), 0, 2);
    const TeacherCapture c = teacher_capture(teacher, test, 16);
    for (const RulerMethod& m : methods) {
        INFO(m.name << ": " << m.detail);
        CHECK(m.pair_density);
        CHECK(m.detail.find("shared_qk = false") != std::string::npos);
        const Tensor &q = c.q[0][0], &k = c.k[0][0], &v = c.v[0][0];
        const MaskSet mask = m.masks(0, q, k);
        // The engine's forward over its allowed set equals the block-sparse engine over the mask.
        REQUIRE(m.time);
        const auto [select_ms, forward_ms] = m.time(q, k, v, 1);
        CHECK(select_ms >= 0);
        CHECK(forward_ms > 0);
        const AttentionOutput sparse = attention_forward(q, k, v, mask, 0);
        // Every kept pair causal, and the density near the target's grid.
        int64_t pairs = 0;
        for (int64_t h = 0; h < q.shape.heads; ++h)
            for (int64_t i = 0; i < n; ++i)
                for (int64_t j = 0; j < n; ++j)
                    if (mask.at(0, h).allowed(i, j)) {
                        ++pairs;
                        CHECK(j <= i);
                    }
        CHECK(pairs > 0);
        CHECK(static_cast<double>(pairs) / static_cast<double>(q.shape.heads * n * (n + 1) / 2) < 0.5);
        CHECK(sparse.o.data.size() == v.data.size());
    }
    // The evaluation's row density is the mean of pairs kept / causal pairs of those masks.
    RulerEvalOptions o;
    o.densities = {0.25};
    o.test_inputs = 2;
    o.validation_inputs = 4;
    o.time_repeats = 1;
    o.content_families = true;
    o.content = co;
    const RulerEval e = ruler_evaluate(teacher, o);
    for (const char* name : {"lsh", "anchors"}) {
        INFO(name);
        const auto row = std::find_if(e.rows.begin(), e.rows.end(), [&](const RulerRow& r) { return r.method == name; });
        REQUIRE(row != e.rows.end());
        const RulerMethod& m = find(methods, name);   // the same choice: the same validation and grid
        double density = 0;
        for (int64_t b = 0; b < 2; ++b) {
            const MaskSet mask = m.masks(0, c.q[b][0], c.k[b][0]);
            for (int64_t h = 0; h < mask.heads; ++h)
                density += static_cast<double>(block_mask_stats(mask.at(0, h)).kept_pairs) / static_cast<double>(n * (n + 1) / 2) /
                           static_cast<double>(2 * mask.heads);
        }
        CHECK(row->density == Approx(density));
        CHECK(row->recall > 0);
        CHECK(row->output_error >= 0);
        CHECK(row->scores.total_answers() == e.rows[0].scores.total_answers());
    }
}

TEST_CASE("ruler families: the lsh row's masks give the content engine's attention", "[ruler_eval][families]") {
    const Teacher teacher = testing::tiny_ruler_teacher();
    const int64_t n = teacher.task.n, H = teacher.config.heads;
    const TaskBatch validation = task_batch(teacher.task, task_stream_seed(TaskStream::validation, 0), 0, 2);
    ContentFamilyInputs in;
    in.teacher = &teacher;
    in.validation = &validation;
    in.accuracy = [](const MaskChooser&) { return 0.5; };
    ContentFamilyOptions co;
    co.fit_inputs = 2;
    co.iterations = 3;
    std::vector<std::string> notes;
    const RulerMethod lsh = ruler_content_families(in, {0.25}, co, notes).front();
    REQUIRE(lsh.name == "lsh");
    // The chosen expression as a script writes it, run by the content engine (layer_attention_forward).
    long long buckets = 0, rounds = 0, chunk = 0;
    REQUIRE(std::sscanf(lsh.detail.c_str(), "lsh(%lld, %lld, %lld", &buckets, &rounds, &chunk) == 3);
    MaskSet set = mask_set_make(1, H, std::vector<std::shared_ptr<const BlockMask>>(static_cast<size_t>(H),
                                                                                    std::make_shared<BlockMask>(block_mask_empty(n, 16))));
    for (int64_t h = 0; h < H; ++h) {
        ContentSpec s;
        s.kind = ContentKind::lsh;
        s.buckets = buckets;
        s.rounds = rounds;
        s.chunk = chunk;
        s.shared_qk = false;
        s.causal = true;
        set.content.push_back(std::make_shared<ContentSpec>(s));
    }
    const TeacherCapture c = teacher_capture(teacher, validation, 16);
    for (size_t b = 0; b < c.q.size(); ++b) {
        const Tensor &q = c.q[b][0], &k = c.k[b][0], &v = c.v[b][0];
        const LayerForward engine = layer_attention_forward(q, k, v, set, 0);
        const MaskSet mask = lsh.masks(0, q, k);
        const AttentionOutput sparse = attention_forward(q, k, v, mask, 0);
        double worst = 0;
        for (size_t i = 0; i < sparse.o.data.size(); ++i)
            worst = std::max(worst, static_cast<double>(std::abs(sparse.o.data[i] - engine.o.data[i])));
        CHECK(worst < 1e-5);
        for (int64_t h = 0; h < H; ++h) CHECK(block_mask_stats(mask.at(0, h)).kept_pairs == engine.reports[static_cast<size_t>(h)].pairs.pairs);
    }
}

TEST_CASE("ruler families: FAVOR+'s output error falls toward 0 as its features grow", "[ruler_eval][families]") {
    const Teacher teacher = testing::tiny_ruler_teacher();
    const TaskBatch batch = task_batch(teacher.task, task_stream_seed(TaskStream::validation, 0), 0, 2);
    const TeacherCapture c = teacher_capture(teacher, batch, 16);
    auto error = [&](int64_t features, size_t b) {
        ContentFamilyOptions co;
        co.features = features;
        const RulerMethod m = ruler_favor(1, teacher.config.heads, teacher.config.head_dim(), true, co);
        CHECK(m.output);
        CHECK_FALSE(m.masks);
        return ruler_relative_error(m.output(0, c.q[b][0], c.k[b][0], c.v[b][0]), c.o[b][0]);
    };
    // The engine's own curve (the same features: seed 0, layer 0, draw 0) against its double
    // reference: the row measures what the engine gives. Untrained heads are in FAVOR+'s noisy
    // regime (predicted error above 1 at 16 features), where more features help slowly.
    FavorOptions fo;
    fo.causal = true;
    const std::vector<int64_t> counts = {16, 256, 4096};
    const auto curve = favor_error_curve(c.q[0][0], c.k[0][0], c.v[0][0], counts, 0, 0, 0, fo);
    std::vector<double> mine;
    for (size_t i = 0; i < counts.size(); ++i) {
        mine.push_back(error(counts[i], 0));
        INFO(counts[i] << " features: " << mine[i] << ", the engine's curve " << curve[i].error);
        CHECK(mine[i] == Approx(curve[i].error).epsilon(1e-3));
        if (i > 0) CHECK(mine[i] < mine[i - 1]);
    }
    CHECK(mine.back() < mine.front() / 2);
    CHECK(error(4096, 1) < error(16, 1) / 2);
}

TEST_CASE("ruler families: the report with every family round-trips through report.json", "[ruler_eval][families]") {
    const Teacher teacher = testing::tiny_ruler_teacher();
    RulerEvalOptions o;
    o.densities = {0.25, 0.5};
    o.test_inputs = 4;
    o.validation_inputs = 3;
    o.time_repeats = 1;
    o.fixed_families = true;
    o.search_inputs = 2;
    o.content_families = true;
    o.content.fit_inputs = 2;
    o.content.iterations = 3;
    o.content.features = 64;
    const RulerEval e = ruler_evaluate(teacher, o);
    std::vector<std::string> names;
    for (const RulerRow& r : e.rows) names.push_back(r.method);
    for (const char* name : {"window", "longformer", "bigbird", "search script", "lsh", "anchors", "favor+"})
        CHECK(std::count(names.begin(), names.end(), name) == (std::string(name) == "favor+" ? 1 : 2));
    const RulerRow& favor = e.rows.back();
    CHECK(favor.method == "favor+");
    CHECK(favor.density == -1);
    CHECK(favor.recall == -1);
    CHECK(favor.output_error > 0);
    // FAVOR+ runs inside the teacher's forward in place of every layer's attention: as many
    // answers as the dense row
    CHECK(favor.scores.total_answers() > 0);
    CHECK(favor.scores.total_answers() == e.rows[0].scores.total_answers());
    CHECK(e.rows[0].output_error == 0);

    const std::string dir = (std::filesystem::temp_directory_path() / "sparsa_ruler_families").string();
    const std::string again = dir + "-again";
    std::filesystem::remove_all(dir);
    std::filesystem::remove_all(again);
    ruler_report_write({e, e}, {"a", "b"}, dir, "# families\n");
    const std::string md = bytes(dir + "/report.md");
    CHECK(md.find("| method | target | density | recall | output error | all answers |") != std::string::npos);
    CHECK(md.find("| favor+ | - | - | - | ") != std::string::npos);
    CHECK(md.find("![every family: accuracy against time](families.png)") != std::string::npos);
    REQUIRE(std::filesystem::file_size(dir + "/families.png") > 1000);
    std::filesystem::create_directories(again);
    std::filesystem::copy_file(dir + "/report.json", again + "/report.json");
    ruler_report_replot(again);
    CHECK(bytes(again + "/report.md") == md);
    for (const char* png : {"/depth.png", "/cost.png", "/families.png"}) CHECK(bytes(again + png) == bytes(dir + png));
    std::filesystem::remove_all(dir);
    std::filesystem::remove_all(again);
}
