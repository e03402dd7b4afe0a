// The RULER-style evaluation with its trivial baselines, and the report over seeds: see ruler_eval.hpp.
//
// Index: [SECTION] one teacher, [SECTION] several seeds and the report
#include "learn/ruler_eval.hpp"

#include "engine/cpu_attention.hpp"
#include "engine/error.hpp"
#include "engine/threads.hpp"
#include "io/atomic_file.hpp"
#include "learn/causal_mask.hpp"
#include "learn/eval.hpp"
#include "plot/plot_png.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>

namespace sparsa::learn {

namespace {

// The masks of one layer for an input (q, k: [1, heads, n, head_dim]): a MaskSet whose layer 0 applies.
using LayerMasks = std::function<MaskSet(int64_t layer, const Tensor& q, const Tensor& k)>;

double median_ms(int repeats, const std::function<void()>& work) {
    std::vector<double> times;
    for (int rep = 0; rep < std::max(1, repeats); ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        work();
        times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

double accuracy_of(const TeacherResult& r) { return r.answers ? static_cast<double>(r.correct) / static_cast<double>(r.answers) : 0; }

} // namespace

// [SECTION] one teacher

int64_t ruler_blocks_per_row(double density, int64_t blocks, bool causal) {
    if (!causal) return blocks_per_row(density, blocks);
    const double total = static_cast<double>(blocks * (blocks + 1) / 2);
    int64_t best = 1;
    double best_gap = INFINITY;
    for (int64_t k = 1; k <= blocks; ++k) {
        const double kept = static_cast<double>(k * (k + 1) / 2 + (blocks - k) * k);   // sum over rows of min(k, r + 1)
        const double gap = std::abs(kept / total - density);
        if (gap < best_gap) {
            best_gap = gap;
            best = k;
        }
    }
    return best;
}

RulerEval ruler_evaluate(const Teacher& teacher, const RulerEvalOptions& o) {
    const int64_t n = teacher.task.n, L = teacher.config.layers, H = teacher.config.heads, hd = teacher.config.head_dim();
    const int64_t blocks = (n + o.block - 1) / o.block;
    const bool causal = teacher.config.causal;
    if (o.test_inputs < 1 || o.validation_inputs < 1) throw Error("ruler eval: test and validation inputs must each be at least 1");
    if (o.gate && (o.gate->layers != L || o.gate->heads != H || o.gate->head_dim != hd || o.gate->block != o.block))
        throw Error("ruler eval: the gate (" + std::to_string(o.gate->layers) + " layers x " + std::to_string(o.gate->heads) +
                    " heads, block " + std::to_string(o.gate->block) + ") does not fit the teacher (" + std::to_string(L) + " x " +
                    std::to_string(H) + ", block " + std::to_string(o.block) + ")");
    const TaskBatch test = task_batch(teacher.task, task_stream_seed(TaskStream::test, 0), 0, o.test_inputs);
    const TaskBatch validation = task_batch(teacher.task, task_stream_seed(TaskStream::validation, 0), 0, o.validation_inputs);
    TeacherCapture dense;
    TeacherRunOptions run;
    run.block = o.block;
    run.capture = &dense;
    run.threads = o.threads;
    const TeacherResult dense_result = teacher_evaluate(teacher, test, run);
    const double denominator = causal ? static_cast<double>(causal_block_count(n, o.block)) : static_cast<double>(blocks * blocks);
    auto cut = [&](const MaskSet& m) { return causal ? mask_set_restrict_causal(m) : m; };
    RulerEval eval;
    eval.n = n;
    eval.block = o.block;
    eval.causal = causal;
    eval.test_inputs = o.test_inputs;
    eval.validation_inputs = o.validation_inputs;

    auto timings = [&](RulerRow& row, const LayerMasks& masks) {
        MaskSet m;
        row.select_ms = median_ms(o.time_repeats, [&] { m = cut(masks(0, dense.q[0][0], dense.k[0][0])); });
        AttentionOptions one;
        one.threads = 1;
        row.forward_ms = median_ms(o.time_repeats, [&] { attention_forward(dense.q[0][0], dense.k[0][0], dense.v[0][0], m, 0, one); });
    };
    auto measure = [&](const std::string& method, double target, const LayerMasks& masks, const std::string& detail) {
        RulerRow row;
        row.method = method;
        row.target = target;
        row.detail = detail;
        // Recall and density on the teacher's own q, k of every layer.
        std::vector<double> recall(static_cast<size_t>(o.test_inputs), 0.0), density(static_cast<size_t>(o.test_inputs), 0.0);
        parallel_for(o.test_inputs, o.threads, [&](int64_t begin, int64_t end) {
            AttentionOptions one;
            one.threads = 1;
            for (int64_t b = begin; b < end; ++b)
                for (int64_t l = 0; l < L; ++l) {
                    const MaskSet m = cut(masks(l, dense.q[b][l], dense.k[b][l]));
                    const AttentionOutput out = attention_forward(dense.q[b][l], dense.k[b][l], dense.v[b][l], m, 0, one);
                    for (int64_t h = 0; h < H; ++h) {
                        for (int64_t i = 0; i < n; ++i) {
                            const double kept = out.lse.at(0, h, i, 0), all = dense.lse[b][l].at(0, h, i, 0);
                            recall[b] += std::isfinite(kept) ? std::min(1.0, std::exp(kept - all)) : 0.0;
                        }
                        density[b] += static_cast<double>(m.at(0, h).kept_blocks()) / denominator / static_cast<double>(H);
                    }
                }
        });
        row.recall = row.density = 0;
        for (int64_t b = 0; b < o.test_inputs; ++b) {
            row.recall += recall[b] / static_cast<double>(o.test_inputs * L * H * n);
            row.density += density[b] / static_cast<double>(o.test_inputs * L);
        }
        TeacherRunOptions student;
        student.block = o.block;
        student.chooser = masks;
        student.threads = o.threads;
        row.scores.add(test, teacher_evaluate(teacher, test, student).hits);
        timings(row, masks);
        eval.rows.push_back(std::move(row));
    };

    // The dense teacher.
    {
        RulerRow row;
        row.method = "dense";
        row.detail = causal ? "the causal mask" : "attend = dense";
        row.scores.add(test, dense_result.hits);
        const MaskSet full = causal ? mask_set_causal(n, o.block, 1, H) : mask_set_dense(n, o.block, 1, H);
        timings(row, [&](int64_t, const Tensor&, const Tensor&) { return full; });
        eval.rows.push_back(std::move(row));
    }
    // The diagonal block alone: every query block keeps its own block and nothing else.
    {
        std::vector<std::vector<int32_t>> rows(static_cast<size_t>(blocks));
        for (int64_t r = 0; r < blocks; ++r) rows[r].push_back(static_cast<int32_t>(r));
        const auto own = std::make_shared<BlockMask>(block_mask_from_rows(n, o.block, rows));
        const MaskSet set = mask_set_make(1, H, std::vector<std::shared_ptr<const BlockMask>>(static_cast<size_t>(H), own));
        measure("diagonal", 1.0 / static_cast<double>(blocks), [&](int64_t, const Tensor&, const Tensor&) { return set; },
                "the own block alone (band(0))");
        eval.rows.back().target = eval.rows.back().density;
    }
    const BlockGate identity = gate_identity(L, H, hd, o.block, causal);
    const std::vector<SearchCandidate> candidates = search_candidates(n, o.block);
    for (double target : o.densities) {
        const int64_t keep = ruler_blocks_per_row(target, blocks, causal);
        const std::string per_row = std::to_string(keep) + (keep == 1 ? " block per row" : " blocks per row");
        measure("identity gate", target, [&](int64_t l, const Tensor& q, const Tensor& k) { return gate_masks(identity, l, q, k, keep); },
                per_row + ", the diagonal then the top blocks by exact q.k scores (untrained, costs a dense q k^T)");
        if (o.gate)
            measure("gate", target, [&](int64_t l, const Tensor& q, const Tensor& k) { return gate_masks(*o.gate, l, q, k, keep); },
                    per_row + ", the trained gate");
        // The best fixed pattern at this density: every candidate of the search's families and the
        // prelude's Longformer and BigBird, the same mask in every head, at a density (after the
        // causal cut) not above the target; the most accurate on the validation stream wins.
        std::vector<std::pair<std::string, std::shared_ptr<const BlockMask>>> pool;
        for (const SearchCandidate& c : candidates) pool.emplace_back(c.expression, c.mask);
        for (const std::string name : {"longformer", "bigbird"}) {
            const std::string e = baseline_expression(name, target, n, o.block);
            pool.emplace_back(e, expression_compile(e, n, o.block));
        }
        std::string best;
        MaskSet best_set;
        double best_accuracy = -1, best_density = INFINITY, smallest = INFINITY;
        for (const auto& [expression, mask] : pool) {
            const MaskSet set = cut(mask_set_make(1, H, std::vector<std::shared_ptr<const BlockMask>>(static_cast<size_t>(H), mask)));
            const double d = static_cast<double>(set.at(0, 0).kept_blocks()) / denominator;
            const bool fits = d <= target + 1e-9;
            if (!fits && !(best_accuracy < 0 && d < smallest)) continue;
            TeacherRunOptions v;
            v.block = o.block;
            v.masks = &set;
            v.threads = o.threads;
            const double acc = fits ? accuracy_of(teacher_evaluate(teacher, validation, v)) : -0.5;   // none fits: the smallest
            if (!fits) smallest = d;
            if (acc > best_accuracy || (acc == best_accuracy && d < best_density)) {
                best_accuracy = acc;
                best_density = d;
                best = expression;
                best_set = set;
            }
        }
        char detail[256];
        std::snprintf(detail, sizeof detail, "%s (validation accuracy %.2f%%)", best.c_str(), 100 * std::max(0.0, best_accuracy));
        measure("best fixed", target, [&](int64_t, const Tensor&, const Tensor&) { return best_set; }, detail);
    }
    return eval;
}

// [SECTION] several seeds and the report

namespace {

struct MeanStd {
    double mean = 0, std = 0;
    int64_t count = 0;
};
MeanStd mean_std(const std::vector<double>& v) {
    MeanStd m;
    for (double x : v)
        if (x >= 0) {
            m.mean += x;
            ++m.count;
        }
    if (m.count == 0) return {-1, 0, 0};
    m.mean /= static_cast<double>(m.count);
    for (double x : v)
        if (x >= 0) m.std += (x - m.mean) * (x - m.mean);
    m.std = m.count > 1 ? std::sqrt(m.std / static_cast<double>(m.count - 1)) : 0;
    return m;
}

std::string percent(const MeanStd& m, bool with_std) {
    if (m.count == 0) return "-";
    char b[64];
    if (with_std) std::snprintf(b, sizeof b, "%.2f ± %.2f", 100 * m.mean, 100 * m.std);
    else std::snprintf(b, sizeof b, "%.2f", 100 * m.mean);
    return b;
}

bool is_needle_kind(TaskKind k) {
    return k == TaskKind::single || k == TaskKind::multikey || k == TaskKind::multivalue || k == TaskKind::multiquery;
}

// The needle tasks' accuracy at one depth, pooled over their answers; -1 when there are none.
double needle_depth_accuracy(const TaskScores& s, int64_t depth) {
    int64_t a = 0, c = 0;
    const auto& kinds = task_kinds_single();
    for (size_t k = 0; k < kinds.size(); ++k)
        if (is_needle_kind(kinds[k])) {
            a += s.answers[k][depth];
            c += s.correct[k][depth];
        }
    return a ? static_cast<double>(c) / static_cast<double>(a) : -1;
}

void write_text(const std::string& path, const std::string& text) {
    AtomicFile file(path);
    file.write(text.data(), text.size());
    file.commit();
}

} // namespace

void ruler_report_write(const std::vector<RulerEval>& evals, const std::vector<std::string>& seeds, const std::string& dir,
                        const std::string& preamble) {
    if (evals.empty() || evals.size() != seeds.size()) throw Error("ruler report: one evaluation per seed is needed");
    for (const RulerEval& e : evals)
        if (e.rows.size() != evals[0].rows.size()) throw Error("ruler report: the seeds' evaluations have different methods");
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw Error("cannot create the report folder '" + dir + "': " + ec.message());
    const auto& kinds = task_kinds_single();
    std::vector<size_t> present;   // the kinds with answers
    for (size_t k = 0; k < kinds.size(); ++k)
        if (evals[0].rows[0].scores.kind_answers(k) > 0) present.push_back(k);
    const bool several = evals.size() > 1;

    std::string md = preamble;
    char line[1024];
    std::snprintf(line, sizeof line,
                  "\nEvery figure is from the **test stream** (%lld sequences of n = %lld, block %d, the same for every seed); the best "
                  "fixed pattern is chosen on the validation stream (%lld sequences), early stopping on the validation stream too. "
                  "%zu training seed%s (%s)%s. Density: kept blocks / the %s mask's blocks.\n\n",
                  static_cast<long long>(evals[0].test_inputs), static_cast<long long>(evals[0].n), evals[0].block,
                  static_cast<long long>(evals[0].validation_inputs), evals.size(), several ? "s" : "",
                  [&] {
                      std::string s;
                      for (const auto& x : seeds) s += (s.empty() ? "" : ", ") + x;
                      return s;
                  }().c_str(),
                  several ? ": accuracy as mean ± standard deviation over the seeds" : "", evals[0].causal ? "causal" : "dense");
    md += line;
    md += "| method | target | density | recall | all answers |";
    for (size_t k : present) md += " " + task_kind_name(kinds[k]) + " |";
    md += " select ms | forward ms |\n|---|---:|---:|---:|---:|";
    for (size_t i = 0; i < present.size(); ++i) md += "---:|";
    md += "---:|---:|\n";
    nlohmann::json rows_json = nlohmann::json::array();
    for (size_t r = 0; r < evals[0].rows.size(); ++r) {
        std::vector<double> all, recall, density, select, forward;
        std::vector<std::vector<double>> per_kind(kinds.size());
        for (const RulerEval& e : evals) {
            const RulerRow& row = e.rows[r];
            all.push_back(row.scores.accuracy());
            recall.push_back(row.recall);
            density.push_back(row.density);
            select.push_back(row.select_ms);
            forward.push_back(row.forward_ms);
            for (size_t k : present) per_kind[k].push_back(row.scores.kind_accuracy(k));
        }
        const RulerRow& first = evals[0].rows[r];
        const std::string target = first.method == "dense" ? "-" : first.method == "diagonal" ? "(own)" : ([&] {
            char b[32];
            std::snprintf(b, sizeof b, "%g%%", 100 * first.target);
            return std::string(b);
        })();
        std::snprintf(line, sizeof line, "| %s | %s | %.4f | %.4f | %s |", first.method.c_str(), target.c_str(), mean_std(density).mean,
                      mean_std(recall).mean, percent(mean_std(all), several).c_str());
        md += line;
        for (size_t k : present) md += " " + percent(mean_std(per_kind[k]), several) + " |";
        std::snprintf(line, sizeof line, " %.3f | %.3f |\n", mean_std(select).mean, mean_std(forward).mean);
        md += line;
        nlohmann::json jr = {{"method", first.method}, {"target_density", first.target}, {"per_seed", nlohmann::json::array()}};
        for (size_t s = 0; s < evals.size(); ++s) {
            const RulerRow& row = evals[s].rows[r];
            nlohmann::json js = {{"seed", seeds[s]}, {"density", row.density}, {"recall", row.recall}, {"accuracy", row.scores.accuracy()},
                                 {"select_ms", row.select_ms}, {"forward_ms", row.forward_ms}, {"detail", row.detail}, {"tasks", nlohmann::json::object()}};
            for (size_t k : present)
                js["tasks"][task_kind_name(kinds[k])] = {{"answers", row.scores.answers[k]}, {"correct", row.scores.correct[k]}};
            jr["per_seed"].push_back(js);
        }
        jr["accuracy_mean"] = mean_std(all).mean;
        jr["accuracy_std"] = mean_std(all).std;
        rows_json.push_back(jr);
    }
    md += "\nAnswers scored per seed: ";
    for (size_t i = 0; i < present.size(); ++i) {
        std::snprintf(line, sizeof line, "%s%s %lld", i ? ", " : "", task_kind_name(kinds[present[i]]).c_str(),
                      static_cast<long long>(evals[0].rows[0].scores.kind_answers(present[i])));
        md += line;
    }
    md += ".\n\nWhat each row is, per seed:\n\n";
    for (size_t r = 0; r < evals[0].rows.size(); ++r) {
        md += "- " + evals[0].rows[r].method + ": ";
        for (size_t s = 0; s < evals.size(); ++s) md += (s ? "; " : "") + ("seed " + seeds[s] + ": ") + evals[s].rows[r].detail;
        md += "\n";
    }
    // Accuracy per depth of the needle tasks (single, multikey, multivalue, multiquery pooled).
    md += "\nNeedle tasks' accuracy (%) per depth of the needle (bucket b: the needle lies in [b h / 10, (b + 1) h / 10) of the haystack), "
          "mean over seeds:\n\n| method | target |";
    for (int64_t d = 0; d < kDepths; ++d) md += " " + std::to_string(10 * d) + "% |";
    md += "\n|---|---:|";
    for (int64_t d = 0; d < kDepths; ++d) md += "---:|";
    md += "\n";
    Plot plot;
    plot.title = "needle accuracy per depth (test stream, mean over seeds)";
    plot.x_label = "depth of the needle (bucket start)";
    plot.y_label = "accuracy";
    plot.x_max = 0.9;
    plot.y_percent = true;
    const uint32_t colours[] = {0x7f7f7f, 0x8c564b, 0x1f77b4, 0xd62728, 0x2ca02c, 0xff7f0e, 0x9467bd, 0x17becf};
    bool any_needle = false;
    for (size_t r = 0; r < evals[0].rows.size(); ++r) {
        const RulerRow& first = evals[0].rows[r];
        char target[32];
        std::snprintf(target, sizeof target, "%.3g%%", 100 * first.target);
        std::snprintf(line, sizeof line, "| %s | %s |", first.method.c_str(), first.method == "dense" ? "-" : target);
        md += line;
        PlotSeries series{first.method + (first.method == "dense" || first.method == "diagonal" ? "" : std::string(" ") + target), {}, {}, colours[r % 8]};
        for (int64_t d = 0; d < kDepths; ++d) {
            std::vector<double> v;
            for (const RulerEval& e : evals) v.push_back(needle_depth_accuracy(e.rows[r].scores, d));
            const MeanStd m = mean_std(v);
            md += " " + percent(m, false) + " |";
            if (m.count > 0) {
                series.x.push_back(0.1 * static_cast<double>(d));
                series.y.push_back(m.mean);
                any_needle = true;
            }
        }
        md += "\n";
        plot.series.push_back(series);
    }
    if (any_needle) md += "\n![accuracy per depth](depth.png)\n";
    nlohmann::json j = {{"n", evals[0].n}, {"block", evals[0].block}, {"causal", evals[0].causal}, {"test_inputs", evals[0].test_inputs},
                        {"validation_inputs", evals[0].validation_inputs}, {"seeds", seeds}, {"rows", rows_json}, {"machine", machine_description()}};
    if (any_needle) plot_png_save(plot, dir + "/depth.png");
    write_text(dir + "/report.json", j.dump(2) + "\n");
    write_text(dir + "/report.md", md);
}

} // namespace sparsa::learn
