// The other families of issue 16's chart, as methods of the RULER evaluation (ruler_eval.hpp):
// the fixed patterns as their users write them (window, Longformer, BigBird) sized to a density,
// the search's distilled static script, the content-based families LSH and anchors realised on
// the teacher's own q and k by the CPU content engine (engine/content/, what `sparsa run` uses),
// and FAVOR+, which is no mask: its output error against the dense attention of every layer.
//
// Streams: the search script and the anchors are fitted on training-stream sequences (from index
// kCalibrationFirst); LSH's and anchors' (buckets, rounds, chunk) are chosen on the validation
// stream; the fixed patterns and FAVOR+'s features are fixed a priori. Nothing here reads the
// test stream.
//
// Index: [SECTION] methods, [SECTION] fixed patterns and the search script, [SECTION] content families
#pragma once

#include "engine/block_mask.hpp"
#include "engine/tensor.hpp"
#include "learn/distill.hpp"
#include "learn/teacher.hpp"

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace sparsa::learn {

// [SECTION] methods

// One method of the evaluation: its masks of one layer for any input (q, k: [1, heads, n, hd];
// a MaskSet whose layer 0 applies), what they are, and how to time and count it when that is not
// the block masks' way.
struct RulerMethod {
    RulerMethod() = default;
    RulerMethod(std::string name_, double target_, MaskChooser masks_, std::string detail_)
        : name(std::move(name_)), target(target_), masks(std::move(masks_)), detail(std::move(detail_)) {}

    std::string name;
    double target = 0;      // target density (of the causal mask's blocks, or pairs when pair_density)
    MaskChooser masks;      // empty for FAVOR+ (no mask)
    std::string detail;
    // Density as pairs kept / the causal (or dense) mask's pairs instead of kept blocks / its
    // blocks: the token-level families (LSH, anchors), whose kept blocks are mostly partial.
    bool pair_density = false;
    // {select ms, forward ms} of one layer (q, k, v of layer 0 of the first test sequence, 1
    // thread, median of `repeats`) when masks() followed by the block-sparse engine is not how
    // the family runs (LSH, anchors: the content engine's call, its hashing or assignment as select;
    // FAVOR+: its pass). Empty: the evaluation times masks() and attention_forward.
    std::function<std::pair<double, double>(const Tensor& q, const Tensor& k, const Tensor& v, int repeats)> time;
    // FAVOR+: the layer's attention output (q, k, v: [1, heads, n, hd]) in place of a mask; the
    // evaluation reports its output error, and its answers with it in place of every layer's
    // attention (TeacherRunOptions::attention); no recall or density.
    std::function<Tensor(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v)> output;
};

// The same mask in every head, cut to causal for a causal teacher, and its density (kept blocks
// over the causal, or dense, mask's blocks).
std::pair<MaskSet, double> ruler_fixed_set(const std::shared_ptr<const BlockMask>& mask, int64_t heads, bool causal);

// [SECTION] fixed patterns and the search script

// Window (band(r): the own block and r blocks each side, cut to causal), Longformer
// (longformer(w, g = B): a token window of w and the first block global) and BigBird
// (bigbird(r, g, blocks, seed = 0): band(r), g global tokens, `blocks` random key blocks per row
// outside them, g in {0, B}), each with the largest parameters whose density after the causal cut
// is at most `target` (the smallest when none is).
std::vector<RulerMethod> ruler_fixed_families(int64_t n, int32_t block, int64_t heads, double target, bool causal);

// The search's static script at `target` (`sparsa learn distill --method search`'s table, per
// head the candidate of highest recall whose density after the causal cut is at most target),
// from `table` (built on training-stream sequences).
RulerMethod ruler_search_script(const SearchTable& table, double target, bool causal);

// [SECTION] content families

struct ContentFamilyOptions {
    int32_t block = 16;
    int threads = 0;
    // Anchors: fitted per (layer, head) by spherical k-means (anchors_fit, `iterations` rounds) on
    // the q and k rows of `fit_inputs` training-stream sequences.
    int64_t fit_inputs = 8, iterations = 10;
    uint64_t train_seed = 1;   // the training stream's seed (the fit's sequences: from kCalibrationFirst)
    int64_t features = 256;    // FAVOR+'s random features per head (seed 0)
};

// What the choices were made on: the validation stream's sequences, and the teacher's own.
struct ContentFamilyInputs {
    const Teacher* teacher = nullptr;
    const TaskBatch* validation = nullptr;
    // Validation accuracy of a mask chooser (the evaluation's own, on `validation`).
    std::function<double(const MaskChooser&)> accuracy;
};

// LSH (`lsh(buckets, rounds, chunk, shared_qk = false)`, causal) and anchors (`anchors(k, 1,
// chunk, shared_qk = false)`, causal, k = n / chunk anchors fitted on the training stream), each
// at `target` (pairs kept / causal pairs): among a fixed grid of (buckets, rounds, chunk), those
// whose density on the validation stream is at most target, the most accurate there (the
// smallest when none fits). `notes` gets one line per choice (the grid's validation densities and
// accuracies).
std::vector<RulerMethod> ruler_content_families(const ContentFamilyInputs& in, const std::vector<double>& targets,
                                                const ContentFamilyOptions& options, std::vector<std::string>& notes);

// FAVOR+ (`favor(features)`, causal, seed 0) as an approximation of the dense attention.
RulerMethod ruler_favor(int64_t layers, int64_t heads, int64_t head_dim, bool causal, const ContentFamilyOptions& options);

// ||a - b|| / ||b|| over every element (Frobenius); 0 when both are 0.
double ruler_relative_error(const Tensor& a, const Tensor& b);

} // namespace sparsa::learn
