// Distillation on planted attention (Q and K built so that each head attends within a known block
// pattern): search recovers the pattern, the gate's recall is above 0.99; the gate's gradient
// against finite differences; the search script recompiles to the same masks and recall; pooled
// recall agrees with the engine's; baselines stay within their density.
#include "learn/distill.hpp"
#include "learn/pool.hpp"
#include "learn/pooled_gate.hpp"
#include "learn/causal_mask.hpp"
#include "learn/ruler_eval.hpp"
#include "learn/teacher.hpp"

#include "engine/error.hpp"
#include "io/npy.hpp"
#include "tests/learn/learn_testing.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>

using namespace sparsa;
using namespace sparsa::learn;

namespace {

constexpr int64_t kN = 128, kHeads = 3, kDim = 16;
constexpr int32_t kBlock = 16;
const char* const kPlanted[kHeads] = {"band(1)", "chunk(64)", "global(first(16)) | band(0)"};

// One input whose head h attends (almost only) to the key blocks of kPlanted[h]: key j of block c
// is alpha * e_c plus noise; query i of block r is alpha * sum of e_c over the kept blocks c of r.
struct Planted {
    Tensor q, k, lse;
};
Planted planted_input(uint64_t seed) {
    Planted p;
    p.q = tensor_random({1, kHeads, kN, kDim}, seed);
    p.k = tensor_random({1, kHeads, kN, kDim}, seed + 1000);
    const double alpha = 6.0;
    for (int64_t h = 0; h < kHeads; ++h) {
        const auto mask = expression_compile(kPlanted[h], kN, kBlock);
        for (int64_t i = 0; i < kN; ++i) {
            for (int64_t j = 0; j < kDim; ++j) {
                p.q.at(0, h, i, j) *= 0.05f;
                p.k.at(0, h, i, j) *= 0.05f;
            }
            p.k.at(0, h, i, i / kBlock) += static_cast<float>(alpha);
            const int64_t r = i / kBlock;
            for (int64_t e = mask->row_ptr[r]; e < mask->row_ptr[r + 1]; ++e) p.q.at(0, h, i, mask->col_idx[e]) += static_cast<float>(alpha);
        }
    }
    p.lse = dense_lse(p.q, p.k, kBlock);
    return p;
}

AttentionSample planted_sample(uint64_t first_seed, int64_t inputs) {
    AttentionSample s;
    for (int64_t b = 0; b < inputs; ++b) {
        Planted p = planted_input(first_seed + static_cast<uint64_t>(b));
        s.q.push_back({p.q});
        s.k.push_back({p.k});
        s.lse.push_back({p.lse});
    }
    return s;
}

} // namespace

TEST_CASE("planted attention: search recovers each head's pattern", "[learn][planted]") {
    const AttentionSample sample = planted_sample(1, 4);
    const SearchTable table = search_table_build(sample, kBlock, 1);
    const SearchResult result = search_by_share(table, 0.95);
    for (int64_t h = 0; h < kHeads; ++h) {
        INFO("head " << h << " planted " << kPlanted[h] << ", found " << table.candidates[result.choice[h]].expression);
        CHECK(*result.masks.masks[h] == *expression_compile(kPlanted[h], kN, kBlock));
        CHECK(result.recall[h] >= 0.95);
    }
}

TEST_CASE("search: a table from recall measured elsewhere is the built one", "[learn][planted]") {
    const AttentionSample sample = planted_sample(1, 2);
    const SearchTable built = search_table_build(sample, kBlock, 2);
    const SearchTable again = search_table_from_recall(kN, kBlock, built.layers, built.heads, built.causal, built.recall);
    REQUIRE(again.candidates.size() == built.candidates.size());
    for (size_t c = 0; c < built.candidates.size(); ++c) CHECK(again.candidates[c].expression == built.candidates[c].expression);
    CHECK(search_by_share(again, 0.95).choice == search_by_share(built, 0.95).choice);
    // the masks each candidate is measured with: its mask in every head, cut to causal for a causal table
    SearchTable causal = again;
    causal.causal = true;
    for (int64_t c = 0; c < static_cast<int64_t>(causal.candidates.size()); ++c) {
        const MaskSet set = search_candidate_set(causal, c);
        REQUIRE(set.heads == kHeads);
        for (int64_t h = 0; h < kHeads; ++h) {
            const BlockMask& m = set.at(0, h);
            int64_t after = 0;   // pairs allowed with the key after its query
            for (int64_t i = 0; i < kN; ++i)
                for (int64_t j = i + 1; j < kN; ++j) after += m.allowed(i, j);
            INFO(causal.candidates[static_cast<size_t>(c)].expression << ", head " << h);
            CHECK(after == 0);
        }
    }
    std::vector<double> short_by_one(built.recall.begin(), built.recall.end() - 1);
    CHECK_THROWS_WITH(search_table_from_recall(kN, kBlock, built.layers, built.heads, false, short_by_one),
                      Catch::Contains("recall values given"));
}

