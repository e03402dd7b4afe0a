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
#include "learn/selectors.hpp"
#include "plot/plot_png.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <functional>
#include <map>
#include <memory>
#include <tuple>

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

namespace {

using Method = RulerMethod;

// The pooled gate's examples of a captured batch (dense targets: n^2 head_dim per head, in parallel).
std::vector<std::vector<PooledGateExample>> gate_examples(const TeacherCapture& c, int32_t block, bool causal, int threads,
                                                         bool max_target) {
    std::vector<std::vector<PooledGateExample>> out(c.q.size());
    parallel_for(static_cast<int64_t>(c.q.size()), threads, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b)
            for (size_t l = 0; l < c.q[b].size(); ++l)
                out[b].push_back(pooled_gate_example(c.q[b][l], c.k[b][l], block, causal, true, max_target));
    });
    return out;
}

} // namespace

RulerEval ruler_evaluate(const Teacher& teacher, const RulerEvalOptions& o) {
    const int64_t n = teacher.task.n, L = teacher.config.layers, H = teacher.config.heads, hd = teacher.config.head_dim();
    const int64_t blocks = (n + o.block - 1) / o.block;
    const bool causal = teacher.config.causal;
    if (o.test_inputs < 1 || o.validation_inputs < 1) throw Error("ruler eval: test and validation inputs must each be at least 1");
    if (o.chunk < 1) throw Error("ruler eval: chunk " + std::to_string(o.chunk) + " must be at least 1");
    if (o.gate && (o.gate->layers != L || o.gate->heads != H || o.gate->head_dim != hd || o.gate->block != o.block))
        throw Error("ruler eval: the gate (" + std::to_string(o.gate->layers) + " layers x " + std::to_string(o.gate->heads) +
                    " heads, block " + std::to_string(o.gate->block) + ") does not fit the teacher (" + std::to_string(L) + " x " +
                    std::to_string(H) + ", block " + std::to_string(o.block) + ")");
    const uint64_t test_seed = task_stream_seed(TaskStream::test, 0);
    const TaskBatch validation = task_batch(teacher.task, task_stream_seed(TaskStream::validation, 0), 0, o.validation_inputs);
    const double denominator = causal ? static_cast<double>(causal_block_count(n, o.block)) : static_cast<double>(blocks * blocks);
    const double pair_denominator = causal ? static_cast<double>(n * (n + 1) / 2) : static_cast<double>(n * n);
    auto cut = [&](const MaskSet& m) { return causal ? mask_set_restrict_causal(m) : m; };
    auto validation_accuracy = [&](const MaskSet* masks, const MaskChooser& chooser) {
        TeacherRunOptions v;
        v.block = o.block;
        v.masks = masks;
        v.chooser = chooser;
        v.threads = o.threads;
        return accuracy_of(teacher_evaluate(teacher, validation, v));
    };
    RulerEval eval;
    eval.n = n;
    eval.block = o.block;
    eval.causal = causal;
    eval.test_inputs = o.test_inputs;
    eval.validation_inputs = o.validation_inputs;

    // Every method but dense, chosen or trained before any test sequence is seen.
    std::vector<Method> methods;
    // The diagonal block alone: every query block keeps its own block and nothing else.
    {
        std::vector<std::vector<int32_t>> rows(static_cast<size_t>(blocks));
        for (int64_t r = 0; r < blocks; ++r) rows[r].push_back(static_cast<int32_t>(r));
        const auto own = std::make_shared<BlockMask>(block_mask_from_rows(n, o.block, rows));
        const MaskSet set = mask_set_make(1, H, std::vector<std::shared_ptr<const BlockMask>>(static_cast<size_t>(H), own));
        methods.push_back({"diagonal", 1.0 / static_cast<double>(blocks), [set](int64_t, const Tensor&, const Tensor&) { return set; },
                           "the own block alone (band(0))"});
    }
    // The pooled gate, trained once for every density.
    auto pooled = std::make_shared<PooledGate>();
    if (o.pooled_gate_inputs > 0) {
        const auto t0 = std::chrono::steady_clock::now();
        const TaskBatch train = task_batch(teacher.task, task_stream_seed(TaskStream::train, o.train_seed), kCalibrationFirst, o.pooled_gate_inputs);
        const auto train_examples = gate_examples(teacher_capture(teacher, train, o.block, o.threads), o.block, causal, o.threads,
                                                  o.pooled_gate_max_target);
        const auto validation_examples = gate_examples(teacher_capture(teacher, validation, o.block, o.threads), o.block, causal,
                                                       o.threads, o.pooled_gate_max_target);
        *pooled = pooled_gate_init(L, H, hd, o.pooled_gate_width, o.block, causal, o.train_seed);
        const PooledGateTrainReport r = pooled_gate_train(*pooled, train_examples, validation_examples, o.pooled_gate_train);
        char line[512];
        std::snprintf(line, sizeof line,
                      "pooled gate: width %lld, target %s, trained on %lld training-stream sequences (seed %llu, from index 2^40) for at "
                      "most %lld steps (the longest head ran %lld): KL on them %.4f -> %.4f; validation KL %.4f -> %.4f (best, kept) in %.1f s",
                      static_cast<long long>(o.pooled_gate_width), o.pooled_gate_max_target ? "max (largest row share)" : "sum (mass)",
                      static_cast<long long>(o.pooled_gate_inputs),
                      static_cast<unsigned long long>(o.train_seed), static_cast<long long>(o.pooled_gate_train.steps),
                      static_cast<long long>(r.steps), r.first_train, r.last_train, r.first_validation, r.best_validation,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        eval.notes.push_back(line);
    }
    // The lightning indexer, trained once for every density.
    auto indexer = std::make_shared<Indexer>();
    if (o.indexer_inputs > 0) {
        const auto t0 = std::chrono::steady_clock::now();
        const TaskBatch train = task_batch(teacher.task, task_stream_seed(TaskStream::train, o.train_seed), kCalibrationFirst, o.indexer_inputs);
        auto examples = [&](const TaskBatch& batch) {
            const TeacherCapture c = teacher_capture(teacher, batch, o.block, o.threads);
            std::vector<std::vector<IndexerExample>> out(c.q.size());
            parallel_for(static_cast<int64_t>(c.q.size()), o.threads, [&](int64_t begin, int64_t end) {
                for (int64_t b = begin; b < end; ++b)
                    for (int64_t l = 0; l < L; ++l)
                        out[b].push_back(indexer_example(c.q[b][l], c.k[b][l], o.block, causal, o.indexer_rows, static_cast<uint64_t>(b * L + l)));
            });
            return out;
        };
        const auto train_examples = examples(train), validation_examples = examples(validation);
        *indexer = indexer_init(L, H, hd, o.indexer_heads, o.indexer_width, o.block, causal, o.train_seed);
        const IndexerTrainReport r = indexer_train(*indexer, train_examples, validation_examples, o.indexer_train);
        char line[512];
        std::snprintf(line, sizeof line,
                      "indexer: %lld index heads of width %lld, trained on %lld query rows of each of %lld training-stream sequences "
                      "(seed %llu, from index 2^40) for at most %lld steps (the longest layer ran %lld): KL on them %.4f -> %.4f; "
                      "validation KL %.4f -> %.4f (best, kept) in %.1f s",
                      static_cast<long long>(o.indexer_heads), static_cast<long long>(o.indexer_width), static_cast<long long>(o.indexer_rows),
                      static_cast<long long>(o.indexer_inputs), static_cast<unsigned long long>(o.train_seed),
                      static_cast<long long>(o.indexer_train.steps), static_cast<long long>(r.steps), r.first_train, r.last_train,
                      r.first_validation, r.best_validation, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        eval.notes.push_back(line);
    }
    const std::vector<SearchCandidate> candidates = search_candidates(n, o.block);
    // The other families: the search's table (training stream), LSH and anchors (chosen on
    // validation, anchors fitted on the training stream), FAVOR+.
    std::unique_ptr<SearchTable> table;
    if (o.fixed_families && o.search_inputs > 0 && !o.densities.empty()) {
        const auto t0 = std::chrono::steady_clock::now();
        table = std::make_unique<SearchTable>(search_table_build(
            attention_sample(teacher, task_stream_seed(TaskStream::train, o.train_seed), kCalibrationFirst, o.search_inputs, o.block, o.threads),
            o.block, o.threads));
        char line[256];
        std::snprintf(line, sizeof line,
                      "search script: each head's recall of the search's %zu candidates measured on %lld training-stream sequences (seed %llu, "
                      "from index 2^40) in %.1f s",
                      table->candidates.size(), static_cast<long long>(o.search_inputs), static_cast<unsigned long long>(o.train_seed),
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        eval.notes.push_back(line);
    }
    std::vector<Method> content;
    if (o.content_families && !o.densities.empty()) {
        ContentFamilyOptions co = o.content;
        co.block = o.block;
        co.threads = o.threads;
        co.train_seed = o.train_seed;
        ContentFamilyInputs in;
        in.teacher = &teacher;
        in.validation = &validation;
        in.accuracy = [&](const MaskChooser& chooser) { return validation_accuracy(nullptr, chooser); };
        content = ruler_content_families(in, o.densities, co, eval.notes);
    }
    for (double target : o.densities) {
        const int64_t keep = ruler_blocks_per_row(target, blocks, causal);
        const std::string per_row = std::to_string(keep) + (keep == 1 ? " block per row" : " blocks per row");
        // The identity gate's masks through select_exact (the same masks, tested; float products).
        methods.push_back({"identity gate", target,
                           [so = SelectorOptions{o.block, keep, causal}](int64_t, const Tensor& q, const Tensor& k) { return select_exact(q, k, so); },
                           per_row + ", the diagonal then the top blocks by exact q.k scores (untrained, costs a dense q k^T)"});
        if (o.gate)
            methods.push_back({"gate", target, [g = o.gate, keep](int64_t l, const Tensor& q, const Tensor& k) { return gate_masks(*g, l, q, k, keep); },
                               per_row + ", the trained gate"});
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
            const auto [set, d] = ruler_fixed_set(mask, H, causal);
            const bool fits = d <= target + 1e-9;
            if (!fits && !(best_accuracy < 0 && d < smallest)) continue;
            const double acc = fits ? validation_accuracy(&set, {}) : -0.5;   // none fits: the smallest
            if (!fits) smallest = d;
            if (acc > best_accuracy || (acc == best_accuracy && d < best_density)) {
                best_accuracy = acc;
                best_density = d;
                best = expression;
                best_set = set;
            }
        }
        char detail[512];
        std::snprintf(detail, sizeof detail, "%s (validation accuracy %.2f%%)", best.c_str(), 100 * std::max(0.0, best_accuracy));
        methods.push_back({"best fixed", target, [best_set](int64_t, const Tensor&, const Tensor&) { return best_set; }, detail});
        if (o.selectors) {
            const SelectorOptions so{o.block, keep, causal};
            methods.push_back({"moba", target, [so](int64_t, const Tensor& q, const Tensor& k) { return select_moba(q, k, so); },
                               per_row + ", the diagonal then the top blocks by mean query . mean key"});
            methods.push_back({"quest", target, [so](int64_t, const Tensor& q, const Tensor& k) { return select_quest(q, k, so); },
                               per_row + ", the diagonal then the top blocks by Quest's bound (the largest over the block's queries)"});
            methods.push_back({"vertical-slash", target,
                               [so, m = o.last_queries](int64_t, const Tensor& q, const Tensor& k) { return select_vertical_slash(q, k, so, m); },
                               per_row + ", the diagonal then the top columns and diagonals of the last " + std::to_string(o.last_queries) +
                                   " queries' attention"});
            // DuoAttention: as many dense (retrieval) heads as the budget holds, ranked on the
            // validation stream by the accuracy lost when each head alone streams.
            const DuoBudget budget = duo_budget(n, o.block, L * H, target, causal);
            std::vector<bool> retrieval(static_cast<size_t>(L * H), false);
            std::string ranking;
            if (budget.retrieval > 0) {
                std::vector<std::pair<double, int64_t>> loss;   // (accuracy with the head streaming, head)
                for (int64_t lh = 0; lh < L * H; ++lh) {
                    std::vector<bool> one(static_cast<size_t>(L * H), true);
                    one[lh] = false;
                    loss.emplace_back(validation_accuracy(nullptr, [&, one](int64_t l, const Tensor&, const Tensor&) {
                                          return duo_masks(n, o.block, std::vector<bool>(one.begin() + l * H, one.begin() + (l + 1) * H), budget, causal);
                                      }),
                                      lh);
                }
                std::stable_sort(loss.begin(), loss.end());
                for (int64_t i = 0; i < budget.retrieval; ++i) retrieval[loss[i].second] = true;
                for (const auto& [acc, lh] : loss) {
                    char b[96];
                    std::snprintf(b, sizeof b, "%sL%lldH%lld %.1f%%", ranking.empty() ? "" : ", ", static_cast<long long>(lh / H),
                                  static_cast<long long>(lh % H), 100 * acc);
                    ranking += b;
                }
            }
            std::string heads;
            for (int64_t lh = 0; lh < L * H; ++lh)
                if (retrieval[lh]) heads += (heads.empty() ? "" : ", ") + ("L" + std::to_string(lh / H) + "H" + std::to_string(lh % H));
            const std::string duo_detail =
                std::to_string(budget.retrieval) + " of " + std::to_string(L * H) + " heads dense" + (heads.empty() ? "" : " (" + heads + ")") +
                ", the rest 1 sink block + a window of " + std::to_string(budget.window_blocks) + " blocks" +
                (ranking.empty() ? std::string(budget.retrieval == 0 ? " (one dense head is over the budget)" : "")
                                 : "; validation accuracy with each head alone streaming: " + ranking);
            methods.push_back({"duo", target,
                               [=](int64_t l, const Tensor&, const Tensor&) {
                                   return duo_masks(n, o.block, std::vector<bool>(retrieval.begin() + l * H, retrieval.begin() + (l + 1) * H), budget,
                                                    causal);
                               },
                               duo_detail});
        }
        if (o.pooled_gate_inputs > 0)
            methods.push_back({"pooled gate", target, [pooled, keep](int64_t l, const Tensor& q, const Tensor& k) { return pooled_gate_masks(*pooled, l, q, k, keep); },
                               per_row + ", the diagonal then the top blocks by the trained pooled gate (width " +
                                   std::to_string(o.pooled_gate_width) + "; its training above)"});
        if (o.indexer_inputs > 0)
            methods.push_back({"indexer", target, [indexer, keep](int64_t l, const Tensor& q, const Tensor& k) { return indexer_masks(*indexer, l, q, k, keep); },
                               per_row + " (the same in every head of a layer), the diagonal then the blocks of most mass in the trained "
                                   "indexer's prediction (" + std::to_string(o.indexer_heads) + " index heads of width " + std::to_string(o.indexer_width) +
                                   "; its training above)"});
        if (o.fixed_families) {
            for (Method& m : ruler_fixed_families(n, o.block, H, target, causal)) methods.push_back(std::move(m));
            if (table) methods.push_back(ruler_search_script(*table, target, causal));
        }
        for (const Method& m : content)
            if (m.target == target) methods.push_back(m);
    }
    if (o.content_families && !o.densities.empty()) methods.push_back(ruler_favor(L, H, hd, causal, o.content));

    // The test stream, a chunk at a time: dense first, then every method on the same sequences.
    std::vector<RulerRow> rows(methods.size() + 1);
    rows[0].method = "dense";
    rows[0].detail = causal ? "the causal mask" : "attend = dense";
    for (size_t m = 0; m < methods.size(); ++m) {
        rows[m + 1].method = methods[m].name;
        rows[m + 1].target = methods[m].target;
        rows[m + 1].detail = methods[m].detail;
        rows[m + 1].recall = rows[m + 1].density = rows[m + 1].output_error = 0;
        if (methods[m].output) rows[m + 1].recall = rows[m + 1].density = -1;
    }
    rows[0].output_error = 0;
    Tensor q0, k0, v0;   // layer 0 of the first test sequence: what the timings run on
    const auto started = std::chrono::steady_clock::now();
    for (int64_t first = 0; first < o.test_inputs; first += o.chunk) {
        const int64_t count = std::min(o.chunk, o.test_inputs - first);
        const TaskBatch test = task_batch(teacher.task, test_seed, first, count);
        TeacherCapture dense;
        TeacherRunOptions run;
        run.block = o.block;
        run.capture = &dense;
        run.threads = o.threads;
        rows[0].scores.add(test, teacher_evaluate(teacher, test, run).hits);
        if (first == 0) q0 = dense.q[0][0], k0 = dense.k[0][0], v0 = dense.v[0][0];
        for (size_t m = 0; m < methods.size(); ++m) {
            RulerRow& row = rows[m + 1];
            const Method& method = methods[m];
            // Recall, density and output error on the teacher's own q, k, v of every layer.
            std::vector<double> recall(static_cast<size_t>(count), 0.0), density(static_cast<size_t>(count), 0.0),
                error(static_cast<size_t>(count), 0.0);
            parallel_for(count, o.threads, [&](int64_t begin, int64_t end) {
                AttentionOptions one;
                one.threads = 1;
                for (int64_t b = begin; b < end; ++b)
                    for (int64_t l = 0; l < L; ++l) {
                        if (method.output) {   // FAVOR+: an estimate of the dense attention, no mask
                            error[b] += ruler_relative_error(method.output(l, dense.q[b][l], dense.k[b][l], dense.v[b][l]), dense.o[b][l]);
                            continue;
                        }
                        const MaskSet mask = cut(method.masks(l, dense.q[b][l], dense.k[b][l]));
                        const AttentionOutput out = attention_forward(dense.q[b][l], dense.k[b][l], dense.v[b][l], mask, 0, one);
                        error[b] += ruler_relative_error(out.o, dense.o[b][l]);
                        for (int64_t h = 0; h < H; ++h) {
                            for (int64_t i = 0; i < n; ++i) {
                                const double kept = out.lse.at(0, h, i, 0), all = dense.lse[b][l].at(0, h, i, 0);
                                recall[b] += std::isfinite(kept) ? std::min(1.0, std::exp(kept - all)) : 0.0;
                            }
                            density[b] += (method.pair_density ? static_cast<double>(block_mask_stats(mask.at(0, h)).kept_pairs) / pair_denominator
                                                               : static_cast<double>(mask.at(0, h).kept_blocks()) / denominator) /
                                          static_cast<double>(H);
                        }
                    }
            });
            for (int64_t b = 0; b < count; ++b) {
                row.recall += recall[b] / static_cast<double>(o.test_inputs * L * H * n);
                row.density += density[b] / static_cast<double>(o.test_inputs * L);
                row.output_error += error[b] / static_cast<double>(o.test_inputs * L);
            }
            TeacherRunOptions student;
            student.block = o.block;
            if (method.output) {
                student.attention = method.output;   // FAVOR+: its estimate in place of each layer's attention
            } else {
                student.chooser = methods[m].masks;
            }
            student.threads = o.threads;
            row.scores.add(test, teacher_evaluate(teacher, test, student).hits);
        }
        if (!o.progress_label.empty()) {
            std::fprintf(stderr, "ruler %s: %lld of %lld test sequences through %zu rows (%.0f s)\n", o.progress_label.c_str(),
                         static_cast<long long>(first + count), static_cast<long long>(o.test_inputs), rows.size(),
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
        }
    }
    // Timings, every method on the same input: select (the masks of one layer, cut to causal) and
    // the sparse attention they give, each on 1 thread, the median of time_repeats.
    auto timings = [&](RulerRow& row, const LayerMasks& masks) {
        MaskSet m;
        row.select_ms = median_ms(o.time_repeats, [&] { m = cut(masks(0, q0, k0)); });
        AttentionOptions one;
        one.threads = 1;
        row.forward_ms = median_ms(o.time_repeats, [&] { attention_forward(q0, k0, v0, m, 0, one); });
    };
    const MaskSet full = causal ? mask_set_causal(n, o.block, 1, H) : mask_set_dense(n, o.block, 1, H);
    timings(rows[0], [&](int64_t, const Tensor&, const Tensor&) { return full; });
    for (size_t m = 0; m < methods.size(); ++m) {
        if (methods[m].time) std::tie(rows[m + 1].select_ms, rows[m + 1].forward_ms) = methods[m].time(q0, k0, v0, o.time_repeats);
        else timings(rows[m + 1], methods[m].masks);
    }
    rows[1].target = rows[1].density;   // the diagonal: its own density
    eval.rows = std::move(rows);
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

namespace {

// The families added for the chart (ruler_families.hpp): families.png only, not cost.png or depth.png.
bool is_family(const std::string& method) {
    for (const char* f : {"window", "longformer", "bigbird", "search script", "lsh", "anchors", "favor+"})
        if (method == f) return true;
    return false;
}

struct CostPoint {
    std::string method;
    double ms = 0;          // select + forward, mean over seeds
    MeanStd accuracy;       // over all answers
};

// Quality against cost: one point per (method, density) of the methods `keep` lets in, a method's
// densities joined, x on a log2 scale (the times span more than a factor of 10), error bars of one
// standard deviation when `several` seeds. No series when no point has an accuracy.
Plot cost_plot(const std::vector<CostPoint>& cost, bool several, const std::function<uint32_t(const std::string&)>& colour_of,
               const std::function<bool(const std::string&)>& keep, const std::string& title) {
    Plot cplot;
    cplot.title = title;
    cplot.x_label = "log2 of select + forward ms per layer (0 = 1 ms, 3 = 8 ms)";
    cplot.y_label = "accuracy, all answers";
    cplot.y_percent = true;
    cplot.y_min = 0;
    double lo = 1e300, hi = -1e300;
    for (const CostPoint& p : cost)
        if (keep(p.method) && p.ms > 0 && p.accuracy.count > 0) {
            lo = std::min(lo, std::log2(p.ms));
            hi = std::max(hi, std::log2(p.ms));
        }
    if (lo > hi) return cplot;
    std::vector<std::string> methods;   // in the table's order
    for (const CostPoint& p : cost)
        if (keep(p.method) && p.accuracy.count > 0 && std::find(methods.begin(), methods.end(), p.method) == methods.end())
            methods.push_back(p.method);
    // The legend is drawn top left inside the axes (10 pixel glyphs, 26 pixels of swatch, in
    // about 880 pixels of axes): the x range starts far enough left of the fastest point that
    // the legend's width L holds no point: L = share * (span + L).
    size_t chars = std::string("dense (reference)").size();
    for (const std::string& m : methods) chars = std::max(chars, m.size());
    const double share = (36.0 + 10.0 * static_cast<double>(chars)) / 880.0;
    const double legend = share * (hi - lo + 0.25) / (1 - share);
    cplot.x_min = lo - legend;
    cplot.x_max = hi + 0.25;
    cplot.y_max = 1.06;   // the top tick (100%) clear of the y label above the axis
    for (const CostPoint& p : cost)
        if (keep(p.method) && p.accuracy.count > 0) cplot.y_max = std::max(cplot.y_max, p.accuracy.mean + p.accuracy.std);
    cplot.x_integer = true;
    for (const std::string& method : methods) {
        PlotSeries line{method, {}, {}, colour_of(method)};
        for (const CostPoint& p : cost)
            if (p.method == method && p.ms > 0 && p.accuracy.count > 0) {
                line.x.push_back(std::log2(p.ms));
                line.y.push_back(p.accuracy.mean);
                if (several) cplot.series.push_back({"", {std::log2(p.ms), std::log2(p.ms)},
                                                     {std::max(0.0, p.accuracy.mean - p.accuracy.std), p.accuracy.mean + p.accuracy.std},
                                                     colour_of(method)});
            }
        if (method == "dense" && line.x.size() == 1) {   // the reference: a horizontal line across the plot
            line.label = "dense (reference)";
            cplot.series.push_back({"", line.x, line.y, colour_of(method)});   // its point at its own time
            line.x = {lo - 0.05 * legend, cplot.x_max};   // from the legend's right edge
            line.y = {line.y[0], line.y[0]};
        }
        cplot.series.push_back(line);
    }
    return cplot;
}

// The report's files from the evaluations; report.json only when `machine` is given (a replot
// keeps the report.json it read, with the machine it was measured on).
void report_files_write(const std::vector<RulerEval>& evals, const std::vector<std::string>& seeds, const std::string& dir,
                        const std::string& preamble, const std::string* machine) {
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
    char line[2048];
    std::snprintf(line, sizeof line,
                  "\nEvery figure is from the **test stream** (%lld sequences of n = %lld, block %d, the same for every seed); every "
                  "choice is made on the validation stream (%lld sequences): the best fixed pattern, DuoAttention's retrieval heads, the "
                  "pooled gate's and the indexer's early stopping, lsh's and anchors' (buckets, rounds, chunk) where they are measured, and "
                  "the teachers' own; what is trained or fitted (the pooled gate, the indexer, the search script, the anchors) is so on the "
                  "training stream. "
                  "%zu training seed%s (%s)%s. Density: kept blocks / the %s mask's blocks (lsh, anchors: pairs kept / its pairs). "
                  "Output error: ||o - o_dense|| / ||o_dense|| of each layer's attention on the dense teacher's q, k, v, mean over layers. "
                  "Times: one layer, all heads, 1 thread, "
                  "median; select ms chooses the masks (for the identity gate: a dense q k^T; lsh, anchors: the content engine's hashing or "
                  "assignment), forward ms runs the sparse attention; "
                  "select / dense is select ms over the dense row's forward ms (issue 16's bar for a selector: at most 20%%).\n\n",
                  static_cast<long long>(evals[0].test_inputs), static_cast<long long>(evals[0].n), evals[0].block,
                  static_cast<long long>(evals[0].validation_inputs), evals.size(), several ? "s" : "",
                  [&] {
                      std::string s;
                      for (const auto& x : seeds) s += (s.empty() ? "" : ", ") + x;
                      return s;
                  }().c_str(),
                  several ? ": accuracy as mean ± standard deviation over the seeds" : "", evals[0].causal ? "causal" : "dense");
    md += line;
    md += "| method | target | density | recall | output error | all answers |";
    for (size_t k : present) md += " " + task_kind_name(kinds[k]) + " |";
    md += " select ms | forward ms | select / dense |\n|---|---:|---:|---:|---:|---:|";
    for (size_t i = 0; i < present.size(); ++i) md += "---:|";
    md += "---:|---:|---:|\n";
    std::vector<double> dense_forward;   // the dense row's forward ms per seed
    for (const RulerEval& e : evals) dense_forward.push_back(e.rows[0].forward_ms);
    const double dense_ms = mean_std(dense_forward).mean;
    nlohmann::json rows_json = nlohmann::json::array();
    std::vector<CostPoint> cost;
    for (size_t r = 0; r < evals[0].rows.size(); ++r) {
        std::vector<double> all, recall, density, select, forward, error;
        std::vector<std::vector<double>> per_kind(kinds.size());
        for (const RulerEval& e : evals) {
            const RulerRow& row = e.rows[r];
            all.push_back(row.scores.accuracy());
            recall.push_back(row.recall);
            density.push_back(row.density);
            error.push_back(row.output_error);
            select.push_back(row.select_ms);
            forward.push_back(row.forward_ms);
            for (size_t k : present) per_kind[k].push_back(row.scores.kind_accuracy(k));
        }
        const RulerRow& first = evals[0].rows[r];
        const std::string target = first.method == "dense" || first.method == "favor+" ? "-" : first.method == "diagonal" ? "(own)" : ([&] {
            char b[32];
            std::snprintf(b, sizeof b, "%g%%", 100 * first.target);
            return std::string(b);
        })();
        auto fixed4 = [](const MeanStd& m) {   // "-" where the figure means nothing (FAVOR+'s density and recall)
            if (m.count == 0) return std::string("-");
            char b[32];
            std::snprintf(b, sizeof b, "%.4f", m.mean);
            return std::string(b);
        };
        std::snprintf(line, sizeof line, "| %s | %s | %s | %s | %s | %s |", first.method.c_str(), target.c_str(), fixed4(mean_std(density)).c_str(),
                      fixed4(mean_std(recall)).c_str(), fixed4(mean_std(error)).c_str(), percent(mean_std(all), several).c_str());
        md += line;
        for (size_t k : present) md += " " + percent(mean_std(per_kind[k]), several) + " |";
        std::snprintf(line, sizeof line, " %.3f | %.3f | %.1f%% |\n", mean_std(select).mean, mean_std(forward).mean,
                      dense_ms > 0 ? 100 * mean_std(select).mean / dense_ms : 0.0);
        md += line;
        nlohmann::json jr = {{"method", first.method}, {"target_density", first.target}, {"per_seed", nlohmann::json::array()}};
        for (size_t s = 0; s < evals.size(); ++s) {
            const RulerRow& row = evals[s].rows[r];
            nlohmann::json js = {{"seed", seeds[s]}, {"density", row.density}, {"recall", row.recall}, {"output_error", row.output_error},
                                 {"accuracy", row.scores.accuracy()},
                                 {"select_ms", row.select_ms}, {"forward_ms", row.forward_ms}, {"detail", row.detail}, {"tasks", nlohmann::json::object()}};
            for (size_t k : present)
                js["tasks"][task_kind_name(kinds[k])] = {{"answers", row.scores.answers[k]}, {"correct", row.scores.correct[k]}};
            jr["per_seed"].push_back(js);
        }
        cost.push_back({first.method, mean_std(select).mean + mean_std(forward).mean, mean_std(all)});
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
    md += ".\n";
    if (!evals[0].notes.empty()) {
        md += "\nTrained or chosen on the way, per seed:\n\n";
        for (size_t s = 0; s < evals.size(); ++s)
            for (const std::string& note : evals[s].notes) md += "- seed " + seeds[s] + ": " + note + "\n";
    }
    md += "\nWhat each row is, per seed:\n\n";
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
    // The picture: dense, the diagonal and every method at the largest target density (all of
    // them at every density would be more lines than colours tell apart; the table has them all).
    double plotted = 0;
    for (const RulerRow& row : evals[0].rows)
        if (row.method != "dense" && row.method != "diagonal" && !is_family(row.method)) plotted = std::max(plotted, row.target);
    Plot plot;
    char title[160];
    std::snprintf(title, sizeof title, "needle accuracy by depth, methods at %.3g%% (test stream, seed mean)", 100 * plotted);
    plot.title = title;
    plot.y_max = 1.4;   // room above 100% for the legend, which is drawn top left inside the axes
    plot.x_label = "depth of the needle (bucket start)";
    plot.y_label = "accuracy";
    plot.x_max = 0.9;
    plot.y_percent = true;
    const std::vector<std::pair<std::string, uint32_t>> colours = {
        {"dense", 0x000000},      {"diagonal", 0x8c564b}, {"identity gate", 0x1f77b4}, {"gate", 0x17becf},
        {"best fixed", 0x7f7f7f}, {"moba", 0xff7f0e},     {"quest", 0x2ca02c},         {"vertical-slash", 0x9467bd},
        {"duo", 0xbcbd22},        {"pooled gate", 0xd62728},   {"indexer", 0xe377c2},   {"window", 0x0000cd},
        {"longformer", 0x00ced1}, {"bigbird", 0xff00ff},  {"search script", 0x556b2f}, {"lsh", 0xffc000},
        {"anchors", 0x800000},    {"favor+", 0x555555}};
    auto colour_of = [&](const std::string& method) {
        for (const auto& [name, rgb] : colours)
            if (name == method) return rgb;
        return uint32_t{0x393b79};
    };
    bool any_needle = false;
    for (size_t r = 0; r < evals[0].rows.size(); ++r) {
        const RulerRow& first = evals[0].rows[r];
        char target[32];
        std::snprintf(target, sizeof target, "%.3g%%", 100 * first.target);
        std::snprintf(line, sizeof line, "| %s | %s |", first.method.c_str(), first.method == "dense" || first.method == "favor+" ? "-" : target);
        md += line;
        const bool own = first.method == "dense" || first.method == "diagonal";
        PlotSeries series{first.method, {}, {}, colour_of(first.method)};
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
        if (own || (first.target == plotted && !is_family(first.method))) plot.series.push_back(series);
    }
    if (any_needle) md += "\n![accuracy per depth](depth.png)\n";
    // Quality against cost: cost.png the baselines and selectors, families.png every family.
    const Plot cplot = cost_plot(cost, several, colour_of, [](const std::string& m) { return !is_family(m); },
                                 several ? "accuracy against time per layer (test stream; bars: +-1 sd over seeds)"
                                         : "accuracy against time per layer (test stream)");
    const bool any_cost = !cplot.series.empty();
    const bool any_family = std::any_of(cost.begin(), cost.end(), [](const CostPoint& p) { return is_family(p.method) && p.accuracy.count > 0; });
    const Plot fplot = cost_plot(cost, several, colour_of, [](const std::string&) { return true; },
                                 several ? "every family: accuracy against time per layer (bars: +-1 sd over seeds)"
                                         : "every family: accuracy against time per layer (test stream)");
    if (any_cost) {
        md += "\n![accuracy against time](cost.png)\n\ncost.png: accuracy over all answers (mean over seeds";
        md += several ? ", bars one standard deviation" : "";
        md += ") against the time per layer (select ms + forward ms, log2 scale), one point per method and density, a method's "
              "densities joined in the table's order; the dense row is the horizontal line (and its point at its own time).\n";
    }
    if (any_family && !fplot.series.empty()) {
        // reports written before FAVOR+ ran inside the teacher's forward have no answers in its row
        const bool favor_answers = std::any_of(cost.begin(), cost.end(), [](const CostPoint& p) { return p.method == "favor+" && p.accuracy.count > 0; });
        md += "\n![every family: accuracy against time](families.png)\n\nfamilies.png: the same for every row with answers: the "
              "baselines, the selectors, the fixed patterns (window, longformer, bigbird), the search script, lsh and anchors";
        md += favor_answers ? " and favor+ (its estimate in place of every layer's attention).\n"
                            : " (favor+ has no answers: it is not run inside the teacher's forward; its output error is in the table).\n";
    }
    if (any_needle) plot_png_save(plot, dir + "/depth.png", 1000, 640);
    if (any_cost) plot_png_save(cplot, dir + "/cost.png", 1000, 640);
    if (any_family && !fplot.series.empty()) plot_png_save(fplot, dir + "/families.png", 1000, 760);
    if (machine) {
        nlohmann::json notes = nlohmann::json::array();
        for (const RulerEval& e : evals) notes.push_back(e.notes);
        nlohmann::json j = {{"n", evals[0].n}, {"block", evals[0].block}, {"causal", evals[0].causal}, {"test_inputs", evals[0].test_inputs},
                            {"validation_inputs", evals[0].validation_inputs}, {"seeds", seeds}, {"rows", rows_json}, {"machine", *machine},
                            {"preamble", preamble}, {"notes", notes}};
        write_text(dir + "/report.json", j.dump(2) + "\n");
    }
    write_text(dir + "/report.md", md);
}

// The text of report.md before `marker`, and the "- seed S: note" lines of its notes section:
// what a report.json written before it kept them lacks.
void preamble_from_markdown(const std::string& md_path, const std::vector<std::string>& seeds, std::string& preamble,
                            std::vector<std::vector<std::string>>& notes) {
    std::ifstream in(md_path, std::ios::binary);
    if (!in) throw Error("learn ruler --replot: " + md_path + ": cannot read it, and report.json has no preamble (written before it kept one; "
                         "run sparsa learn ruler again)");
    const std::string md((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t at = md.find("\nEvery figure is from the **test stream**");
    if (at == std::string::npos) throw Error("learn ruler --replot: " + md_path + ": no report preamble found in it (run sparsa learn ruler again)");
    preamble = md.substr(0, at);
    notes.assign(seeds.size(), {});
    const std::string head = "\nTrained or chosen on the way, per seed:\n\n";
    size_t p = md.find(head);
    if (p == std::string::npos) return;
    p += head.size();
    while (p < md.size() && md.compare(p, 2, "- ") == 0) {
        const size_t end = md.find('\n', p);
        const std::string item = md.substr(p + 2, end - p - 2);
        for (size_t s = 0; s < seeds.size(); ++s) {
            const std::string tag = "seed " + seeds[s] + ": ";
            if (item.compare(0, tag.size(), tag) == 0) {
                notes[s].push_back(item.substr(tag.size()));
                break;
            }
        }
        if (end == std::string::npos) break;
        p = end + 1;
    }
}

} // namespace

void ruler_report_write(const std::vector<RulerEval>& evals, const std::vector<std::string>& seeds, const std::string& dir,
                        const std::string& preamble) {
    const std::string machine = machine_description();
    report_files_write(evals, seeds, dir, preamble, &machine);
}

void ruler_report_replot(const std::string& dir) {
    const std::string path = dir + "/report.json";
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("learn ruler --replot: " + path + ": cannot read it (give the folder a sparsa learn ruler run wrote)");
    std::vector<RulerEval> evals;
    std::vector<std::string> seeds;
    std::string preamble;
    std::vector<std::vector<std::string>> notes;
    bool has_preamble = false;
    try {
        const nlohmann::json j = nlohmann::json::parse(in);
        seeds = j.at("seeds").get<std::vector<std::string>>();
        if (seeds.empty()) throw Error("learn ruler --replot: " + path + ": no seeds in it (run sparsa learn ruler again)");
        evals.resize(seeds.size());
        for (RulerEval& e : evals) {
            e.n = j.at("n").get<int64_t>();
            e.block = j.at("block").get<int32_t>();
            e.causal = j.at("causal").get<bool>();
            e.test_inputs = j.at("test_inputs").get<int64_t>();
            e.validation_inputs = j.at("validation_inputs").get<int64_t>();
        }
        const auto& kinds = task_kinds_single();
        for (const nlohmann::json& jr : j.at("rows")) {
            const nlohmann::json& per_seed = jr.at("per_seed");
            if (per_seed.size() != seeds.size())
                throw Error("learn ruler --replot: " + path + ": a row of method '" + jr.at("method").get<std::string>() +
                            "' has " + std::to_string(per_seed.size()) + " seeds, not " + std::to_string(seeds.size()) + " (run sparsa learn ruler again)");
            for (size_t s = 0; s < seeds.size(); ++s) {
                const nlohmann::json& js = per_seed[s];
                RulerRow row;
                row.method = jr.at("method").get<std::string>();
                row.target = jr.at("target_density").get<double>();
                row.density = js.at("density").get<double>();
                row.recall = js.at("recall").get<double>();
                row.output_error = js.value("output_error", -1.0);   // absent from reports written before it
                row.select_ms = js.at("select_ms").get<double>();
                row.forward_ms = js.at("forward_ms").get<double>();
                row.detail = js.at("detail").get<std::string>();
                for (const auto& [name, t] : js.at("tasks").items()) {
                    size_t k = 0;
                    while (k < kinds.size() && task_kind_name(kinds[k]) != name) ++k;
                    if (k == kinds.size()) throw Error("learn ruler --replot: " + path + ": unknown task '" + name + "' (run sparsa learn ruler again)");
                    row.scores.answers[k] = t.at("answers").get<std::vector<int64_t>>();
                    row.scores.correct[k] = t.at("correct").get<std::vector<int64_t>>();
                    if (row.scores.answers[k].size() != static_cast<size_t>(kDepths) || row.scores.correct[k].size() != static_cast<size_t>(kDepths))
                        throw Error("learn ruler --replot: " + path + ": task '" + name + "' does not have " + std::to_string(kDepths) +
                                    " depths (run sparsa learn ruler again)");
                }
                evals[s].rows.push_back(row);
            }
        }
        if (evals[0].rows.empty()) throw Error("learn ruler --replot: " + path + ": no rows in it (run sparsa learn ruler again)");
        if (j.contains("preamble")) {
            has_preamble = true;
            preamble = j.at("preamble").get<std::string>();
            notes = j.at("notes").get<std::vector<std::vector<std::string>>>();
            if (notes.size() != seeds.size()) throw Error("learn ruler --replot: " + path + ": notes for " + std::to_string(notes.size()) +
                                                          " seeds, not " + std::to_string(seeds.size()) + " (run sparsa learn ruler again)");
        }
    } catch (const nlohmann::json::exception& e) {
        throw Error("learn ruler --replot: " + path + ": not a report.json of sparsa learn ruler: " + e.what() + " (run sparsa learn ruler again)");
    }
    if (!has_preamble) preamble_from_markdown(dir + "/report.md", seeds, preamble, notes);
    for (size_t s = 0; s < seeds.size(); ++s) evals[s].notes = notes[s];
    report_files_write(evals, seeds, dir, preamble, nullptr);
}

} // namespace sparsa::learn
