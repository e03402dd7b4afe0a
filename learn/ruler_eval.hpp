// The RULER-style evaluation of a teacher and its selectors: per task and per depth accuracy on the
// test stream, with the trivial baselines always beside any method (the diagonal block alone, the
// untrained identity gate, the best fixed pattern at the same density, chosen on the validation
// stream), the cheap selectors of selectors.hpp and the pooled gate of pooled_gate.hpp with their
// selection time beside the attention they save, and a report over several training seeds as
// mean and standard deviation.
//
// Index: [SECTION] one teacher, [SECTION] several seeds and the report
#pragma once

#include "learn/distill.hpp"
#include "learn/indexer.hpp"
#include "learn/pooled_gate.hpp"
#include "learn/ruler_families.hpp"
#include "learn/teacher.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa::learn {

// [SECTION] one teacher

struct RulerEvalOptions {
    std::vector<double> densities{0.125};   // target block densities (of the dense, or causal, mask's blocks)
    int32_t block = 16;
    int64_t test_inputs = 100;         // test-stream sequences every figure comes from
    int64_t validation_inputs = 20;    // validation-stream sequences the best fixed pattern is chosen on
    int time_repeats = 5;              // timings per row; the median is reported
    int threads = 0;
    const BlockGate* gate = nullptr;   // a trained gate, measured beside the baselines when given
    // The training-free selectors at every density: MoBA, Quest, vertical-slash (from the last
    // `last_queries` queries) and DuoAttention (retrieval heads ranked on the validation stream by
    // the accuracy lost when each head alone is made streaming).
    bool selectors = false;
    int64_t last_queries = 64;
    // The pooled gate: trained (width pooled_gate_width) on this many training-stream sequences
    // (stream train_seed, from index kCalibrationFirst), early stopping on the validation stream;
    // 0: none.
    int64_t pooled_gate_inputs = 0;
    int64_t pooled_gate_width = 32;
    bool pooled_gate_max_target = false;   // KL to each key block's largest row share instead of its mass
    PooledGateTrainOptions pooled_gate_train;
    // The lightning indexer: trained on this many training-stream sequences (the pooled gate's
    // stream; indexer_rows query rows of each), early stopping on validation; 0: none.
    int64_t indexer_inputs = 0;
    int64_t indexer_heads = 2, indexer_width = 16, indexer_rows = 128;
    IndexerTrainOptions indexer_train;
    // The other families of the chart (ruler_families.hpp) at every density: window, Longformer,
    // BigBird and the search's static script (its table from search_inputs training-stream
    // sequences; 0: none) ...
    bool fixed_families = false;
    int64_t search_inputs = 0;
    // ... and LSH, anchors (chosen on the validation stream, anchors fitted on the training
    // stream) and FAVOR+ (content.features features), through the content engine.
    bool content_families = false;
    ContentFamilyOptions content;
    uint64_t train_seed = 1;
    int64_t chunk = 100;   // test sequences captured at a time (memory: the dense q, k, v of a chunk)
    // When set, a line on stderr after each chunk of test sequences (done / all, the rows, seconds
    // so far): a run of the full report takes most of an hour on 2 cores.
    std::string progress_label;
};

struct RulerRow {
    std::string method;        // dense, diagonal, identity gate, gate, best fixed, moba, quest, vertical-slash, duo, pooled gate,
                               // indexer, window, longformer, bigbird, search script, lsh, anchors, favor+
    double target = 1;         // target block density (the diagonal: its own)
    double density = 1;        // kept blocks / the dense mask's blocks (causal: of the causal mask), mean; lsh and
                               // anchors: pairs kept / the mask's pairs; -1 for FAVOR+ (no mask)
    double recall = 1;         // share of the teacher's attention mass kept (its own q, k), mean over rows;
                               // -1 where it means nothing (FAVOR+: no mask)
    // ||o - o_dense|| / ||o_dense|| of each layer's attention output on the dense teacher's q, k, v
    // (Frobenius, over the layer's heads), mean over layers and test sequences; -1: not measured.
    double output_error = -1;
    TaskScores scores;         // the student's answers on the test stream, per task and depth (none for FAVOR+)
    double select_ms = 0;      // choosing one layer's masks for an input, all heads, 1 thread, median
    double forward_ms = 0;     // one layer's sparse attention, all heads, 1 thread, median
                               // (select_ms and forward_ms: layer 0 of the first test sequence)
    std::string detail;        // what the mask is (the chosen pattern, blocks per row)
};

struct RulerEval {
    std::vector<RulerRow> rows;
    int64_t n = 0, test_inputs = 0, validation_inputs = 0;
    int32_t block = 16;
    bool causal = false;
    std::vector<std::string> notes;   // what was trained or chosen on the way (the pooled gate's KL, the Duo heads)
};

// Key blocks per query block for a target density: round(density * blocks) for a bidirectional
// model; for a causal one the k whose causal top-k mask (min(k, r + 1) blocks in row r) comes
// nearest the density of the causal mask's blocks. At least 1.
int64_t ruler_blocks_per_row(double density, int64_t blocks, bool causal);

// Every method at every density on the teacher's test stream.
RulerEval ruler_evaluate(const Teacher& teacher, const RulerEvalOptions& options);

// [SECTION] several seeds and the report

// Writes report.md, report.json, depth.png, cost.png (accuracy against select + forward time, the
// baselines and selectors) and families.png (the same with every family)
// into `dir` (created when missing), each atomically: per (method, density) the accuracy per task and overall as mean +- standard deviation over the
// evaluations (one per training seed, labelled by `seeds`), recall, density and timings, and the
// accuracy per depth of the needle tasks. `preamble`: Markdown put first (command, model, training).
void ruler_report_write(const std::vector<RulerEval>& evals, const std::vector<std::string>& seeds, const std::string& dir,
                        const std::string& preamble);

// Rewrites report.md, depth.png, cost.png and families.png in `dir` from its report.json (kept as it is), without
// evaluating anything: the same bytes ruler_report_write wrote from the same evaluations. A
// report.json written before it kept the preamble and the notes takes them from dir/report.md.
// Throws sparsa::Error naming the file, before writing anything, when it is missing or malformed.
void ruler_report_replot(const std::string& dir);

} // namespace sparsa::learn