TEST_CASE("search: the written script recompiles to the same masks and the same recall", "[learn][planted]") {
    const AttentionSample sample = planted_sample(1, 3);
    const SearchTable table = search_table_build(sample, kBlock, 2);
    for (double share : {0.5, 0.95}) {
        const SearchResult result = search_by_share(table, share);
        CHECK(result.script.find("attend[layer 0, head 2] = ") != std::string::npos);
        CHECK(result.script.find("# recall ") != std::string::npos);
        const MaskSet again = script_text_compile(result.script, "search.pat", kN, kBlock);
        REQUIRE(again.heads == kHeads);
        for (int64_t h = 0; h < kHeads; ++h) {
            CHECK(again.at(0, h) == result.masks.at(0, h));
            double recall = 0;
            for (int64_t b = 0; b < sample.inputs(); ++b)
                recall += mask_recall(sample.q[b][0], sample.k[b][0], sample.lse[b][0], again, 0)[h] / static_cast<double>(sample.inputs());
            CHECK(recall == Approx(result.recall[h]).epsilon(1e-12));
        }
    }
}

TEST_CASE("planted attention: the trained gate keeps more than 0.99 of the attention", "[learn][planted]") {
    const AttentionSample train = planted_sample(1, 8), held_out = planted_sample(100, 4);
    const GateQuery query = GENERATE(GateQuery::block, GateQuery::rows);
    const GateKey key = GENERATE(GateKey::pooled, GateKey::bounds, GateKey::keys);
    BlockGate gate = gate_init(1, kHeads, kDim, 16, kBlock, 5, query, key);
    GateTrainOptions o;
    o.steps = 300;
    const int target = GENERATE(0, 1, 2);   // pooled by sum, by max, each row's own
    o.max_pooled = target == 1;
    gate.row_targets = target == 2;
    if (gate.row_targets && query != GateQuery::rows) return;   // row targets need row queries
    INFO("query side " << gate_query_name(query) << ", key side " << gate_key_name(key) << ", target "
                       << (target == 0 ? "sum" : target == 1 ? "max" : "rows"));
    const GateTrainReport report = gate_train(gate, train, o);
    INFO("KL " << report.first_loss << " -> " << report.last_loss);
    CHECK(report.last_loss * 10 < report.first_loss);
    for (int64_t b = 0; b < held_out.inputs(); ++b) {
        const MaskSet masks = gate_masks(gate, 0, held_out.q[b][0], held_out.k[b][0], 0, 0.99);
        const auto recall = mask_recall(held_out.q[b][0], held_out.k[b][0], held_out.lse[b][0], masks, 0);
        for (int64_t h = 0; h < kHeads; ++h) {
            const auto planted = expression_compile(kPlanted[h], kN, kBlock);
            INFO("input " << b << " head " << h << " kept " << masks.at(0, h).kept_blocks() << " blocks, planted " << planted->kept_blocks());
            CHECK(recall[h] > 0.99);
            CHECK(masks.at(0, h).kept_blocks() <= planted->kept_blocks() + 8);
        }
    }
    const std::string path = (std::filesystem::temp_directory_path() / "sparsa_learn_gate.json").string();
    gate_save(gate, path);
    const BlockGate loaded = gate_load(path);
    CHECK(loaded.params == gate.params);
    CHECK(loaded.query == gate.query);
    CHECK(loaded.key == gate.key);
    CHECK(loaded.row_targets == gate.row_targets);
    std::filesystem::remove(path);
}

