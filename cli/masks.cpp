// sparsa compile, stats and show: compile a script for a sequence length, then save the masks,
// count what they keep, or draw one of them. Content-based heads (lsh, anchors, favor) compile to
// their fixed part and a spec: these commands count and draw the fixed part and say so.
#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/outputs.hpp"
#include "io/mask_io.hpp"
#include "io/npy.hpp"
#include "analysis/receptive_field.hpp"
#include "plot/mask_figure.hpp"
#include "plot/mask_stats_chart.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

namespace sparsa::cli {

namespace {

// The largest N for which --dense writes an [layers, heads, N, N] array.
constexpr int64_t kMaxDenseN = 8192;
constexpr int64_t kMaxN = int64_t{1} << 40;

struct CompiledScript {
    dsl::ScriptPtr script;
    dsl::Compiled compiled;
    double seconds = 0;
};

CompiledScript compile_file(const std::string& path, const Args& args) {
    CompiledScript out;
    out.script = load_script_or_report(path);
    dsl::CompileOptions options;
    options.n = args.required_integer("--n", 1, kMaxN);
    options.block = args.block_size();
    options.threads = static_cast<int>(args.integer("--threads", 0, 0, 4096));
    options.content = true;
    auto start = std::chrono::steady_clock::now();
    out.compiled = dsl::script_compile(*out.script, options);
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return out;
}

// The receptive-field warning (analysis/receptive_field.hpp): when some query cannot reach some
// key within the script's layers, a warning at the first `attend` line joins the compile's.
void append_reach_warning(CompiledScript& c, int threads) {
    if (!c.compiled.masks.content.empty()) return;  // content heads add pairs per input: reach is not known
    const ReachWarning w = receptive_field_unreached(c.compiled.masks, threads);
    if (!w.warn) return;
    auto source = std::make_shared<const dsl::Source>(dsl::script_source(*c.script));
    const std::string& text = source->text;
    int32_t begin = 0, end = 0;
    for (size_t line = 0; line < text.size();) {
        const size_t at = text.find_first_not_of(" \t", line);
        if (at != std::string::npos && text.compare(at, 6, "attend") == 0 &&
            (at + 6 == text.size() || !(std::isalnum(static_cast<unsigned char>(text[at + 6])) || text[at + 6] == '_'))) {
            begin = static_cast<int32_t>(at);
            end = begin + 6;
            break;
        }
        line = text.find('\n', line);
        if (line != std::string::npos) ++line;
    }
    c.compiled.warnings.push_back(dsl::diagnostic_at(dsl::Severity::warning, source, begin, end, w.message, w.hint));
}

std::string human_bytes(int64_t bytes) {
    char buffer[32];
    if (bytes < 1024) std::snprintf(buffer, sizeof buffer, "%lld B", static_cast<long long>(bytes));
    else if (bytes < 1024 * 1024) std::snprintf(buffer, sizeof buffer, "%.1f KiB", static_cast<double>(bytes) / 1024);
    else if (bytes < int64_t{1} << 30) std::snprintf(buffer, sizeof buffer, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
    else std::snprintf(buffer, sizeof buffer, "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
    return buffer;
}

std::string percent(double fraction) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, fraction < 0.001 && fraction > 0 ? "%.4f%%" : "%.2f%%", 100 * fraction);
    return buffer;
}

// What one mask keeps, and what attention with it costs against dense.
struct MaskCounts {
    BlockMaskStats stats;
    int64_t block_pairs = 0;  // pairs inside kept blocks: the work a block-sparse kernel does
};

MaskCounts count_mask(const BlockMask& mask) {
    MaskCounts c;
    c.stats = block_mask_stats(mask);
    for (int64_t qb = 0; qb < mask.q_blocks(); ++qb) {
        for (int64_t i = mask.row_ptr[static_cast<size_t>(qb)]; i < mask.row_ptr[static_cast<size_t>(qb) + 1]; ++i) {
            c.block_pairs += block_valid_pairs(mask, qb, mask.col_idx[static_cast<size_t>(i)]);
        }
    }
    return c;
}

// [SECTION] content-based heads

const ContentSpec* content_at(const MaskSet& set, int64_t layer, int64_t head) {
    return set.content.empty() ? nullptr : set.content[static_cast<size_t>(layer * set.heads + head)].get();
}

int64_t content_heads(const MaskSet& set) {
    return std::count_if(set.content.begin(), set.content.end(), [](const auto& spec) { return spec != nullptr; });
}

// What a head's family adds, for the table's label: "lsh" (its pairs alone), "+lsh" (united with
// a fixed part that keeps pairs) or "favor".
std::string content_mark(const ContentSpec* spec, bool has_fixed_part) {
    if (spec == nullptr) return "";
    if (spec->kind == ContentKind::favor) return " favor";
    return std::string(has_fixed_part ? " +" : " ") + content_kind_name(spec->kind);
}

// What the table says in place of a content head's figures, which only an input decides.
std::string content_row_text(const ContentSpec& spec, bool has_fixed_part) {
    if (spec.kind == ContentKind::favor) return "FAVOR+ estimates attention over every key: no pairs, no mask";
    return "pairs decided per input (sparsa run counts them); " +
           std::string(has_fixed_part ? "its fixed part:" : "no fixed part");
}

// One line per distinct family: "  lsh(64, rounds = 2, chunk = 64): 12 heads (L0 H0, L0 H1, ...)".
std::string content_summary(const MaskSet& set) {
    std::vector<const ContentSpec*> specs;
    std::vector<std::vector<std::string>> heads;
    for (int64_t l = 0; l < set.layers; ++l) {
        for (int64_t h = 0; h < set.heads; ++h) {
            const ContentSpec* spec = content_at(set, l, h);
            if (spec == nullptr) continue;
            const size_t i = static_cast<size_t>(std::find(specs.begin(), specs.end(), spec) - specs.begin());
            if (i == specs.size()) {
                specs.push_back(spec);
                heads.emplace_back();
            }
            heads[i].push_back("L" + std::to_string(l) + " H" + std::to_string(h));
        }
    }
    std::string out;
    for (size_t i = 0; i < specs.size(); ++i) {
        std::string list;
        for (size_t j = 0; j < heads[i].size() && j < 6; ++j) list += (j ? ", " : "") + heads[i][j];
        if (heads[i].size() > 6) list += ", ...";
        out += "  " + dsl::content_spec_text(*specs[i]) + (specs[i]->causal ? ", causal" : "") + ": " +
               std::to_string(heads[i].size()) + " head" + (heads[i].size() == 1 ? "" : "s") + " (" + list + ")\n";
    }
    return out;
}

// The note under a count: which heads are content-based and that the counts leave their pairs out.
void content_note(const MaskSet& set) {
    const int64_t count = content_heads(set);
    if (count == 0) return;
    std::printf("\n%lld of %lld heads are content-based: their pairs are realised per input (sparsa run reports them),\n"
                "so the counts above are the fixed part's alone (favor: FAVOR+ approximates dense attention, no mask).\n%s",
                static_cast<long long>(count), static_cast<long long>(set.layers * set.heads), content_summary(set).c_str());
}

// [SECTION] compile

const char* const kCompileHelp = R"(usage: sparsa compile FILE --n N [--block B] [-o OUT.npz] [--dense OUT.npy] [--threads T]

Compiles a pattern script into one block-sparse mask per (layer, head) for sequence length N.
A head with a content-based family (lsh, anchors, favor) gets its fixed part as its mask and the
family's spec beside it; its pairs are realised per input (--dense is refused for such a set).
  --block B       block size (16, 32, 64, 128 or 256); default: the script's `block`, else 64
  -o OUT.npz      save the masks (format: docs/formats.md); nothing is written without -o
  --dense OUT.npy also write the token-level mask as a numpy bool array [layers, heads, N, N]
                  (N up to 8192)
  --threads T     compile rows on T threads (default: SPARSA_THREADS or the core count)
Outputs are written whole or not at all.
)";

void write_dense(const MaskSet& set, const std::string& path) {
    const int64_t n = set.n;
    NpyWriter writer(path, NpyDtype::boolean, {set.layers, set.heads, n, n});
    std::vector<uint8_t> row(static_cast<size_t>(n));
    for (int64_t l = 0; l < set.layers; ++l) {
        for (int64_t h = 0; h < set.heads; ++h) {
            const BlockMask& mask = set.at(l, h);
            for (int64_t q = 0; q < n; ++q) {
                std::fill(row.begin(), row.end(), uint8_t{0});
                const int64_t qb = q / mask.block, i = q % mask.block;
                for (int64_t e = mask.row_ptr[static_cast<size_t>(qb)]; e < mask.row_ptr[static_cast<size_t>(qb) + 1]; ++e) {
                    const int64_t kb = mask.col_idx[static_cast<size_t>(e)];
                    const int64_t k0 = kb * mask.block, k1 = std::min(n, k0 + mask.block);
                    const int32_t p = mask.partial_idx[static_cast<size_t>(e)];
                    for (int64_t k = k0; k < k1; ++k) {
                        if (p < 0) {
                            row[static_cast<size_t>(k)] = 1;
                        } else {
                            const int64_t bit = i * mask.block + (k - k0);
                            row[static_cast<size_t>(k)] = (mask.partial_bits(p)[bit / 64] >> (bit % 64)) & 1;
                        }
                    }
                }
                writer.write(row.data(), row.size());
            }
        }
    }
    writer.commit();
}

} // namespace

