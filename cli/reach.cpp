// sparsa reach: how far information travels through a pattern's layers (residual connections):
// coverage of all pairs per layer, or one token's field, as a table, JSON, a PNG plot, or .npy.
#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/outputs.hpp"
#include "io/npy.hpp"
#include "plot/plot_png.hpp"
#include "analysis/receptive_field.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <cstdio>
#include <optional>
#include <string>

namespace sparsa::cli {

namespace {

const char* const kReachHelp = R"(usage: sparsa reach FILE --n N [--block B] [--resolution token|block|auto] [--token T]
                    [--direction in|out] [--json] [--png OUT.png] [--dense OUT.npy]
                    [--max-layers M] [--threads T]

How far information travels through the script's layers. With residual connections, after l
layers query q has seen key k when a chain of allowed pairs links them through layers 1..l
(within a layer, through any head); a position always sees itself.

Without --token: the fraction of pairs connected after each layer, the layers the pattern needs
to connect every pair (repeating the last layer past the script's `layers`), or why no depth
does, and the pairs still out of reach after `layers`, at the resolution --resolution chooses.
A causal pattern counts only the pairs with k <= q.
  --resolution auto   token for N <= 8192, else block (the default)
  --resolution token  exact: one node per token, the reach as N x N bits, N * N / 8 bytes
                      (32 MiB at N = 16384, 128 MiB at 32768; N up to 65536). Time grows with
                      the kept pairs times the new pairs each layer carries. Measured on 2
                      cores, window(64): N = 16384, 256 layers needed, 1.3 s and 43 MB in all;
                      N = 32768, 512 layers, 6.9 s and 146 MB
  --resolution block  one node per block (or group of blocks, at most 8192 nodes): quick (0.03 s
                      for that window(64) at 16384) but over-approximates, as a kept block counts
                      as connecting all its pairs: the layers needed are a lower bound ("at
                      least 255" there)
  --token T        the field of token T after each layer instead (exact at any N; for N up
                   to 65536 also its positions, as runs first..last)
  --direction in   with --token: the keys query T has seen (default)
  --direction out  with --token: the queries that have seen key T
  --json           print one JSON object instead of the table
  --png OUT.png    plot the table's curve against the number of layers
  --dense OUT.npy  write the token-level reach as a numpy bool array [layers, N, N]: [l, q, k]
                   is true when query q has seen key k after layer l (0-based, as `l` in the
                   script: [0] is after the first layer); N up to 8192
  --max-layers M   stop counting layers needed after M layers (default: no limit; at most
                   the script's layers + N, or + the block graph's nodes)
  --block B        block size (16, 32, 64, 128 or 256); default: the script's `block`, else 64
  --threads T      threads for compiling and for the analysis
Outputs are written whole or not at all.
)";

constexpr int64_t kMaxDenseN = 8192;
// Token resolution keeps N x N bits: at 65536, 512 MiB.
constexpr int64_t kMaxTokenResolutionN = 65536;
constexpr int64_t kMaxN = int64_t{1} << 31;

std::string with_commas(int64_t v) {
    std::string s = std::to_string(v), out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (i > 0 && s[i - 1] != '-' && (s.size() - i) % 3 == 0) out += ',';
        out += s[i];
    }
    return out;
}

std::string percent(double fraction) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, fraction < 0.001 && fraction > 0 ? "%.4f%%" : "%.2f%%", 100 * fraction);
    return buffer;
}

// Up to this n, one token's field is also shown as its runs of consecutive positions.
constexpr int64_t kMaxRangesN = 65536;

// The runs [begin, end) of set bits. set: [ceil(n / 64)] words.
std::vector<std::pair<int64_t, int64_t>> bits_runs(const std::vector<uint64_t>& set, int64_t n) {
    std::vector<std::pair<int64_t, int64_t>> runs;
    for (int64_t t = 0; t < n; ++t) {
        if (!bits_test(set.data(), t)) continue;
        if (runs.empty() || runs.back().second != t) runs.emplace_back(t, t + 1);
        else runs.back().second = t + 1;
    }
    return runs;
}