// Checks a gate loss's gradient by head h's parameters (every other one) against central
// differences: loss(gate, grad) returns the loss and adds its gradient when grad is non-null.
void gate_gradient_check(const BlockGate& gate, int64_t h, const std::function<double(const BlockGate&, double*)>& loss) {
    std::vector<double> grad(static_cast<size_t>(gate.per_head()), 0.0);
    loss(gate, grad.data());
    double err = 0, norm = 0;
    for (int64_t e = 0; e < gate.per_head(); e += 2) {
        BlockGate plus = gate, minus = gate;
        plus.at(0, h)[e] += 1e-6;
        minus.at(0, h)[e] -= 1e-6;
        const double fd = (loss(plus, nullptr) - loss(minus, nullptr)) / 2e-6;
        err += (fd - grad[e]) * (fd - grad[e]);
        norm += fd * fd;
    }
    INFO("head " << h << " relative error " << std::sqrt(err / norm));
    CHECK(std::sqrt(err) <= 1e-6 * std::sqrt(norm));
    CHECK(norm > 0);
}

TEST_CASE("gate: gradient matches central differences", "[learn][grad]") {
    const AttentionSample sample = planted_sample(3, 1);
    const GateQuery query = GENERATE(GateQuery::block, GateQuery::rows);
    const GateKey key = GENERATE(GateKey::pooled, GateKey::bounds, GateKey::keys);
    INFO("query side " << gate_query_name(query) << ", key side " << gate_key_name(key));
    const BlockGate gate = gate_init(1, kHeads, kDim, 4, kBlock, 9, query, key);
    PooledAttention pooled = pooled_zeros(1, kHeads, kN, kBlock);
    pooled_add_layer(pooled, 0, sample.q[0][0], sample.k[0][0]);
    const int64_t blocks = pooled.blocks();
    for (int64_t h = 0; h < kHeads; ++h) {
        std::vector<double> target;
        for (int64_t r = 0; r < blocks; ++r)
            for (int64_t c = 0; c < blocks; ++c) target.push_back(pooled.row_share(0, h, r, c));
        gate_gradient_check(gate, h, [&](const BlockGate& g, double* grad) {
            return gate_loss(g, 0, h, sample.q[0][0], sample.k[0][0], target, grad);
        });
    }
}

TEST_CASE("gate with row targets: gradient matches central differences", "[learn][grad]") {
    const AttentionSample sample = planted_sample(3, 1);
    const GateKey key = GENERATE(GateKey::pooled, GateKey::bounds, GateKey::keys);
    INFO("key side " << gate_key_name(key));
    BlockGate gate = gate_init(1, kHeads, kDim, 4, kBlock, 9, GateQuery::rows, key);
    gate.row_targets = true;
    CHECK_THROWS_WITH(gate_loss(gate, 0, 0, sample.q[0][0], sample.k[0][0], {}, nullptr), Catch::Contains("gate_loss_rows"));
    for (int64_t h = 0; h < kHeads; ++h) {
        const std::vector<double> target = row_block_shares(sample.q[0][0], sample.k[0][0], h, kBlock);
        for (int64_t i = 0; i < kN; i += 7) {   // each row's shares sum to 1
            double total = 0;
            for (int64_t c = 0; c < kN / kBlock; ++c) total += target[i * (kN / kBlock) + c];
            CHECK(total == Approx(1.0).epsilon(1e-12));
        }
        gate_gradient_check(gate, h, [&](const BlockGate& g, double* grad) {
            return gate_loss_rows(g, 0, h, sample.q[0][0], sample.k[0][0], target, grad);
        });
    }
}

TEST_CASE("oracle and pooling: pooled recall equals the engine's for full-block masks", "[learn]") {
    const Tensor q = tensor_random({1, 2, 100, 8}, 1), k = tensor_random({1, 2, 100, 8}, 2);
    PooledAttention pooled = pooled_zeros(1, 2, 100, 16);
    pooled_add_layer(pooled, 0, q, k);
    const Tensor lse = dense_lse(q, k, 16);
    for (int64_t keep : {1, 3, 7}) {
        const MaskSet oracle = oracle_masks(pooled, keep);
        const auto engine = mask_recall(q, k, lse, oracle, 0);
        for (int64_t h = 0; h < 2; ++h) {
            CHECK(pooled_recall(pooled, 0, h, oracle.at(0, h)) == Approx(engine[h]).epsilon(1e-5));
            CHECK(oracle.at(0, h).kept_blocks() == keep * 7);
        }
        if (keep == 7) CHECK(engine[0] == Approx(1.0).epsilon(1e-6));
    }
    // Each pooled row shares out to 1.
    double row = 0;
    for (int64_t c = 0; c < pooled.blocks(); ++c) row += pooled.row_share(0, 1, 6, c);
    CHECK(row == Approx(1.0).epsilon(1e-9));
}