int command_compile(const std::vector<std::string>& argv) {
    Args args(argv, "compile", {"--n", "--block", "-o", "--out", "--dense", "--threads"}, {"--help"});
    if (args.has("--help")) {
        std::fputs(kCompileHelp, stdout);
        return 0;
    }
    if (args.positionals().size() != 1) throw Error("compile: give exactly one script (sparsa compile FILE --n N)");
    if (args.has("-o") && args.has("--out")) throw Error("compile: give -o or --out, not both");
    auto out_path = args.has("-o") ? args.value("-o") : args.value("--out");
    auto dense_path = args.value("--dense");
    const int64_t n = args.required_integer("--n", 1, kMaxN);
    if (dense_path && n > kMaxDenseN) {
        throw Error("--dense writes an [layers, heads, N, N] array and is limited to N <= 8192; got N = " +
                    std::to_string(n) + " (use -o OUT.npz for the block-sparse masks)");
    }
    OutputSet outputs("compile");
    outputs.input(args.positionals()[0], "the script being compiled");
    if (out_path) outputs.output(args.has("-o") ? "-o" : "--out", *out_path);
    if (dense_path) outputs.output("--dense", *dense_path);
    CompiledScript c = compile_file(args.positionals()[0], args);
    append_reach_warning(c, static_cast<int>(args.integer("--threads", 0, 0, 4096)));
    print_diagnostics(c.compiled.warnings);
    const MaskSet& set = c.compiled.masks;
    if (dense_path && content_heads(set) > 0) {
        for (int64_t i = 0; i < set.layers * set.heads; ++i) {
            if (const ContentSpec* spec = set.content[static_cast<size_t>(i)].get()) {
                throw Error("--dense writes every pair, but layer " + std::to_string(i / set.heads) + ", head " +
                            std::to_string(i % set.heads) + " is content-based (" + dsl::content_spec_text(*spec) +
                            "): its pairs are realised per input (give -o OUT.npz for the fixed part and the spec)");
            }
        }
    }
    if (dense_path) {
        const double bytes = static_cast<double>(set.layers * set.heads) * static_cast<double>(n) * static_cast<double>(n);
        if (bytes > 16.0 * (1 << 30)) {
            throw Error("--dense would write " + human_bytes(static_cast<int64_t>(bytes)) +
                        " (layers x heads x N x N bytes); use a smaller N or -o OUT.npz");
        }
    }
    int64_t kept = 0, pairs = 0;
    for (int64_t l = 0; l < set.layers; ++l) {
        for (int64_t h = 0; h < set.heads; ++h) {
            BlockMaskStats s = block_mask_stats(set.at(l, h));
            kept += s.kept_blocks;
            pairs += s.kept_pairs;
        }
    }
    const double total_pairs = static_cast<double>(set.layers * set.heads) * static_cast<double>(n) * static_cast<double>(n);
    const size_t distinct = set.unique_masks().size();
    outputs.say("%s: n = %lld, block %d, %lld layer%s x %lld head%s (%zu distinct mask%s), %lld kept blocks, density %s, compiled in %.3f s\n",
                args.positionals()[0].c_str(), static_cast<long long>(n), set.block,
                static_cast<long long>(set.layers), set.layers == 1 ? "" : "s",
                static_cast<long long>(set.heads), set.heads == 1 ? "" : "s", distinct, distinct == 1 ? "" : "s",
                static_cast<long long>(kept), percent(static_cast<double>(pairs) / total_pairs).c_str(), c.seconds);
    if (const int64_t count = content_heads(set); count > 0) {
        outputs.say("%lld of %lld heads are content-based (the masks and the density above are their fixed part; the file keeps "
                    "each head's spec, and their pairs are realised per input):\n%s",
                    static_cast<long long>(count), static_cast<long long>(set.layers * set.heads), content_summary(set).c_str());
    }
    if (out_path) {
        MaskSet saved = set;
        saved.params.emplace_back("n", std::to_string(n));
        saved.params.emplace_back("block", std::to_string(set.block));
        mask_set_save(saved, *out_path);
        outputs.say("wrote %s\n", out_path->c_str());
    }
    if (dense_path) {
        write_dense(set, *dense_path);
        outputs.say("wrote %s\n", dense_path->c_str());
    }
    if (!out_path && !dense_path) outputs.say("(no -o given: nothing written)\n");
    outputs.commit();
    return 0;
}

