// The page's WebAssembly module (web/index.html): the pattern compiler (dsl/), mask statistics
// (engine/block_mask.hpp) and receptive fields (analysis/) behind a small JavaScript API (embind).
//
// Index
//   [SECTION] state         the last compiled MaskSet, its graphs and coverage
//   [SECTION] diagnostics   ScriptError / Error -> {severity, line, column, message, ...}
//   [SECTION] pictures      one mask, one token's field, as fractions of pairs per pixel
//   [SECTION] api           check, compile, maskPicture, maskBlocks, stats, coverage, field
//
// Every call returns a plain JS object; failures come back as {ok: false, diagnostics: [...]}
// (nothing throws into JavaScript), so the page can keep showing the last good mask.
#include "analysis/reach_graph.hpp"
#include "analysis/receptive_field.hpp"
#include "dsl/script.hpp"
#include "engine/block_mask.hpp"
#include "engine/error.hpp"

#include <emscripten/bind.h>
#include <emscripten/val.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

namespace sparsa::web {

using emscripten::val;

// The name a script typed into the page has in diagnostics.
constexpr const char* kScriptName = "script.pat";
// Largest sequence length the page compiles: a mask's CSR arrays stay small, and coverage switches
// to block resolution above kReachTokenMaxN (analysis/receptive_field.hpp).
constexpr int64_t kMaxN = int64_t{1} << 20;
// Largest picture side (pixels) and light-cone width: the page draws at most 1024.
constexpr int64_t kMaxSide = 2048;

// [SECTION] state

struct Current {
    dsl::ScriptPtr script;
    MaskSet set;
    std::optional<ReachGraph> graph;        // built on the first field() call
    bool graph_has_transpose = false;
    std::optional<ReachCoverage> coverage;  // computed on the first coverage() call
};
std::optional<Current> current;

double ms_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

// A JS array of numbers (64-bit integers as doubles: exact below 2^53).
template <typename T>
val array_of(const std::vector<T>& values) {
    val out = val::array();
    for (size_t i = 0; i < values.size(); ++i) out.set(i, static_cast<double>(values[i]));
    return out;
}

// A copy (not a view: wasm memory may grow and move) as a JS typed array.
val float32_array(const std::vector<float>& values) {
    return val::global("Float32Array").new_(emscripten::typed_memory_view(values.size(), values.data()));
}
template <typename T>
val typed_array(const char* type, const std::vector<T>& values) {
    return val::global(type).new_(emscripten::typed_memory_view(values.size(), values.data()));
}

// [SECTION] diagnostics

// {severity, source, line, column, endLine, endColumn, message, hint, text}. line 0: no place
// (an option, the machine); source "<prelude>": inside the built-in definitions.
val diagnostic_object(const dsl::Diagnostic& d) {
    val out = val::object();
    out.set("severity", std::string(d.severity == dsl::Severity::error ? "error" : "warning"));
    out.set("source", d.source ? d.source->name : std::string());
    out.set("line", d.line());
    out.set("column", d.column());
    dsl::Diagnostic end = d;
    end.begin = std::max(d.end, d.begin);
    out.set("endLine", end.line());
    out.set("endColumn", end.column());
    out.set("message", d.message);
    out.set("hint", d.hint);
    out.set("text", dsl::diagnostic_format(d));
    return out;
}

val message_diagnostic(const std::string& message) {
    val out = val::object();
    out.set("severity", std::string("error"));
    out.set("source", std::string());
    out.set("line", 0);
    out.set("column", 0);
    out.set("endLine", 0);
    out.set("endColumn", 0);
    out.set("message", message);
    out.set("hint", std::string());
    out.set("text", message + "\n");
    return out;
}

val diagnostics_array(const std::vector<dsl::Diagnostic>& list) {
    val out = val::array();
    for (size_t i = 0; i < list.size(); ++i) out.set(i, diagnostic_object(list[i]));
    return out;
}

// Runs `work` (which fills `out`) and turns what it throws into {ok: false, diagnostics}.
template <typename Work>
val guarded(Work&& work) {
    val out = val::object();
    out.set("ok", true);
    try {
        work(out);
    } catch (const dsl::ScriptError& e) {
        out.set("ok", false);
        out.set("diagnostics", diagnostics_array(e.diagnostics()));
    } catch (const Error& e) {
        out.set("ok", false);
        val list = val::array();
        list.set(0, message_diagnostic(e.what()));
        out.set("diagnostics", list);
    } catch (const std::bad_alloc&) {
        out.set("ok", false);
        val list = val::array();
        list.set(0, message_diagnostic("out of memory (the page has at most 2 GiB: try a smaller n)"));
        out.set("diagnostics", list);
    }
    return out;
}

void settings_set(val& out, const dsl::Script& script) {
    const dsl::ScriptSettings& s = dsl::script_settings(script);
    out.set("layers", static_cast<double>(s.layers));
    out.set("heads", static_cast<double>(s.heads));
    out.set("block", s.block);
    out.set("causal", s.causal);
}

const Current& current_or_throw() {
    if (!current) throw Error("nothing compiled yet (call compile(script, n) first)");
    return *current;
}

const BlockMask& mask_at(int64_t layer, int64_t head) {
    const MaskSet& set = current_or_throw().set;
    if (layer < 0 || layer >= set.layers || head < 0 || head >= set.heads) {
        throw Error("(layer " + std::to_string(layer) + ", head " + std::to_string(head) + ") is outside the " +
                    std::to_string(set.layers) + " layers x " + std::to_string(set.heads) +
                    " heads (layers and heads count from 0)");
    }
    return set.at(layer, head);
}

// [SECTION] pictures

// cell_of[t] for t in [0, n): the picture cell (row or column) of token t, cells of
// [c * n / side, (c + 1) * n / side) tokens; side <= n so no cell is empty.
std::vector<int32_t> cells_of_tokens(int64_t n, int64_t side) {
    std::vector<int32_t> cell_of(static_cast<size_t>(n));
    for (int64_t c = 0; c < side; ++c) {
        for (int64_t t = c * n / side; t < (c + 1) * n / side; ++t) cell_of[static_cast<size_t>(t)] = static_cast<int32_t>(c);
    }
    return cell_of;
}

// The fraction of allowed pairs in each cell of a side x side picture of the mask (side <= n):
// pixel (x, y) covers queries [y * n / side, (y + 1) * n / side) and keys likewise for x. Work:
// per query, the cells its full blocks span and the set bits of its partial blocks.
std::vector<float> mask_fractions(const BlockMask& mask, int64_t side) {
    const int64_t n = mask.n, B = mask.block;
    const std::vector<int32_t> cell_of = cells_of_tokens(n, side);
    std::vector<double> count(static_cast<size_t>(side * side), 0.0);
    for (int64_t qb = 0; qb < mask.q_blocks(); ++qb) {
        for (int64_t q = qb * B; q < std::min(n, (qb + 1) * B); ++q) {
            double* row = count.data() + int64_t{cell_of[static_cast<size_t>(q)]} * side;
            for (int64_t i = mask.row_ptr[qb]; i < mask.row_ptr[qb + 1]; ++i) {
                const int64_t k0 = int64_t{mask.col_idx[i]} * B, k1 = std::min(n, k0 + B);
                if (mask.partial_idx[i] < 0) {
                    // A full block: its keys [k0, k1) span cells cell_of[k0] .. cell_of[k1 - 1].
                    for (int64_t c = cell_of[static_cast<size_t>(k0)]; c <= cell_of[static_cast<size_t>(k1 - 1)]; ++c) {
                        row[c] += static_cast<double>(std::min(k1, (c + 1) * n / side) - std::max(k0, c * n / side));
                    }
                } else {
                    const uint64_t* bits = mask.partial_bits(mask.partial_idx[i]);
                    for (int64_t k = k0; k < k1; ++k) {
                        if (bits_test(bits, (q - qb * B) * B + (k - k0))) row[cell_of[static_cast<size_t>(k)]] += 1;
                    }
                }
            }
        }
    }
    std::vector<float> out(count.size());
    for (int64_t y = 0; y < side; ++y) {
        const double rows = static_cast<double>((y + 1) * n / side - y * n / side);
        for (int64_t x = 0; x < side; ++x) {
            const double cols = static_cast<double>((x + 1) * n / side - x * n / side);
            out[static_cast<size_t>(y * side + x)] = static_cast<float>(count[static_cast<size_t>(y * side + x)] / (rows * cols));
        }
    }
    return out;
}

// [SECTION] api

// Parses and checks a script: {ok, diagnostics (warnings too), layers, heads, block, causal}.
val check(std::string text) {
    return guarded([&](val& out) {
        dsl::ScriptPtr script = dsl::script_parse(std::move(text), kScriptName);
        settings_set(out, *script);
        out.set("diagnostics", diagnostics_array(dsl::script_warnings(*script)));
    });
}

// Compiles a script for sequence length n and keeps the result for the calls below:
// {ok, diagnostics, ms, n, block, layers, heads, causal, density: [layers * heads] (index
// l * heads + h), distinct: [layers * heads] index of each one's distinct mask}. On failure the
// previous result stays current.
val compile(std::string text, double n_value) {
    return guarded([&](val& out) {
        const auto start = std::chrono::steady_clock::now();
        if (!(n_value >= 1 && n_value <= static_cast<double>(kMaxN)) || n_value != static_cast<int64_t>(n_value)) {
            char shown[32];
            std::snprintf(shown, sizeof shown, "%.17g", n_value);
            throw Error("n = " + std::string(shown) + " is not a sequence length (use an integer from 1 to " +
                        std::to_string(kMaxN) + ")");
        }
        Current next;
        next.script = dsl::script_parse(std::move(text), kScriptName);
        dsl::CompileOptions options;
        options.n = static_cast<int64_t>(n_value);
        dsl::Compiled compiled = dsl::script_compile(*next.script, options);
        next.set = std::move(compiled.masks);
        const MaskSet& set = next.set;
        const std::vector<int32_t> distinct = set.unique_index();
        const auto unique = set.unique_masks();
        std::vector<double> unique_density(unique.size());
        for (size_t u = 0; u < unique.size(); ++u) unique_density[u] = block_mask_stats(*unique[u]).density;
        std::vector<double> density(distinct.size());
        for (size_t i = 0; i < distinct.size(); ++i) density[i] = unique_density[static_cast<size_t>(distinct[i])];
        settings_set(out, *next.script);
        out.set("n", static_cast<double>(set.n));
        out.set("block", set.block);
        out.set("density", array_of(density));
        out.set("distinct", array_of(distinct));
        out.set("diagnostics", diagnostics_array(compiled.warnings));
        current = std::move(next);
        out.set("ms", ms_since(start));
    });
}

// One mask as a side x side picture (side = min(n, side)): {ok, side, fractions: Float32Array
// [side * side], row-major, query rows top to bottom, keys left to right}.
val mask_picture(double layer, double head, double side_value) {
    return guarded([&](val& out) {
        const BlockMask& mask = mask_at(static_cast<int64_t>(layer), static_cast<int64_t>(head));
        const int64_t side = std::clamp<int64_t>(static_cast<int64_t>(side_value), 1, std::min(mask.n, kMaxSide));
        out.set("side", static_cast<double>(side));
        out.set("fractions", float32_array(mask_fractions(mask, side)));
    });
}

// One mask's blocks: {ok, n, block, rowPtr: Float64Array [q_blocks + 1], colIdx: Int32Array
// [kept], partialIdx: Int32Array [kept]} (engine/block_mask.hpp's CSR form; bitmasks left out).
val mask_blocks(double layer, double head) {
    return guarded([&](val& out) {
        const BlockMask& mask = mask_at(static_cast<int64_t>(layer), static_cast<int64_t>(head));
        std::vector<double> row_ptr(mask.row_ptr.begin(), mask.row_ptr.end());
        out.set("n", static_cast<double>(mask.n));
        out.set("block", mask.block);
        out.set("rowPtr", typed_array("Float64Array", row_ptr));
        out.set("colIdx", typed_array("Int32Array", mask.col_idx));
        out.set("partialIdx", typed_array("Int32Array", mask.partial_idx));
    });
}

// Statistics of one mask (BlockMaskStats): {ok, keptBlocks, fullBlocks, partialBlocks,
// keptPairs, emptyRows, firstEmptyRow, density, maskBytes}.
val stats(double layer, double head) {
    return guarded([&](val& out) {
        const BlockMaskStats s = block_mask_stats(mask_at(static_cast<int64_t>(layer), static_cast<int64_t>(head)));
        out.set("keptBlocks", static_cast<double>(s.kept_blocks));
        out.set("fullBlocks", static_cast<double>(s.full_blocks));
        out.set("partialBlocks", static_cast<double>(s.partial_blocks));
        out.set("keptPairs", static_cast<double>(s.kept_pairs));
        out.set("emptyRows", static_cast<double>(s.empty_rows));
        out.set("firstEmptyRow", static_cast<double>(s.first_empty_row));
        out.set("density", s.density);
        out.set("maskBytes", static_cast<double>(s.mask_bytes));
    });
}

// Coverage of all pairs per layer (receptive_field_coverage, token resolution up to
// kReachTokenMaxN, block resolution above): {ok, ms, resolution, layers, causal, fractions:
// [computed + 1] (layer 0 first; past `layers` the last layer repeats), layersNeeded (-1: never
// or not within the run), saturationLayers, stopped, neverReason}.
val coverage() {
    return guarded([&](val& out) {
        const auto start = std::chrono::steady_clock::now();
        current_or_throw();
        Current& c = *current;
        if (!c.coverage) {
            ReachOptions options;
            options.resolution = reach_resolution_auto(c.set.n);
            // Enough to see where the curve flattens, yet quick for a window that needs n / w layers.
            options.max_layers = std::max<int64_t>(2 * c.set.layers, c.set.layers + 64);
            c.coverage = receptive_field_coverage(c.set, options);
        }
        const ReachCoverage& r = *c.coverage;
        std::vector<double> fractions(r.connected.size());
        for (size_t l = 0; l < fractions.size(); ++l) fractions[l] = r.fraction(static_cast<int64_t>(l));
        out.set("resolution", std::string(reach_resolution_name(r.resolution)));
        out.set("layers", static_cast<double>(r.layers));
        out.set("causal", r.causal);
        out.set("fractions", array_of(fractions));
        out.set("layersNeeded", static_cast<double>(r.layers_needed));
        out.set("saturationLayers", static_cast<double>(r.saturation_layers));
        out.set("stopped", r.stopped);
        out.set("neverReason", r.never_reason);
        out.set("ms", ms_since(start));
    });
}

// One token's receptive field after each layer, direction "in" (the keys it has seen) or "out"
// (the queries that have seen it): {ok, ms, token, sizes: [layers + 1], layersToAll, width,
// fractions: Float32Array [(layers + 1) * width], row l = layer l, column c = the fraction of
// tokens [c * n / width, (c + 1) * n / width) in the field}.
val field(double token_value, std::string direction_name, double width_value) {
    return guarded([&](val& out) {
        const auto start = std::chrono::steady_clock::now();
        current_or_throw();
        Current& c = *current;
        const int64_t n = c.set.n;
        if (direction_name != "in" && direction_name != "out") {
            throw Error("direction '" + direction_name + "' is not one of in, out");
        }
        const ReachDirection direction = direction_name == "in" ? ReachDirection::in : ReachDirection::out;
        if (!(token_value >= 0 && token_value < static_cast<double>(n))) {
            throw Error("token " + std::to_string(static_cast<int64_t>(token_value)) + " is outside [0, " +
                        std::to_string(n) + ") (pick a position below n)");
        }
        const bool need_transpose = direction == ReachDirection::out;
        if (!c.graph || (need_transpose && !c.graph_has_transpose)) {
            c.graph = reach_graph_make(c.set, need_transpose);
            c.graph_has_transpose = need_transpose;
        }
        const TokenReach reach = receptive_field_token(*c.graph, static_cast<int64_t>(token_value), direction, true);
        const int64_t width = std::clamp<int64_t>(static_cast<int64_t>(width_value), 1, std::min(n, kMaxSide));
        const std::vector<int32_t> cell_of = cells_of_tokens(n, width);
        std::vector<float> fractions(reach.sets.size() * static_cast<size_t>(width), 0.0f);
        for (size_t l = 0; l < reach.sets.size(); ++l) {
            float* row = fractions.data() + l * static_cast<size_t>(width);
            const std::vector<uint64_t>& set = reach.sets[l];
            for (size_t w = 0; w < set.size(); ++w) {
                for (uint64_t word = set[w]; word != 0; word &= word - 1) {
                    row[cell_of[w * 64 + static_cast<size_t>(__builtin_ctzll(word))]] += 1;
                }
            }
            for (int64_t x = 0; x < width; ++x) row[x] /= static_cast<float>((x + 1) * n / width - x * n / width);
        }
        out.set("token", static_cast<double>(reach.token));
        out.set("sizes", array_of(reach.sizes));
        out.set("layersToAll", static_cast<double>(reach.layers_to_all));
        out.set("width", static_cast<double>(width));
        out.set("fractions", float32_array(fractions));
        out.set("ms", ms_since(start));
    });
}

} // namespace sparsa::web

EMSCRIPTEN_BINDINGS(sparsa_web) {
    emscripten::function("check", &sparsa::web::check);
    emscripten::function("compile", &sparsa::web::compile);
    emscripten::function("maskPicture", &sparsa::web::mask_picture);
    emscripten::function("maskBlocks", &sparsa::web::mask_blocks);
    emscripten::function("stats", &sparsa::web::stats);
    emscripten::function("coverage", &sparsa::web::coverage);
    emscripten::function("field", &sparsa::web::field);
}
