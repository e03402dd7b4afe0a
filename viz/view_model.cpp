// Building the viewer's model of a script (see view_model.hpp).
#include "viz/view_model.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <new>

namespace sparsa::viz {

ViewStats view_stats_make(const MaskSet& set, const ReachCoverage& coverage) {
    ViewStats s;
    const double n2 = static_cast<double>(set.n) * static_cast<double>(set.n);
    const double count = static_cast<double>(set.layers * set.heads);
    double kept_pairs = 0, kept_area = 0;
    for (int64_t l = 0; l < set.layers; ++l) {
        for (int64_t h = 0; h < set.heads; ++h) {
            const BlockMask& m = set.at(l, h);
            BlockMaskStats b = block_mask_stats(m);
            kept_pairs += static_cast<double>(b.kept_pairs);
            s.kept_blocks += b.kept_blocks;
            s.full_blocks += b.full_blocks;
            s.partial_blocks += b.partial_blocks;
            s.empty_rows += b.empty_rows;
            for (int64_t qb = 0; qb < m.q_blocks(); ++qb) {
                for (int64_t i = m.row_ptr[qb]; i < m.row_ptr[qb + 1]; ++i) {
                    kept_area += static_cast<double>(block_valid_pairs(m, qb, m.col_idx[i]));
                }
            }
        }
    }
    s.density = kept_pairs / (n2 * count);
    s.flops_saved = 1.0 - kept_area / (n2 * count);
    s.layers_needed = coverage.layers_needed;
    return s;
}

ViewAttempt view_model_build(const std::string& text, const std::string& name, const std::string& path, int64_t n) {
    ViewAttempt attempt;
    try {
        if (n < 1 || n > kViewMaxN) {
            throw Error("n = " + std::to_string(n) + " is outside what the viewer compiles (1 to " +
                        std::to_string(kViewMaxN) + "); use `sparsa reach --n` for larger n");
        }
        static std::atomic<uint64_t> next_serial{1};
        auto model = std::make_shared<ViewModel>();
        model->serial = next_serial++;
        model->text = text;
        model->n = n;
        model->script = dsl::script_parse(text, name, path);
        dsl::CompileOptions options;
        options.n = n;
        dsl::Compiled compiled = dsl::script_compile(*model->script, options);
        model->masks = std::move(compiled.masks);
        model->warnings = std::move(compiled.warnings);
        ReachOptions reach;
        reach.resolution = reach_resolution_auto(n);
        reach.max_nodes = 2048;
        // Run past the script's layers only as far as the stats panel needs to say "needed".
        reach.max_layers = model->masks.layers + std::max<int64_t>(model->masks.layers, 64);
        model->coverage = receptive_field_coverage(model->masks, reach);
        model->stats = view_stats_make(model->masks, model->coverage);
        model->hops = hops_compute(model->masks, 512);
        attempt.model = std::move(model);
    } catch (const dsl::ScriptError& e) {
        attempt.diagnostics = e.diagnostics();
    } catch (const std::bad_alloc&) {
        attempt.error = "out of memory at n = " + std::to_string(n) + "; try a smaller n";
    } catch (const std::exception& e) {
        attempt.error = e.what();
    } catch (...) {
        attempt.error = "unknown error while compiling";
    }
    return attempt;
}

void view_state_apply(ViewState& state, ViewAttempt attempt) {
    state.error = std::move(attempt.error);
    if (attempt.model) {
        state.diagnostics = attempt.model->warnings;
        state.model = std::move(attempt.model);
        state.stale = false;
    } else {
        state.diagnostics = std::move(attempt.diagnostics);
        state.stale = state.model != nullptr;
    }
}

} // namespace sparsa::viz