// [SECTION] stats

namespace {

const char* const kStatsHelp = R"(usage: sparsa stats FILE... --n N [--block B] [--json] [--brief] [--png OUT.png [--width W]]

For each (layer, head) and in total: kept blocks (full and partial), kept pairs, density
(kept pairs / N^2), the FLOPs of attention against dense (on kept pairs, and on kept blocks as
a block-sparse kernel computes them), mask memory, query rows with no key, and the warnings.
Content-based heads (lsh, anchors, favor) have pairs that are decided per input (sparsa run
reports them): their row says so, and the figures of their fixed part, if any (`window(64) |
lsh(64)`: the window), follow on a row of their own, "fixed part". The total is then "fixed
total": the fixed heads and the fixed parts, with empty rows counted in the fixed heads alone
(a content head's rows get keys per input). --json gives such a head "pairs": "per input" and
its figures under "fixed_part" (null for favor, which has no mask).
  --json         print one JSON object per script instead of tables
  --brief        one line per script (the total)
  --png OUT.png  also draw the density and block FLOPs of every (layer, head) as two heat maps
                 (rows layers, columns heads, one colour scale; one FILE only)
  --width W      the chart's width in pixels, 300 to 8192 (default 1000; the height follows)
  --block B      block size (16, 32, 64, 128 or 256); default: the script's `block`, else 64
Outputs are written whole or not at all.
)";

nlohmann::json counts_json(const MaskCounts& c, int64_t n) {
    const double n2 = static_cast<double>(n) * static_cast<double>(n);
    return {{"kept_blocks", c.stats.kept_blocks},
            {"full_blocks", c.stats.full_blocks},
            {"partial_blocks", c.stats.partial_blocks},
            {"kept_pairs", c.stats.kept_pairs},
            {"density", static_cast<double>(c.stats.kept_pairs) / n2},
            {"flops_vs_dense", static_cast<double>(c.stats.kept_pairs) / n2},
            {"block_flops_vs_dense", static_cast<double>(c.block_pairs) / n2},
            {"mask_bytes", c.stats.mask_bytes},
            {"empty_rows", c.stats.empty_rows}};
}

} // namespace