// "0..576, 1000..1063 (+3 more)": the first runs, inclusive ends.
std::string runs_text(const std::vector<std::pair<int64_t, int64_t>>& runs) {
    std::string out;
    for (size_t i = 0; i < runs.size() && i < 3; ++i) {
        out += (i ? ", " : "") + std::to_string(runs[i].first) + ".." + std::to_string(runs[i].second - 1);
    }
    if (runs.size() > 3) out += " (+" + std::to_string(runs.size() - 3) + " more)";
    return out;
}

// R_l rows as bytes, layer after layer, into an [layers, N, N] bool .npy file.
class DenseReachWriter {
public:
    DenseReachWriter(const std::string& path, int64_t layers, int64_t n)
        : writer_(path, NpyDtype::boolean, {layers, n, n}), n_(n), row_(static_cast<size_t>(n)) {}
    void write(const std::vector<uint64_t>& rows, int64_t words) {  // rows: [n, words] bitsets
        for (int64_t q = 0; q < n_; ++q) {
            for (int64_t k = 0; k < n_; ++k) row_[static_cast<size_t>(k)] = (rows[static_cast<size_t>(q * words + k / 64)] >> (k % 64)) & 1U;
            writer_.write(row_.data(), row_.size());
        }
    }
    void commit() { writer_.commit(); }

private:
    NpyWriter writer_;
    int64_t n_;
    std::vector<uint8_t> row_;
};

} // namespace