TEST_CASE("pooling: each key block's largest row share, as the exact-score selector ranks blocks", "[learn]") {
    const int64_t n = 100, d = 8, B = 16, blocks = 7;
    const Tensor q = tensor_random({1, 2, n, d}, 3), k = tensor_random({1, 2, n, d}, 4);
    for (bool causal : {false, true}) {
        PooledAttention pooled = pooled_zeros(1, 2, n, static_cast<int32_t>(B));
        pooled_add_layer(pooled, 0, q, k, causal);
        for (int64_t h = 0; h < 2; ++h) {
            std::vector<double> largest(static_cast<size_t>(blocks * blocks), 0.0);   // brute force
            for (int64_t i = 0; i < n; ++i) {
                std::vector<double> p;
                for (int64_t j = 0; j < (causal ? i + 1 : n); ++j) {
                    double dot = 0;
                    for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(q.at(0, h, i, c)) * k.at(0, h, j, c);
                    p.push_back(dot / std::sqrt(static_cast<double>(d)));
                }
                const double top = *std::max_element(p.begin(), p.end());
                double total = 0;
                for (double& x : p) total += (x = std::exp(x - top));
                std::vector<double> share(static_cast<size_t>(blocks), 0.0);
                for (size_t j = 0; j < p.size(); ++j) share[j / B] += p[j] / total;
                for (int64_t c = 0; c < blocks; ++c)
                    largest[static_cast<size_t>(i / B * blocks + c)] = std::max(largest[static_cast<size_t>(i / B * blocks + c)], share[c]);
            }
            for (int64_t r = 0; r < blocks; ++r) {
                double total = 0, sum = 0;
                for (int64_t c = 0; c < blocks; ++c) total += largest[static_cast<size_t>(r * blocks + c)];
                for (int64_t c = 0; c < blocks; ++c) {
                    CHECK(pooled.row_max_share(0, h, r, c) == Approx(largest[static_cast<size_t>(r * blocks + c)] / total).epsilon(1e-9));
                    sum += pooled.row_max_share(0, h, r, c);
                    if (causal && c > r) CHECK(pooled.row_max_share(0, h, r, c) == 0.0);
                }
                CHECK(sum == Approx(1.0).epsilon(1e-12));
            }
        }
    }
    // The gate's examples take it as their target when asked.
    const PooledGateExample mass = pooled_gate_example(q, k, static_cast<int32_t>(B), true, true, false);
    const PooledGateExample rows = pooled_gate_example(q, k, static_cast<int32_t>(B), true, true, true);
    PooledAttention pooled = pooled_zeros(1, 2, n, static_cast<int32_t>(B));
    pooled_add_layer(pooled, 0, q, k, true);
    CHECK(rows.target[(1 * blocks + 5) * blocks + 2] == Approx(pooled.row_max_share(0, 1, 5, 2)).epsilon(1e-12));
    CHECK(mass.target[(1 * blocks + 5) * blocks + 2] == Approx(pooled.row_share(0, 1, 5, 2) /
                                                               [&] { double t = 0; for (int64_t c = 0; c < blocks; ++c) t += pooled.row_share(0, 1, 5, c); return t; }())
                                                            .epsilon(1e-12));
}

TEST_CASE("baselines: Longformer and BigBird stay within the density", "[learn]") {
    for (double density : {0.1, 0.25, 0.5}) {
        for (const std::string name : {"longformer", "bigbird"}) {
            const std::string e = baseline_expression(name, density, 256, 16);
            const auto mask = expression_compile(e, 256, 16);
            INFO(e);
            CHECK(static_cast<double>(mask->kept_blocks()) / 256.0 <= density);
            CHECK(e.rfind(name + "(", 0) == 0);
        }
    }
    CHECK_THROWS_WITH(baseline_expression("reformer", 0.1, 256, 16), Catch::Contains("use longformer or bigbird"));
}

