// Evaluation of distilled masks against the dense teacher: for each density and method, the
// attention recall, the relative L1 error of the attention output, the student's task accuracy
// (teacher weights, sparse attention) and the sparse forward time; a Markdown report with PNG
// plots, and JSON.
#pragma once

#include "learn/distill.hpp"
#include "learn/teacher.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa::learn {

// Where calibration inputs (search and the gate) start in the training stream: far
// past the sequences a teacher trains on (steps * batch), and never the held-out stream.
constexpr int64_t kCalibrationFirst = int64_t{1} << 40;

struct EvalOptions {
    std::vector<double> densities{0.03, 0.06, 0.125, 0.25};   // target block densities
    int32_t block = 16;
    int64_t inputs = 64;        // held-out sequences (the teacher's held-out stream)
    uint64_t seed = 1;          // the training seed: held-out = task_held_out_seed(seed)
    int time_repeats = 7;       // forward timings per (method, density); the median is reported
    int threads = 0;
};

struct EvalRow {
    std::string method;         // dense, oracle, gate, search, longformer, bigbird
    double target = 1;          // target block density
    double density = 1;         // measured block density (kept blocks / blocks^2, mean over heads, layers, inputs)
    double recall = 1;          // share of the teacher's attention mass kept, mean over rows
    double answer_recall = 1;   // the same over the rows an answer is asked at only (all layers and heads)
    double l1_error = 0;        // sum |O_sparse - O_dense| / sum |O_dense|
    double accuracy = 0;        // task accuracy with sparse attention in every layer
    double forward_ms = 0;      // one layer's sparse attention forward (all heads), median, 1 thread
    double select_ms = 0;       // choosing that layer's masks for the input (all heads), median, 1 thread: the gate's
                                // scoring, the oracle's dense pooling; about 0 for fixed masks
    std::string detail;         // e.g. the baseline's expression
};

struct EvalReport {
    std::vector<EvalRow> rows;
    int64_t inputs = 0, n = 0;
    int32_t block = 16;
    std::string machine;        // CPU model and core count
};

// Evaluates every method at every density on the held-out inputs. The search table and the gate
// were built from other (training-stream) inputs.
EvalReport learn_evaluate(const Teacher& teacher, const BlockGate& gate, const SearchTable& table, const EvalOptions& options);

// The CPU model and core count, from /proc/cpuinfo ("unknown CPU" when unreadable).
std::string machine_description();

// Writes report.md, report.json, recall.png and accuracy.png into `dir` (created when missing),
// each atomically. `preamble` is Markdown put before the tables (command, teacher, training).
void eval_report_write(const EvalReport& report, const std::string& dir, const std::string& preamble);

// Captures the dense teacher's q, k and dense lse on `count` sequences of stream `seed` starting
// at `first`: what search and the gate learn from.
AttentionSample attention_sample(const Teacher& teacher, uint64_t seed, int64_t first, int64_t count, int32_t block, int threads = 0);

} // namespace sparsa::learn
