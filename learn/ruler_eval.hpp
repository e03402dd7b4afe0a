// The RULER-style evaluation of a teacher and its selectors: per task and per depth accuracy on the
// test stream, with the trivial baselines always beside any method (the diagonal block alone, the
// untrained identity gate, the best fixed pattern at the same density, chosen on the validation
// stream), and a report over several training seeds as mean and standard deviation.
//
// Index: [SECTION] one teacher, [SECTION] several seeds and the report
#pragma once

#include "learn/distill.hpp"
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
};

struct RulerRow {
    std::string method;        // dense, diagonal, identity gate, best fixed, gate
    double target = 1;         // target block density (the diagonal: its own)
    double density = 1;        // kept blocks / the dense mask's blocks (causal: of the causal mask), mean
    double recall = 1;         // share of the teacher's attention mass kept (its own q, k), mean over rows
    TaskScores scores;         // the student's answers on the test stream, per task and depth
    double select_ms = 0;      // choosing one layer's masks for an input, all heads, 1 thread, median
    double forward_ms = 0;     // one layer's sparse attention, all heads, 1 thread, median
    std::string detail;        // what the mask is (the chosen pattern, blocks per row)
};

struct RulerEval {
    std::vector<RulerRow> rows;
    int64_t n = 0, test_inputs = 0, validation_inputs = 0;
    int32_t block = 16;
    bool causal = false;
};

// Key blocks per query block for a target density: round(density * blocks) for a bidirectional
// model; for a causal one the k whose causal top-k mask (min(k, r + 1) blocks in row r) comes
// nearest the density of the causal mask's blocks. At least 1.
int64_t ruler_blocks_per_row(double density, int64_t blocks, bool causal);

// Every method at every density on the teacher's test stream.
RulerEval ruler_evaluate(const Teacher& teacher, const RulerEvalOptions& options);

// [SECTION] several seeds and the report

// Writes report.md, report.json and depth.png into `dir` (created when missing), each atomically:
// per (method, density) the accuracy per task and overall as mean +- standard deviation over the
// evaluations (one per training seed, labelled by `seeds`), recall, density and timings, and the
// accuracy per depth of the needle tasks. `preamble`: Markdown put first (command, model, training).
void ruler_report_write(const std::vector<RulerEval>& evals, const std::vector<std::string>& seeds, const std::string& dir,
                        const std::string& preamble);

} // namespace sparsa::learn