int command_stats(const std::vector<std::string>& argv) {
    Args args(argv, "stats", {"--n", "--block", "--threads", "--png", "--width"}, {"--help", "--json", "--brief"});
    if (args.has("--help")) {
        std::fputs(kStatsHelp, stdout);
        return 0;
    }
    if (args.positionals().empty()) throw Error("stats: give at least one script (sparsa stats FILE... --n N)");
    const bool json = args.has("--json"), brief = args.has("--brief");
    const auto png_path = args.value("--png");
    if (args.has("--width") && !png_path) throw Error("stats: --width sets the size of the --png chart; give --png OUT.png too");
    const int png_width = static_cast<int>(args.integer("--width", 1000, 300, 8192));
    if (png_path && args.positionals().size() != 1) {
        throw Error("stats: --png draws the chart of one script; got " + std::to_string(args.positionals().size()) +
                    " scripts (run sparsa stats once per script)");
    }
    args.required_integer("--n", 1, kMaxN);  // before the output is checked: a bad --n is the first error
    OutputSet outputs("stats");
    if (png_path) {
        outputs.input(args.positionals()[0], "the script");
        outputs.output("--png", *png_path);
    }
    std::optional<MaskSet> drawn;  // the set --png draws
    for (const auto& path : args.positionals()) {
        CompiledScript c = compile_file(path, args);
        append_reach_warning(c, static_cast<int>(args.integer("--threads", 0, 0, 4096)));
        const MaskSet& set = c.compiled.masks;
        if (png_path) drawn = set;
        const int64_t n = set.n;
        const double n2 = static_cast<double>(n) * static_cast<double>(n);
        // Count each distinct mask once.
        std::vector<int32_t> index = set.unique_index();
        std::vector<MaskCounts> unique;
        for (const auto& mask : set.unique_masks()) unique.push_back(count_mask(*mask));
        MaskCounts total;
        int64_t total_mask_bytes = 0;
        for (int64_t i = 0; i < set.layers * set.heads; ++i) {
            const MaskCounts& u = unique[static_cast<size_t>(index[static_cast<size_t>(i)])];
            total.stats.kept_blocks += u.stats.kept_blocks;
            total.stats.full_blocks += u.stats.full_blocks;
            total.stats.partial_blocks += u.stats.partial_blocks;
            total.stats.kept_pairs += u.stats.kept_pairs;
            // A content head's row without a fixed key is not empty: its family gives it keys per input.
            if (content_at(set, i / set.heads, i % set.heads) == nullptr) total.stats.empty_rows += u.stats.empty_rows;
            total.block_pairs += u.block_pairs;
        }
        for (const auto& u : unique) total_mask_bytes += u.stats.mask_bytes;
        total.stats.mask_bytes = total_mask_bytes;
        const double masks = static_cast<double>(set.layers * set.heads);

        if (json) {
            nlohmann::json out = {{"script", path}, {"n", n}, {"block", set.block}, {"layers", set.layers},
                                  {"heads", set.heads}, {"distinct_masks", unique.size()},
                                  {"compile_seconds", c.seconds}};
            nlohmann::json total_json = counts_json(total, n);
            total_json["density"] = static_cast<double>(total.stats.kept_pairs) / (n2 * masks);
            total_json["flops_vs_dense"] = total_json["density"];
            total_json["block_flops_vs_dense"] = static_cast<double>(total.block_pairs) / (n2 * masks);
            out["total"] = total_json;
            nlohmann::json per = nlohmann::json::array();
            for (int64_t l = 0; l < set.layers; ++l) {
                for (int64_t h = 0; h < set.heads; ++h) {
                    const MaskCounts& counts = unique[static_cast<size_t>(index[static_cast<size_t>(l * set.heads + h)])];
                    const ContentSpec* spec = content_at(set, l, h);
                    // A content head's figures are its fixed part's, kept apart so that no reader
                    // takes them for the head's (an lsh head alone would read "empty_rows": n).
                    nlohmann::json item = spec == nullptr ? counts_json(counts, n) : nlohmann::json::object();
                    item["layer"] = l;
                    item["head"] = h;
                    item["mask"] = index[static_cast<size_t>(l * set.heads + h)];
                    item["pairs"] = spec == nullptr ? "fixed" : "per input";
                    item["content"] = spec == nullptr ? nlohmann::json() : nlohmann::json::parse(content_spec_json(*spec));
                    if (spec != nullptr) {
                        item["fixed_part"] = spec->kind == ContentKind::favor ? nlohmann::json() : counts_json(counts, n);
                    }
                    per.push_back(item);
                }
            }
            out["masks"] = per;
            // Content-based heads: the counts above are their fixed part's (their pairs come per input).
            out["content_heads"] = content_heads(set);
            out["counts"] = content_heads(set) > 0 ? "fixed part only" : "all pairs";
            nlohmann::json warnings = nlohmann::json::array();
            for (const auto& w : c.compiled.warnings) {
                warnings.push_back({{"line", w.line()}, {"column", w.column()}, {"message", w.message}, {"text", dsl::diagnostic_format(w)}});
            }
            out["warnings"] = warnings;
            std::printf("%s\n", out.dump(2).c_str());
            continue;
        }
        print_diagnostics(c.compiled.warnings);
        auto line = [&](const std::string& label, const MaskCounts& m, double scale) {
            std::printf("%-14s %12lld %10lld %10lld %16lld %9s %11s %11s %11s %10lld\n", label.c_str(),
                        static_cast<long long>(m.stats.kept_blocks), static_cast<long long>(m.stats.full_blocks),
                        static_cast<long long>(m.stats.partial_blocks), static_cast<long long>(m.stats.kept_pairs),
                        percent(static_cast<double>(m.stats.kept_pairs) / (n2 * scale)).c_str(),
                        percent(static_cast<double>(m.stats.kept_pairs) / (n2 * scale)).c_str(),
                        percent(static_cast<double>(m.block_pairs) / (n2 * scale)).c_str(),
                        human_bytes(m.stats.mask_bytes).c_str(), static_cast<long long>(m.stats.empty_rows));
        };
        if (brief) {
            if (&path == &args.positionals().front()) {
                std::printf("%-30s %9s %4s %15s %9s %10s %12s %11s %9s\n", "script", "n", "B", "layers x heads",
                            "distinct", "density", "block FLOPs", "mask mem", "warnings");
            }
            const std::string name = std::filesystem::path(path).filename().string();
            const std::string shape = std::to_string(set.layers) + " x " + std::to_string(set.heads);
            std::printf("%-30s %9lld %4d %15s %9zu %10s %12s %11s %9zu\n", name.c_str(), static_cast<long long>(n),
                        set.block, shape.c_str(), unique.size(),
                        percent(static_cast<double>(total.stats.kept_pairs) / (n2 * masks)).c_str(),
                        percent(static_cast<double>(total.block_pairs) / (n2 * masks)).c_str(),
                        human_bytes(total.stats.mask_bytes).c_str(), c.compiled.warnings.size());
            if (const int64_t count = content_heads(set); count > 0) {
                std::printf("%-30s %lld content-based head%s: pairs decided per input; counted above by the fixed part\n", "",
                            static_cast<long long>(count), count == 1 ? "" : "s");
            }
            continue;
        }
        std::printf("%s: n = %lld, block %d, %lld layers x %lld heads, %zu distinct masks, compiled in %.3f s\n\n",
                    path.c_str(), static_cast<long long>(n), set.block, static_cast<long long>(set.layers),
                    static_cast<long long>(set.heads), unique.size(), c.seconds);
        std::printf("%-14s %12s %10s %10s %16s %9s %11s %11s %11s %10s\n", "layer/head", "kept blocks", "full",
                    "partial", "kept pairs", "density", "FLOPs/dense", "block FLOPs", "mask mem", "empty rows");
        for (int64_t l = 0; l < set.layers; ++l) {
            for (int64_t h = 0; h < set.heads; ++h) {
                const MaskCounts& counts = unique[static_cast<size_t>(index[static_cast<size_t>(l * set.heads + h)])];
                const std::string label = "L" + std::to_string(l) + " H" + std::to_string(h);
                const ContentSpec* spec = content_at(set, l, h);
                if (spec == nullptr) {
                    line(label, counts, 1.0);
                    continue;
                }
                // A content head: what it is on its own row, then its fixed part's figures as such.
                const bool fixed_part = counts.stats.kept_pairs > 0;
                std::printf("%-14s %s\n", (label + content_mark(spec, fixed_part)).c_str(), content_row_text(*spec, fixed_part).c_str());
                if (fixed_part) line("  fixed part", counts, 1.0);
            }
        }
        const bool any_content = content_heads(set) > 0;
        line(any_content ? "fixed total" : "total", total, masks);
        std::printf("\nFLOPs/dense counts kept pairs; block FLOPs counts every pair of a kept block (what a\n"
                    "block-sparse kernel computes). mask mem counts distinct masks once.\n");
        if (any_content) {
            std::printf("fixed total: the fixed heads and the fixed parts of content-based heads; its empty rows\n"
                        "are the fixed heads' (a content-based head's rows get their keys per input).\n");
        }
        content_note(set);
    }
    if (png_path) {
        MaskSet set = *drawn;
        set.script_name = std::filesystem::path(args.positionals()[0]).filename().string();
        const Image image = mask_stats_chart_render(set, png_width);
        image_png_save(image, *png_path);
        if (!json) outputs.say("wrote %s (%d x %d pixels)\n", png_path->c_str(), image.width, image.height);  // stdout stays one JSON object
    }
    outputs.commit();
    return 0;
}

