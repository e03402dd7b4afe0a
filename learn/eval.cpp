// Evaluation of distilled masks: see eval.hpp.
#include "learn/eval.hpp"

#include "io/atomic_file.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/error.hpp"
#include "learn/causal_mask.hpp"
#include "plot/plot_png.hpp"
#include "engine/threads.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

namespace sparsa::learn {

namespace {

// The masks of one layer for an input: a MaskSet whose layer 0 applies.
using LayerMasks = std::function<MaskSet(int64_t layer, const Tensor& q, const Tensor& k)>;

MaskSet layer_slice(const MaskSet& set, int64_t layer) {
    std::vector<std::shared_ptr<const BlockMask>> masks(set.masks.begin() + layer * set.heads,
                                                        set.masks.begin() + (layer + 1) * set.heads);
    return mask_set_make(1, set.heads, std::move(masks));
}

std::string fixed3(double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.3f", v);
    return b;
}

} // namespace

AttentionSample attention_sample(const Teacher& teacher, uint64_t seed, int64_t first, int64_t count, int32_t block, int threads) {
    const TaskBatch batch = task_batch(teacher.task, seed, first, count);
    TeacherCapture capture = teacher_capture(teacher, batch, block, threads);
    AttentionSample s;
    s.q = std::move(capture.q);
    s.k = std::move(capture.k);
    s.lse = std::move(capture.lse);
    s.causal = teacher.config.causal;
    return s;
}

std::string machine_description() {
    std::ifstream in("/proc/cpuinfo");
    std::string line, model = "unknown CPU";
    while (std::getline(in, line))
        if (line.rfind("model name", 0) == 0) {
            model = line.substr(line.find(':') + 2);
            break;
        }
    return model + ", " + std::to_string(std::thread::hardware_concurrency()) + " cores";
}

EvalReport learn_evaluate(const Teacher& teacher, const BlockGate& gate, const SearchTable& table, const EvalOptions& o) {
    const int64_t n = teacher.task.n, L = teacher.config.layers, H = teacher.config.heads;
    const int64_t blocks = (n + o.block - 1) / o.block;
    if (gate.layers != L || gate.heads != H || gate.head_dim != teacher.config.head_dim() || gate.block != o.block)
        throw Error("eval: the gate (" + std::to_string(gate.layers) + " layers x " + std::to_string(gate.heads) + " heads, block " +
                    std::to_string(gate.block) + ") does not fit the teacher (" + std::to_string(L) + " x " + std::to_string(H) +
                    ", block " + std::to_string(o.block) + ")");
    if (table.layers != L || table.heads != H || table.n != n || table.block != o.block)
        throw Error("eval: the search table does not fit the teacher (layers, heads, n or block differ)");
    const uint64_t held = task_held_out_seed(o.seed);
    const TaskBatch batch = task_batch(teacher.task, held, 0, o.inputs);
    // The dense teacher on the held-out inputs: its q, k, v, o and lse per layer.
    TeacherCapture dense;
    TeacherRunOptions run;
    run.block = o.block;
    run.capture = &dense;
    run.threads = o.threads;
    const TeacherResult dense_result = teacher_evaluate(teacher, batch, run);
    int64_t answer_rows = 0;   // over all inputs
    for (int32_t t : batch.targets) answer_rows += t >= 0 ? 1 : 0;
    EvalReport report;
    report.inputs = o.inputs;
    report.n = n;
    report.block = o.block;
    report.machine = machine_description();

    // A causal teacher's masks are cut to their causal part (the student's are, in teacher_run).
    auto cut = [&](const MaskSet& m) { return teacher.config.causal ? mask_set_restrict_causal(m) : m; };
    auto measure = [&](const std::string& method, double target, const LayerMasks& masks, const std::string& detail) {
        EvalRow row;
        row.method = method;
        row.target = target;
        row.detail = detail;
        // Recall, error and density on the teacher's own q, k, v of every layer.
        std::vector<double> recall(static_cast<size_t>(o.inputs)), density(static_cast<size_t>(o.inputs)),
            diff(static_cast<size_t>(o.inputs)), norm(static_cast<size_t>(o.inputs)), answer(static_cast<size_t>(o.inputs));
        parallel_for(o.inputs, o.threads, [&](int64_t begin, int64_t end) {
            AttentionOptions one;
            one.threads = 1;
            for (int64_t b = begin; b < end; ++b)
                for (int64_t l = 0; l < L; ++l) {
                    const MaskSet m = cut(masks(l, dense.q[b][l], dense.k[b][l]));
                    const AttentionOutput out = attention_forward(dense.q[b][l], dense.k[b][l], dense.v[b][l], m, 0, one);
                    for (int64_t h = 0; h < H; ++h)
                        for (int64_t i = 0; i < n; ++i) {
                            const double kept = out.lse.at(0, h, i, 0), all = dense.lse[b][l].at(0, h, i, 0);
                            const double share = std::isfinite(kept) ? std::min(1.0, std::exp(kept - all)) : 0.0;
                            recall[b] += share;
                            if (batch.targets[b * n + i] >= 0) answer[b] += share;
                        }
                    for (size_t e = 0; e < out.o.data.size(); ++e) {
                        diff[b] += std::abs(static_cast<double>(out.o.data[e]) - dense.o[b][l].data[e]);
                        norm[b] += std::abs(static_cast<double>(dense.o[b][l].data[e]));
                    }
                    density[b] += mask_set_block_density(m);
                }
        });
        double diff_all = 0, norm_all = 0;
        row.recall = row.density = row.answer_recall = 0;
        for (int64_t b = 0; b < o.inputs; ++b) {
            row.recall += recall[b] / static_cast<double>(o.inputs * L * H * n);
            row.answer_recall += answer_rows > 0 ? answer[b] / static_cast<double>(answer_rows * L * H) : 0.0;
            row.density += density[b] / static_cast<double>(o.inputs * L);
            diff_all += diff[b];
            norm_all += norm[b];
        }
        row.l1_error = norm_all > 0 ? diff_all / norm_all : 0;
        // The student: teacher weights, these masks in every layer, chosen from its own q and k.
        TeacherRunOptions student;
        student.block = o.block;
        student.chooser = masks;
        student.threads = o.threads;
        const TeacherResult r = teacher_evaluate(teacher, batch, student);
        row.accuracy = r.answers ? static_cast<double>(r.correct) / static_cast<double>(r.answers) : 0;
        // Time: layer 0 of input 0, one thread, median of the repeats: choosing the masks, then the forward.
        std::vector<double> select;
        MaskSet m;
        for (int rep = 0; rep < std::max(1, o.time_repeats); ++rep) {
            const auto t0 = std::chrono::steady_clock::now();
            m = cut(masks(0, dense.q[0][0], dense.k[0][0]));
            select.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }
        std::sort(select.begin(), select.end());
        row.select_ms = select[select.size() / 2];
        AttentionOptions one;
        one.threads = 1;
        std::vector<double> times;
        for (int rep = 0; rep < std::max(1, o.time_repeats); ++rep) {
            const auto t0 = std::chrono::steady_clock::now();
            const AttentionOutput out = attention_forward(dense.q[0][0], dense.k[0][0], dense.v[0][0], m, 0, one);
            times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
            if (out.o.data.empty()) times.back() = 0;
        }
        std::sort(times.begin(), times.end());
        row.forward_ms = times[times.size() / 2];
        report.rows.push_back(row);
    };

    const MaskSet dense_masks = teacher.config.causal ? mask_set_causal(n, o.block, 1, H) : mask_set_dense(n, o.block, 1, H);
    measure("dense", 1.0, [&](int64_t, const Tensor&, const Tensor&) { return dense_masks; }, "attend = dense");
    report.rows.back().accuracy = dense_result.answers ? static_cast<double>(dense_result.correct) / static_cast<double>(dense_result.answers) : 0;
    for (double target : o.densities) {
        const int64_t keep = blocks_per_row(target, blocks);
        measure("oracle", target, [&](int64_t, const Tensor& q, const Tensor& k) {
            PooledAttention p = pooled_zeros(1, H, n, o.block);
            pooled_add_layer(p, 0, q, k, teacher.config.causal);
            return oracle_masks(p, keep, teacher.config.causal);
        }, std::to_string(keep) + (keep == 1 ? " block per row" : " blocks per row"));
        measure("gate", target,
                [&](int64_t l, const Tensor& q, const Tensor& k) { return gate_masks(gate, l, q, k, keep); },
                std::to_string(keep) + (keep == 1   ? " block per row (the diagonal)"
                                        : gate.row_targets ? " blocks per row: the diagonal, then those some row needs most"
                                                           : " blocks per row, diagonal kept"));
        const SearchResult s = search_by_density(table, target);
        measure("search", target, [&](int64_t l, const Tensor&, const Tensor&) { return layer_slice(s.masks, l); },
                "per-head families");
        for (const std::string name : {"longformer", "bigbird"}) {
            const std::string e = baseline_expression(name, target, n, o.block);
            const auto mask = expression_compile(e, n, o.block);
            const MaskSet set = mask_set_make(1, H, std::vector<std::shared_ptr<const BlockMask>>(static_cast<size_t>(H), mask));
            measure(name, target, [&](int64_t, const Tensor&, const Tensor&) { return set; }, e);
        }
    }
    return report;
}

void eval_report_write(const EvalReport& report, const std::string& dir, const std::string& preamble) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw Error("cannot create the report folder '" + dir + "': " + ec.message());
    const std::vector<std::string> methods = {"oracle", "gate", "search", "longformer", "bigbird"};
    const uint32_t colours[] = {0x1f77b4, 0xd62728, 0x2ca02c, 0xff7f0e, 0x9467bd};
    const EvalRow* dense = nullptr;
    for (const EvalRow& r : report.rows)
        if (r.method == "dense") dense = &r;