TEST_CASE("Q/K dumps: shapes and dtypes are checked, naming the file", "[learn]") {
    const std::string dir = std::filesystem::temp_directory_path().string();
    const Tensor q = tensor_random({1, 2, 32, 4}, 1);
    npy_save(npy_array_make<float>({2, 32, 4}, q.data), dir + "/sparsa_learn_q.npy");
    npy_save(npy_array_make<float>({2, 32, 4}, q.data), dir + "/sparsa_learn_k.npy");
    npy_save(npy_array_make<int32_t>({2, 32, 4}, std::vector<int32_t>(256, 1)), dir + "/sparsa_learn_bad.npy");
    const QkDump dump = qk_dump_load({dir + "/sparsa_learn_q.npy"}, {dir + "/sparsa_learn_k.npy"});
    CHECK(dump.q[0].data == q.data);
    CHECK_THROWS_WITH(qk_dump_load({dir + "/sparsa_learn_q.npy"}, {dir + "/sparsa_learn_bad.npy"}),
                      Catch::Contains("sparsa_learn_bad.npy") && Catch::Contains("float32"));
    CHECK_THROWS_WITH(qk_dump_load({dir + "/sparsa_learn_q.npy"}, {}), Catch::Contains("one Q file and one K file per layer"));
}

// [SECTION] the causal mask, causal selection, and the RULER evaluation's baselines

TEST_CASE("causal mask: equals the lower triangle, and the causal cut of any mask is mask AND causal", "[learn]") {
    for (int32_t block : {16, 64})
        for (int64_t n : {1, 15, 16, 17, 33, 65, 100, 129}) {
            INFO("n = " << n << ", block " << block);
            std::vector<uint8_t> lower(static_cast<size_t>(n * n), 0);
            for (int64_t q = 0; q < n; ++q)
                for (int64_t k = 0; k <= q; ++k) lower[q * n + k] = 1;
            const auto causal = block_mask_causal(n, block);
            block_mask_validate(*causal, "causal");
            CHECK(*causal == block_mask_from_dense(n, block, lower.data()));
            CHECK(causal->kept_blocks() == causal_block_count(n, block));
            for (const char* e : {"dense", "window(5)", "band(1)", "columns(first(16)) | window(8)", "strided(16) | band(0)", "dilated(4, 2)"}) {
                INFO(e);
                const auto mask = expression_compile(e, n, block);
                std::vector<uint8_t> both(static_cast<size_t>(n * n), 0);
                std::vector<uint8_t> row(static_cast<size_t>(n));
                for (int64_t q = 0; q < n; ++q) {
                    block_mask_dense_row(*mask, q, row.data());
                    for (int64_t k = 0; k < n; ++k) both[q * n + k] = row[k] && k <= q ? 1 : 0;
                }
                const BlockMask cut = block_mask_restrict_causal(*mask);
                block_mask_validate(cut, "cut");
                CHECK(cut == block_mask_from_dense(n, block, both.data()));
            }
        }
}

TEST_CASE("top-k layout: any causal top-k selection's blocks, written over the layout's, give the selection's mask", "[learn]") {
    // What CudaLayerMasks::forward with columns does on the device: the layout's row lengths,
    // partial diagonals and bits stay; only col_idx changes (each row ascending, diagonal last).
    for (int32_t block : {16, 64})
        for (int64_t n : {1, 16, 17, 100, 200, 1000})
            for (int64_t keep : {1, 2, 3, 7}) {
                const int64_t blocks = (n + block - 1) / block;
                if (keep > blocks) continue;
                INFO("n = " << n << ", block " << block << ", keep " << keep);
                const MaskSet layout = mask_set_top_k_layout(n, block, 3, keep);
                REQUIRE(layout.heads == 3);
                CHECK(&layout.at(0, 0) != &layout.at(0, 1));   // one object per head: each its own columns on the device
                for (int64_t h = 0; h < 3; ++h) {
                    const BlockMask& m = layout.at(0, h);
                    block_mask_validate(m, "layout");
                    CHECK(m.kept_blocks() == top_k_layout_entries(n, block, keep));
                    std::vector<double> scores(static_cast<size_t>(blocks * blocks));
                    for (size_t i = 0; i < scores.size(); ++i) scores[i] = static_cast<double>((i * 7919 + 13 * h) % 101);
                    const BlockMask chosen = block_mask_restrict_causal(block_mask_top_k(n, block, scores, keep, true, true));
                    BlockMask written = m;
                    REQUIRE(chosen.row_ptr == m.row_ptr);
                    written.col_idx = chosen.col_idx;
                    block_mask_validate(written, "written");
                    CHECK(written == chosen);
                }
            }
    CHECK_THROWS_WITH(mask_set_top_k_layout(100, 16, 2, 8), Catch::Contains("keep is 8") && Catch::Contains("1 to 7"));
    CHECK_THROWS_WITH(mask_set_top_k_layout(100, 16, 0, 2), Catch::Contains("heads"));
}