int command_reach(const std::vector<std::string>& argv) {
    Args args(argv, "reach", {"--n", "--block", "--token", "--direction", "--png", "--dense", "--threads", "--max-layers", "--resolution"},
              {"--help", "--json"});
    if (args.has("--help")) {
        std::fputs(kReachHelp, stdout);
        return 0;
    }
    if (args.positionals().size() != 1) throw Error("reach: give exactly one script (sparsa reach FILE --n N)");
    const std::string path = args.positionals()[0];
    const int64_t n = args.required_integer("--n", 1, kMaxN);
    const bool by_token = args.has("--token");
    const int64_t token = args.position("--token", 0, n, "n = " + std::to_string(n));
    ReachDirection direction = ReachDirection::in;
    if (auto d = args.value("--direction")) {
        if (!by_token) throw Error("reach: --direction applies to --token T (the field of one token); all pairs have no direction");
        if (*d != "in" && *d != "out") throw Error("reach: --direction expects 'in' or 'out'; got '" + *d + "'");
        direction = *d == "in" ? ReachDirection::in : ReachDirection::out;
    }
    ReachResolution resolution = reach_resolution_auto(n);
    if (auto r = args.value("--resolution")) {
        if (*r != "token" && *r != "block" && *r != "auto") {
            throw Error("reach: --resolution expects token, block or auto; got '" + *r + "' (see sparsa reach --help for what each costs)");
        }
        if (by_token) throw Error("reach: --resolution applies to all pairs; --token T follows one token exactly at any N (drop one of them)");
        if (*r == "token") resolution = ReachResolution::token;
        if (*r == "block") resolution = ReachResolution::block;
        if (*r == "token" && n > kMaxTokenResolutionN) {
            throw Error("reach: --resolution token keeps N x N bits and is limited to N <= 65536; got N = " + std::to_string(n) +
                        " (use --resolution block, or --token T for one token's field)");
        }
    }
    const auto png_path = args.value("--png"), dense_path = args.value("--dense");
    if (dense_path && resolution == ReachResolution::block && n <= kMaxDenseN) {
        throw Error("reach: --dense writes the token-level reach, which --resolution block does not compute (drop one of them)");
    }
    if (dense_path && n > kMaxDenseN) {
        throw Error("reach: --dense writes an [layers, N, N] array and is limited to N <= 8192; got N = " + std::to_string(n) +
                    " (use --token T for one token's field at any N)");
    }
    const int threads = static_cast<int>(args.integer("--threads", 0, 0, 4096));
    const int64_t max_layers = args.integer("--max-layers", 0, 1, int64_t{1} << 40);
    const int32_t block = args.block_size();
    OutputSet outputs("reach");
    outputs.input(path, "the script");
    if (png_path) outputs.output("--png", *png_path);
    if (dense_path) outputs.output("--dense", *dense_path);

    dsl::ScriptPtr script = load_script_or_report(path);
    if (dense_path) {
        const double bytes = static_cast<double>(dsl::script_settings(*script).layers) * static_cast<double>(n) * static_cast<double>(n);
        if (bytes > 16.0 * (1 << 30)) {
            throw Error("reach: --dense would write " + std::to_string(static_cast<int64_t>(bytes / (1 << 30))) +
                        " GiB (layers x N x N bytes); use a smaller N");
        }
    }
    dsl::CompileOptions options;
    options.n = n;
    options.block = block;
    options.threads = threads;
    const dsl::Compiled compiled = dsl::script_compile(*script, options);
    if (!args.has("--json")) print_diagnostics(compiled.warnings);
    const MaskSet& set = compiled.masks;
    const auto start = std::chrono::steady_clock::now();

    // All pairs (also for --dense, which needs the token-level rows).
    std::optional<ReachCoverage> cov;
    std::optional<DenseReachWriter> dense;
    if (!by_token || dense_path) {
        ReachOptions reach;
        reach.resolution = dense_path ? ReachResolution::token : resolution;
        reach.threads = threads;
        reach.max_layers = max_layers;
        if (dense_path) {
            dense.emplace(*dense_path, set.layers, n);
            reach.on_layer = [&](int64_t, const std::vector<uint64_t>& rows, int64_t words) { dense->write(rows, words); };
        }
        cov = receptive_field_coverage(set, reach);
    }
    std::optional<TokenReach> field;
    if (by_token) field = receptive_field_token(reach_graph_make(set, direction == ReachDirection::out), token, direction, n <= kMaxRangesN);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    const std::string header = path + ": n = " + std::to_string(n) + ", block " + std::to_string(set.block) + ", " +
                               std::to_string(set.layers) + " layer" + (set.layers == 1 ? "" : "s") + " x " +
                               std::to_string(set.heads) + " head" + (set.heads == 1 ? "" : "s");
    nlohmann::json json = {{"script", path}, {"n", n}, {"block", set.block}, {"layers", set.layers}, {"heads", set.heads}, {"seconds", seconds}};
    const std::string name = std::filesystem::path(path).filename().string();
    Plot plot;
    plot.x_label = "layers";
    plot.x_integer = true;
    plot.y_percent = true;
    plot.markers.push_back({static_cast<double>(set.layers), "layers " + std::to_string(set.layers)});
    PlotSeries series;
    series.rgb = 0x1f77b4;

    if (field) {
        const char* what = direction == ReachDirection::in ? "the keys query " : "the queries that have seen key ";
        json["token"] = token;
        json["direction"] = reach_direction_name(direction);
        json["sizes"] = field->sizes;
        json["layers_to_all"] = field->layers_to_all >= 0 ? nlohmann::json(field->layers_to_all) : nlohmann::json(nullptr);
        std::vector<std::vector<std::pair<int64_t, int64_t>>> runs;  // [layers + 1] when n is small
        for (const auto& set_bits : field->sets) runs.push_back(bits_runs(set_bits, n));
        if (!runs.empty()) json["ranges"] = runs;  // [layers + 1][runs] of [begin, end)
        if (!args.has("--json")) {
            outputs.say("%s; token %lld, direction %s (%s%lld%s)\n\n%7s %14s %10s  %s\n", header.c_str(), static_cast<long long>(token),
                        reach_direction_name(direction), what, static_cast<long long>(token),
                        direction == ReachDirection::in ? " has seen" : "", "layers", "field size", "of n", runs.empty() ? "" : "positions");
            for (size_t l = 0; l < field->sizes.size(); ++l) {
                outputs.say("%7zu %14s %10s  %s\n", l, with_commas(field->sizes[l]).c_str(),
                            percent(static_cast<double>(field->sizes[l]) / static_cast<double>(n)).c_str(),
                            runs.empty() ? "" : runs_text(runs[l]).c_str());
            }
            if (field->layers_to_all >= 0) {
                outputs.say("\nthe field covers all %s tokens after %lld layer%s\n", with_commas(n).c_str(),
                            static_cast<long long>(field->layers_to_all), field->layers_to_all == 1 ? "" : "s");
            } else {
                outputs.say("\nthe field covers %s of the %s tokens after %lld layers\n", percent(static_cast<double>(field->sizes.back()) / static_cast<double>(n)).c_str(),
                            with_commas(n).c_str(), static_cast<long long>(set.layers));
            }
        }
        plot.title = name + ": field of token " + std::to_string(token) + " (" + reach_direction_name(direction) + "), n = " + std::to_string(n);
        plot.y_label = "field size / n";
        for (size_t l = 0; l < field->sizes.size(); ++l) {
            series.x.push_back(static_cast<double>(l));
            series.y.push_back(static_cast<double>(field->sizes[l]) / static_cast<double>(n));
        }
        plot.x_max = static_cast<double>(set.layers);
    } else {
        const ReachCoverage& c = *cov;
        const bool exact = c.resolution == ReachResolution::token;
        const std::string resolution = exact ? "token resolution (exact)"
                                             : "block resolution, nodes of " + std::to_string(c.node_tokens) + " tokens (over-approximates)";
        const int64_t depth = static_cast<int64_t>(c.connected.size()) - 1;
        json["resolution"] = reach_resolution_name(c.resolution);
        json["node_tokens"] = c.node_tokens;
        json["causal"] = c.causal;
        json["target_pairs"] = c.target_pairs;
        json["connected"] = c.connected;
        nlohmann::json fractions = nlohmann::json::array();
        for (int64_t l = 0; l <= depth; ++l) fractions.push_back(c.fraction(l));
        json["coverage"] = fractions;
        json["layers_needed"] = c.layers_needed >= 0 ? nlohmann::json(c.layers_needed) : nlohmann::json(nullptr);
        json["out_of_reach"] = c.out_of_reach;
        json["never_pairs"] = c.never_pairs;
        json["never_reason"] = c.never_reason;
        json["stopped"] = c.stopped;
        if (!args.has("--json")) {
            outputs.say("%s; all %s pairs%s, %s\n\n%7s %20s %10s\n", header.c_str(), with_commas(c.target_pairs).c_str(),
                        c.causal ? " with k <= q (causal)" : "", resolution.c_str(), "layers", "pairs connected", "coverage");
            for (int64_t l = 0; l <= c.layers; ++l) {
                outputs.say("%7lld %20s %10s\n", static_cast<long long>(l), with_commas(c.connected[static_cast<size_t>(l)]).c_str(),
                            percent(c.fraction(l)).c_str());
            }
            outputs.say("\n");
            if (c.stopped) {
                outputs.say("layers needed to connect every pair: more than %lld (stopped by --max-layers)\n",
                            static_cast<long long>(depth));
            } else if (c.layers_needed >= 0) {
                outputs.say("layers needed to connect every pair: %s%lld%s\n", exact ? "" : "at least ", static_cast<long long>(c.layers_needed),
                            c.layers_needed > c.layers ? " (past the script's layers, the last layer repeats)" : "");
            } else {
                outputs.say("layers needed to connect every pair: never; %s pairs (%s) stay out of reach at any depth: %s\n",
                            with_commas(c.never_pairs).c_str(), percent(static_cast<double>(c.never_pairs) / static_cast<double>(c.target_pairs)).c_str(),
                            c.never_reason.c_str());
            }
            outputs.say("pairs out of reach after %lld layer%s: %s (%s)\n", static_cast<long long>(c.layers), c.layers == 1 ? "" : "s",
                        with_commas(c.out_of_reach).c_str(), percent(static_cast<double>(c.out_of_reach) / static_cast<double>(c.target_pairs)).c_str());
        }
        plot.title = name + ": pairs connected, n = " + std::to_string(n) + (exact ? "" : " (block resolution)");
        plot.y_label = c.causal ? "pairs k <= q connected" : "pairs connected";
        for (int64_t l = 0; l <= depth; ++l) {
            series.x.push_back(static_cast<double>(l));
            series.y.push_back(c.fraction(l));
        }
        plot.x_max = static_cast<double>(std::max(depth, c.layers));
        if (c.layers_needed > c.layers) plot.markers.push_back({static_cast<double>(c.layers_needed), "needed " + std::to_string(c.layers_needed)});
    }
    if (args.has("--json")) outputs.say("%s\n", json.dump(2).c_str());
    if (png_path) {
        plot.series.push_back(series);
        plot_png_save(plot, *png_path, 900, 540);
        if (!args.has("--json")) outputs.say("wrote %s\n", png_path->c_str());
    }
    if (dense) {
        dense->commit();
        if (!args.has("--json")) outputs.say("wrote %s\n", dense_path->c_str());
    }
    outputs.commit();
    return 0;
}

} // namespace sparsa::cli