// [SECTION] show

namespace {

const char* const kShowHelp = R"(usage: sparsa show FILE --n N [--block B] [--layer L] [--head H] [--ascii]
       sparsa show FILE --n N --png OUT.png [--layer L] [--head H] [--width W] [--height H]

Draws the block grid of one (layer, head) mask: rows are query blocks, columns key blocks.
  full block: #  (unicode: █)    partial block: +  (▒)    not kept: .  (·)
Grids wider than 128 blocks are shown at reduced resolution (each cell covers several blocks:
full if all are full, partial if any is kept).
  --png OUT.png  draw a picture instead: without --layer and --head, the overview of every
                 (layer, head) (layers down, heads across, the density under each); with
                 either, that one mask's figure (Query and Key axes with token ticks, a legend).
                 Where the mask has at least one pixel per token it is drawn token by token
                 (a partial block's kept and dropped pairs apart, so dilation, strides and
                 causal edges show); else by blocks, as the terminal grid.
  --width W      picture width in pixels, 240 to 8192 (default: 1200 for the overview, whose
                 height follows; 640 for one mask)
  --height H     one mask's figure height, 240 to 8192 (default 640)
  --block B      block size (16, 32, 64, 128 or 256); default: the script's `block`, else 64
Outputs are written whole or not at all.
)";

} // namespace