    std::string md = preamble;
    char line[512];
    std::snprintf(line, sizeof line, "\nHeld-out inputs: %lld sequences of n = %lld, block %d. Machine: %s.\n\n",
                  static_cast<long long>(report.inputs), static_cast<long long>(report.n), report.block, report.machine.c_str());
    md += line;
    md += "| target density | method | block density | recall | answer-row recall | rel. L1 error | accuracy | forward ms | select ms | what |\n"
          "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for (const EvalRow& r : report.rows) {
        std::snprintf(line, sizeof line, "| %s | %s | %.4f | %.4f | %.4f | %.4f | %.2f%% | %.3f | %.3f | %s |\n",
                      r.method == "dense" ? "-" : (fixed3(100 * r.target) + "%").c_str(), r.method.c_str(), r.density, r.recall,
                      r.answer_recall, r.l1_error, 100 * r.accuracy, r.forward_ms, r.select_ms, r.detail.c_str());
        md += line;
    }
    // The bar at 12.5%: the gate's recall >= 0.90 and within 0.05 of the oracle's, its
    // accuracy within 2 points of the dense teacher's.
    const EvalRow *gate = nullptr, *oracle = nullptr;
    for (const EvalRow& r : report.rows)
        if (r.target == 0.125) {
            if (r.method == "gate") gate = &r;
            if (r.method == "oracle") oracle = &r;
        }
    if (gate && oracle && dense) {
        auto verdict = [](bool ok) { return ok ? "met" : "NOT met"; };
        std::snprintf(line, sizeof line,
                      "\nAt 12.5%%: gate recall %.4f (>= 0.90: %s; oracle %.4f, within 0.05: %s); gate accuracy %.2f%% against the "
                      "dense teacher's %.2f%% (within 2 points: %s).\n",
                      gate->recall, verdict(gate->recall >= 0.90), oracle->recall, verdict(oracle->recall - gate->recall <= 0.05),
                      100 * gate->accuracy, 100 * dense->accuracy, verdict(dense->accuracy - gate->accuracy <= 0.02));
        md += line;
    }
    md += "\nRecall: share of the dense teacher's attention mass that the mask keeps, from the engine's log-sum-exp, averaged over\n"
          "query rows, heads, layers and inputs (on the teacher's own Q and K); answer-row recall: the same over the rows an answer\n"
          "is asked at only (the rows the accuracy depends on). Rel. L1 error: sum |O_sparse - O_dense| / sum |O_dense|\n"
          "of the attention outputs. Accuracy: the task run with the teacher's weights and these masks in every layer (oracle and\n"
          "gate choose from the student's own Q and K at each layer). Forward ms: one layer's attention (all heads), 1 thread,\n"
          "median; select ms: choosing that layer's masks for the input (the gate's scoring; the oracle's dense pooling, which needs\n"
          "the full attention; the fixed masks are compiled once), 1 thread, median. Block density: kept blocks / blocks^2, measured.\n\n![recall](recall.png)\n\n![accuracy](accuracy.png)\n";

    nlohmann::json j = {{"inputs", report.inputs}, {"n", report.n}, {"block", report.block}, {"machine", report.machine}, {"rows", nlohmann::json::array()}};
    for (const EvalRow& r : report.rows)
        j["rows"].push_back({{"method", r.method}, {"target_density", r.target}, {"density", r.density}, {"recall", r.recall},
                             {"answer_recall", r.answer_recall}, {"l1_error", r.l1_error}, {"accuracy", r.accuracy}, {"forward_ms", r.forward_ms}, {"select_ms", r.select_ms}, {"detail", r.detail}});

    Plot recall, accuracy;
    recall.title = "recall against block density (held-out)";
    accuracy.title = "task accuracy against block density (held-out)";
    recall.x_label = accuracy.x_label = "target block density";
    recall.y_label = "recall";
    accuracy.y_label = "accuracy";
    recall.x_max = accuracy.x_max = 0.3;
    recall.y_percent = accuracy.y_percent = true;
    for (size_t m = 0; m < methods.size(); ++m) {
        PlotSeries rs{methods[m], {}, {}, colours[m]}, as{methods[m], {}, {}, colours[m]};
        for (const EvalRow& r : report.rows)
            if (r.method == methods[m]) {
                rs.x.push_back(r.target);
                rs.y.push_back(r.recall);
                as.x.push_back(r.target);
                as.y.push_back(r.accuracy);
            }
        recall.series.push_back(rs);
        accuracy.series.push_back(as);
    }
    if (dense) {
        accuracy.series.push_back({"dense teacher", {0.0, 0.3}, {dense->accuracy, dense->accuracy}, 0x7f7f7f});
    }
    plot_png_save(recall, dir + "/recall.png");
    plot_png_save(accuracy, dir + "/accuracy.png");
    const std::string json_text = j.dump(2) + "\n";
    AtomicFile json_file(dir + "/report.json");
    json_file.write(json_text.data(), json_text.size());
    json_file.commit();
    AtomicFile md_file(dir + "/report.md");
    md_file.write(md.data(), md.size());
    md_file.commit();
}

} // namespace sparsa::learn
