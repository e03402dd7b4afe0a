// What the viewer shows for one script at one n, built off the UI thread: the compiled masks,
// the coverage of all pairs, the stats panel's numbers and the hops matrix. Building never
// throws: a bad script gives its diagnostics, and the viewer keeps its last good model.
#pragma once

#include "dsl/diagnostics.hpp"
#include "dsl/script.hpp"
#include "engine/block_mask.hpp"
#include "analysis/receptive_field.hpp"
#include "viz/hops.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sparsa::viz {

// The largest n the viewer compiles at (the UI clamps to it; --n beyond it is refused), so
// typing a huge n never stalls the viewer for long.
constexpr int64_t kViewMaxN = 65536;

struct ViewStats {
    double density = 0;          // kept pairs / n^2, averaged over (layer, head)
    double flops_saved = 0;      // 1 - (area of kept blocks) / n^2, averaged: the engines compute
                                 // whole B x B tiles of kept blocks, full or partial
    int64_t kept_blocks = 0;     // summed over (layer, head)
    int64_t full_blocks = 0;
    int64_t partial_blocks = 0;
    int64_t empty_rows = 0;      // queries with no key, summed over (layer, head)
    int64_t layers_needed = -1;  // layers to connect every pair (coverage), -1: never
};
ViewStats view_stats_make(const MaskSet& set, const ReachCoverage& coverage);

struct ViewModel {
    uint64_t serial = 0;                  // unique per build (1, 2, ...): views cache by it
    dsl::ScriptPtr script;
    std::string text;                     // the script text it was built from
    int64_t n = 0;
    MaskSet masks;
    std::vector<dsl::Diagnostic> warnings;
    ReachCoverage coverage;               // token resolution up to kReachTokenMaxN, else block
    ViewStats stats;
    HopsMatrix hops;
};
using ViewModelPtr = std::shared_ptr<const ViewModel>;

// One attempt to build a model: a model, or the diagnostics (or one message) that stopped it.
struct ViewAttempt {
    ViewModelPtr model;
    std::vector<dsl::Diagnostic> diagnostics;  // errors of a bad script, with their places
    std::string error;                         // other failures (bad n, an lsh pattern, ...)
};

// Parses, compiles and analyses `text` at sequence length n (1..kViewMaxN). `name` is shown in
// diagnostics, `path` resolves imports and load(). Catches every exception into the attempt.
ViewAttempt view_model_build(const std::string& text, const std::string& name, const std::string& path, int64_t n);

// The viewer's state across attempts: the last good model stays while the text is bad.
struct ViewState {
    ViewModelPtr model;                        // last good model (null before the first)
    std::vector<dsl::Diagnostic> diagnostics;  // of the latest attempt (errors, or warnings)
    std::string error;                         // of the latest attempt
    bool stale = false;                        // the model is older than the latest text
};
void view_state_apply(ViewState& state, ViewAttempt attempt);

} // namespace sparsa::viz