TEST_CASE("causal selection: top-k keeps no key block after the query block; blocks per row fit the causal density", "[learn]") {
    const int64_t blocks = 8, n = blocks * 16;
    std::vector<double> scores(static_cast<size_t>(blocks * blocks));
    for (size_t i = 0; i < scores.size(); ++i) scores[i] = static_cast<double>((i * 37) % 11);
    const BlockMask m = block_mask_top_k(n, 16, scores, 3, true, true);
    for (int64_t r = 0; r < blocks; ++r) {
        CHECK(m.row_ptr[r + 1] - m.row_ptr[r] == std::min<int64_t>(3, r + 1));
        for (int64_t e = m.row_ptr[r]; e < m.row_ptr[r + 1]; ++e) CHECK(m.col_idx[e] <= r);
    }
    // 64 blocks: the causal mask has 2,080; k = 4 keeps 4 * 65 - 10 = 250 (12.0%), the nearest to 12.5%.
    CHECK(ruler_blocks_per_row(0.125, 64, true) == 4);
    CHECK(ruler_blocks_per_row(0.125, 64, false) == 8);
    CHECK(ruler_blocks_per_row(1.0, 64, true) == 64);
}

TEST_CASE("ruler evaluation: the dense row is the teacher's, the baselines keep their densities, the identity gate at full density is dense", "[learn]") {
    const Teacher teacher = testing::tiny_ruler_teacher();
    RulerEvalOptions o;
    o.densities = {0.25, 1.0};
    o.test_inputs = 10;
    o.validation_inputs = 5;
    o.time_repeats = 1;
    const RulerEval e = ruler_evaluate(teacher, o);
    REQUIRE(e.rows.size() == 2 + 2 * 2);
    CHECK(e.rows[0].method == "dense");
    const TaskBatch test = task_batch(teacher.task, task_stream_seed(TaskStream::test, 0), 0, 10);
    TaskScores dense;
    dense.add(test, teacher_evaluate(teacher, test).hits);
    CHECK(e.rows[0].scores.correct == dense.correct);
    CHECK(e.rows[0].scores.total_answers() == 10 / 5 * (1 + 1 + 2 + 2 + 4));
    CHECK(e.rows[1].method == "diagonal");
    CHECK(e.rows[1].density == Approx(8.0 / 36.0));   // 8 diagonal blocks of the causal mask's 36
    CHECK(e.rows[1].recall < 1.0);
    CHECK(e.rows[2].method == "identity gate");
    CHECK(e.rows[3].method == "best fixed");
    CHECK(e.rows[3].density <= 0.25 + 1e-9);
    CHECK(e.rows[2].recall >= e.rows[1].recall);   // the exact-score top blocks keep at least the diagonal's mass
    CHECK(e.rows[4].method == "identity gate");   // density 1: every causal block
    CHECK(e.rows[4].density == Approx(1.0));
    CHECK(e.rows[4].recall == Approx(1.0).epsilon(1e-5));
    CHECK(e.rows[4].scores.correct == dense.correct);
    const std::string dir = (std::filesystem::temp_directory_path() / "sparsa_learn_ruler_report").string();
    std::filesystem::remove_all(dir);
    ruler_report_write({e, e}, {"a", "b"}, dir, "# test\n");
    CHECK(std::filesystem::file_size(dir + "/report.md") > 0);
    CHECK(std::filesystem::file_size(dir + "/report.json") > 0);
    CHECK(std::filesystem::file_size(dir + "/depth.png") > 0);
    std::filesystem::remove_all(dir);
}