int command_show(const std::vector<std::string>& argv) {
    Args args(argv, "show", {"--n", "--block", "--layer", "--head", "--threads", "--png", "--width", "--height"},
              {"--help", "--ascii", "--unicode"});
    if (args.has("--help")) {
        std::fputs(kShowHelp, stdout);
        return 0;
    }
    if (args.positionals().size() != 1) throw Error("show: give exactly one script (sparsa show FILE --n N)");
    const auto png_path = args.value("--png");
    const bool one_mask = args.has("--layer") || args.has("--head");
    if (!png_path) {
        for (const char* option : {"--width", "--height"}) {
            if (args.has(option)) throw Error(std::string("show: ") + option + " sets the size of the --png picture; give --png OUT.png too");
        }
    } else {
        for (const char* option : {"--ascii", "--unicode"}) {
            if (args.has(option)) throw Error(std::string("show: ") + option + " chooses the terminal grid's characters; --png draws a picture instead (drop one of them)");
        }
        if (args.has("--height") && !one_mask) {
            throw Error("show: --height sets one mask's figure (with --layer or --head); the overview's height follows from --width");
        }
    }
    const int png_width = static_cast<int>(args.integer("--width", one_mask ? 640 : 1200, 240, 8192));
    const int png_height = static_cast<int>(args.integer("--height", 640, 240, 8192));
    args.required_integer("--n", 1, kMaxN);  // before the output is checked: a bad --n is the first error
    OutputSet outputs("show");
    if (png_path) {
        outputs.input(args.positionals()[0], "the script");
        outputs.output("--png", *png_path);
    }
    const int64_t max_blocks = 1 << 20;
    CompiledScript c = compile_file(args.positionals()[0], args);
    print_diagnostics(c.compiled.warnings);
    const MaskSet& set = c.compiled.masks;
    if (png_path) {
        MaskSet named = set;
        named.script_name = std::filesystem::path(args.positionals()[0]).filename().string();
        const int64_t layer = args.integer("--layer", 0, 0, set.layers - 1);
        const int64_t head = args.integer("--head", 0, 0, set.heads - 1);
        const Image image = one_mask ? mask_figure_render(named, layer, head, png_width, png_height) : mask_overview_render(named, png_width);
        image_png_save(image, *png_path);
        if (one_mask) {
            outputs.say("wrote %s (layer %lld, head %lld; %d x %d pixels)\n", png_path->c_str(), static_cast<long long>(layer),
                        static_cast<long long>(head), image.width, image.height);
            if (const ContentSpec* spec = content_at(set, layer, head)) {
                outputs.say("layer %lld, head %lld is content-based (%s): the picture is its fixed part alone; the rest is "
                            "realised per input\n", static_cast<long long>(layer), static_cast<long long>(head),
                            dsl::content_spec_text(*spec).c_str());
            }
        } else {
            outputs.say("wrote %s (%lld layer%s x %lld head%s; %d x %d pixels)\n", png_path->c_str(), static_cast<long long>(set.layers),
                        set.layers == 1 ? "" : "s", static_cast<long long>(set.heads), set.heads == 1 ? "" : "s", image.width, image.height);
            if (const int64_t count = content_heads(set); count > 0) {
                outputs.say("%lld of the heads are content-based: the picture shows their fixed part alone\n%s",
                            static_cast<long long>(count), content_summary(set).c_str());
            }
        }
        outputs.commit();
        return 0;
    }
    const int64_t layer = args.integer("--layer", 0, 0, set.layers - 1);
    const int64_t head = args.integer("--head", 0, 0, set.heads - 1);
    const BlockMask& mask = set.at(layer, head);
    const int64_t blocks = mask.q_blocks();
    if (blocks > max_blocks) throw Error("show: " + std::to_string(blocks) + " blocks per row is too many to draw");

    const char* lang = std::getenv("LANG");
    bool unicode = args.has("--unicode") ||
                   (!args.has("--ascii") && lang != nullptr && (std::strstr(lang, "UTF-8") || std::strstr(lang, "utf8")));
    const char* full = unicode ? "\u2588" : "#";
    const char* partial = unicode ? "\u2592" : "+";
    const char* none = unicode ? "\u00b7" : ".";

    const int64_t width = 128;
    const int64_t scale = (blocks + width - 1) / width;  // blocks per cell, each way
    const int64_t cells = (blocks + scale - 1) / scale;
    const ContentSpec* spec = content_at(set, layer, head);
    if (spec != nullptr && spec->kind == ContentKind::favor) {
        std::printf("%s: layer %lld, head %lld is %s: FAVOR+ approximates %s attention for this head, so it has no mask "
                    "to draw (sparsa run reports its error against exact attention)\n",
                    args.positionals()[0].c_str(), static_cast<long long>(layer), static_cast<long long>(head),
                    dsl::content_spec_text(*spec).c_str(), spec->causal ? "causal" : "dense");
        return 0;
    }
    BlockMaskStats stats = block_mask_stats(mask);
    std::printf("%s: layer %lld, head %lld, n = %lld, block %d: %lld x %lld blocks, %lld kept (%lld full, %lld partial), density %s\n",
                args.positionals()[0].c_str(), static_cast<long long>(layer), static_cast<long long>(head),
                static_cast<long long>(mask.n), mask.block, static_cast<long long>(blocks), static_cast<long long>(blocks),
                static_cast<long long>(stats.kept_blocks), static_cast<long long>(stats.full_blocks),
                static_cast<long long>(stats.partial_blocks), percent(stats.density).c_str());
    if (spec != nullptr) {
        std::printf("content-based: %s%s adds its pairs per input (sparsa run reports them);\n"
                    "the grid and the density above are the fixed part alone\n",
                    dsl::content_spec_text(*spec).c_str(), spec->causal ? " (causal)" : "");
    }
    if (scale > 1) {
        std::printf("each cell is %lld x %lld blocks (%lld x %lld tokens)\n", static_cast<long long>(scale),
                    static_cast<long long>(scale), static_cast<long long>(scale * mask.block),
                    static_cast<long long>(scale * mask.block));
    }
    std::printf("rows: queries, columns: keys; %s full, %s partial, %s not kept\n\n", full, partial, none);
    // state per cell: 0 none, 1 partial, 2 full (only if every block in the cell is full)
    std::vector<int> kept(static_cast<size_t>(cells)), fulls(static_cast<size_t>(cells));
    for (int64_t row_cell = 0; row_cell < cells; ++row_cell) {
        std::fill(kept.begin(), kept.end(), 0);
        std::fill(fulls.begin(), fulls.end(), 0);
        const int64_t qb0 = row_cell * scale, qb1 = std::min(blocks, qb0 + scale);
        for (int64_t qb = qb0; qb < qb1; ++qb) {
            for (int64_t e = mask.row_ptr[static_cast<size_t>(qb)]; e < mask.row_ptr[static_cast<size_t>(qb) + 1]; ++e) {
                const int64_t cell = mask.col_idx[static_cast<size_t>(e)] / scale;
                ++kept[static_cast<size_t>(cell)];
                if (mask.partial_idx[static_cast<size_t>(e)] < 0) ++fulls[static_cast<size_t>(cell)];
            }
        }
        std::string line;
        for (int64_t cell = 0; cell < cells; ++cell) {
            const int64_t kb0 = cell * scale, kb1 = std::min(blocks, kb0 + scale);
            const int64_t area = (qb1 - qb0) * (kb1 - kb0);
            line += kept[static_cast<size_t>(cell)] == 0       ? none
                    : fulls[static_cast<size_t>(cell)] == area ? full
                                                               : partial;
        }
        std::printf("%8lld %s\n", static_cast<long long>(qb0 * mask.block), line.c_str());
    }
    return 0;
}

} // namespace sparsa::cli
