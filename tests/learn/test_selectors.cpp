// The cheap selectors (learn/selectors.*), the pooled gate (learn/pooled_gate.*) and the lightning
// indexer (learn/indexer.*) on planted attention: a key block made to match a query block must be
// picked by MoBA, Quest, the trained gate and the trained indexer; a planted column and a planted
// diagonal by vertical-slash; every selector keeps the diagonal, no block after the query block
// (causal), exactly min(keep, r + 1) blocks per row, the same choice twice; the exact-score
// selector keeps the identity gate's blocks; DuoAttention's budget stays within its density; the
// gate's and the indexer's gradients match finite differences and training lowers their
// validation KL.
#include "learn/indexer.hpp"
#include "learn/pooled_gate.hpp"
#include "learn/selectors.hpp"

#include "learn/causal_mask.hpp"
#include "learn/distill.hpp"

#include "engine/error.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <functional>
#include <random>

using namespace sparsa;
using namespace sparsa::learn;

namespace {

constexpr int32_t kBlock = 16;

bool row_has(const BlockMask& m, int64_t r, int64_t c) {
    for (int64_t e = m.row_ptr[r]; e < m.row_ptr[r + 1]; ++e)
        if (m.col_idx[e] == c) return true;
    return false;
}

// Small noise everywhere; in head h, the queries of block planted[h].first and the keys of block
// planted[h].second get alpha along channel h, so that pair of blocks dominates every other.
struct Planted {
    Tensor q, k;
};
Planted planted_blocks(int64_t n, int64_t d, const std::vector<std::pair<int64_t, int64_t>>& planted, uint64_t seed, float alpha = 4.0f) {
    const int64_t heads = static_cast<int64_t>(planted.size());
    Planted p{tensor_random({1, heads, n, d}, seed), tensor_random({1, heads, n, d}, seed + 7)};
    for (auto* t : {&p.q, &p.k})
        for (float& x : t->data) x *= 0.1f;
    for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < kBlock; ++i) {
            p.q.at(0, h, planted[h].first * kBlock + i, h) += alpha;
            p.k.at(0, h, planted[h].second * kBlock + i, h) += alpha;
        }
    return p;
}

using Selector = std::function<MaskSet(const Tensor&, const Tensor&, const SelectorOptions&)>;
const std::vector<std::pair<std::string, Selector>>& selectors() {
    static const std::vector<std::pair<std::string, Selector>> all = {
        {"moba", select_moba},
        {"quest", select_quest},
        {"vertical-slash", [](const Tensor& q, const Tensor& k, const SelectorOptions& o) { return select_vertical_slash(q, k, o); }},
    };
    return all;
}

} // namespace

TEST_CASE("moba and quest pick a planted block in each head", "[selectors]") {
    const Planted p = planted_blocks(256, 16, {{12, 3}, {9, 1}}, 11);
    for (const auto& [name, select] : selectors()) {
        if (name == "vertical-slash") continue;   // its own planted case below (it reads the last queries only)
        INFO(name);
        const MaskSet m = select(p.q, p.k, SelectorOptions{kBlock, 2, true});
        CHECK(row_has(m.at(0, 0), 12, 3));
        CHECK(row_has(m.at(0, 1), 9, 1));
        CHECK_FALSE(row_has(m.at(0, 0), 9, 1));   // each head its own choice
    }
}

TEST_CASE("vertical-slash picks a planted column and a planted diagonal", "[selectors]") {
    const int64_t n = 256, d = 64, offset = 100, column = 40;
    Tensor q = tensor_random({1, 2, n, d}, 3), k = tensor_random({1, 2, n, d}, 4);
    std::mt19937_64 rng(5);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> g(static_cast<size_t>(n * d));
    for (float& x : g) x = normal(rng);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t e = 0; e < d; ++e) {
            // head 0: query i and key i - offset share a random vector g_i (a slash at offset 100);
            q.at(0, 0, i, e) = 1.5f * g[i * d + e];
            k.at(0, 0, i, e) = i + offset < n ? 1.5f * g[(i + offset) * d + e] : 0.1f * k.at(0, 0, i, e);
            // head 1: every query and key 40 share channel 0 (a column every query reads).
            q.at(0, 1, i, e) = 0.1f * q.at(0, 1, i, e) + (e == 0 ? 4.0f : 0.0f);
            k.at(0, 1, i, e) = 0.1f * k.at(0, 1, i, e) + (e == 0 && i == column ? 6.0f : 0.0f);
        }
    const MaskSet m = select_vertical_slash(q, k, SelectorOptions{kBlock, 3, true});
    // Offset 100 crosses block diagonals 6 (12 of each row's 16 pairs) and 7 (4): diagonal 6 is kept.
    for (int64_t r = 6; r < n / kBlock; ++r) CHECK(row_has(m.at(0, 0), r, r - 6));
    for (int64_t r = column / kBlock; r < n / kBlock; ++r) CHECK(row_has(m.at(0, 1), r, column / kBlock));
    const VerticalSlash e = vertical_slash_estimate(q, k, 1, 64, true);
    CHECK(std::max_element(e.vertical.begin(), e.vertical.end()) - e.vertical.begin() == column);
}

TEST_CASE("selectors keep the diagonal, keep count, the causal rule, and repeat themselves", "[selectors]") {
    const int64_t n = 200;   // a partial last block
    const Tensor q = tensor_random({1, 3, n, 16}, 21), k = tensor_random({1, 3, n, 16}, 22);
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    for (const auto& [name, select] : selectors())
        for (bool causal : {true, false})
            for (int64_t keep : {int64_t{1}, int64_t{3}, blocks}) {
                INFO(name << " causal " << causal << " keep " << keep);
                const MaskSet m = select(q, k, SelectorOptions{kBlock, keep, causal});
                const MaskSet again = select(q, k, SelectorOptions{kBlock, keep, causal});
                for (int64_t h = 0; h < 3; ++h) {
                    const BlockMask& mask = m.at(0, h);
                    CHECK(mask.col_idx == again.at(0, h).col_idx);
                    for (int64_t r = 0; r < blocks; ++r) {
                        CHECK(row_has(mask, r, r));
                        CHECK(mask.row_ptr[r + 1] - mask.row_ptr[r] == (causal ? std::min(keep, r + 1) : keep));
                        for (int64_t e = mask.row_ptr[r]; e < mask.row_ptr[r + 1]; ++e)
                            if (causal) CHECK(mask.col_idx[e] <= r);
                    }
                }
            }
    CHECK_THROWS_AS(select_moba(q, k, SelectorOptions{kBlock, blocks + 1, true}), Error);
    CHECK_THROWS_AS(select_quest(q, tensor_random({1, 3, n, 8}, 1), SelectorOptions{kBlock, 2, true}), Error);
}

TEST_CASE("quest's score bounds every query-key product of the block", "[selectors]") {
    const int64_t n = 64, d = 8;
    const Tensor q = tensor_random({1, 1, n, d}, 31), k = tensor_random({1, 1, n, d}, 32);
    const std::vector<double> s = quest_scores(q, k, 0, kBlock);
    const int64_t blocks = n / kBlock;
    for (int64_t r = 0; r < blocks; ++r)
        for (int64_t c = 0; c < blocks; ++c) {
            double best = -INFINITY;
            for (int64_t i = r * kBlock; i < (r + 1) * kBlock; ++i)
                for (int64_t j = c * kBlock; j < (c + 1) * kBlock; ++j) {
                    double dot = 0;
                    for (int64_t e = 0; e < d; ++e) dot += static_cast<double>(q.at(0, 0, i, e)) * k.at(0, 0, j, e);
                    best = std::max(best, dot);
                }
            CHECK(s[r * blocks + c] >= best - 1e-4);
        }
}

TEST_CASE("duo: the budget stays within the density, streaming heads keep sink and window", "[selectors]") {
    const int64_t n = 1024, blocks = n / kBlock;
    // 4 heads at 12.5%: one dense head alone is 25% of the work, so none is retrieval.
    const DuoBudget small = duo_budget(n, kBlock, 4, 0.125, true);
    CHECK(small.retrieval == 0);
    CHECK(small.density <= 0.125 + 1e-9);
    CHECK(small.window_blocks > 1);
    const DuoBudget half = duo_budget(n, kBlock, 4, 0.5, true);
    CHECK(half.retrieval == 1);
    CHECK(half.density <= 0.5 + 1e-9);
    const BlockMask s = streaming_mask(n, kBlock, 1, 3, true);
    for (int64_t r = 0; r < blocks; ++r) {
        CHECK(row_has(s, r, 0));
        CHECK(row_has(s, r, r));
        CHECK(row_has(s, r, std::max<int64_t>(0, r - 2)));
        CHECK(s.row_ptr[r + 1] - s.row_ptr[r] == std::min<int64_t>(r + 1, r >= 3 ? 4 : 3));
    }
    const MaskSet m = duo_masks(n, kBlock, {true, false}, small, true);
    CHECK(m.at(0, 0).col_idx == block_mask_causal(n, kBlock)->col_idx);
    CHECK(m.at(0, 1).kept_blocks() < m.at(0, 0).kept_blocks());
}

TEST_CASE("pooled gate: the gradient matches finite differences", "[pooled_gate]") {
    const Planted p = planted_blocks(64, 8, {{3, 1}}, 41);
    const PooledGateExample e = pooled_gate_example(p.q, p.k, kBlock, true, true);
    PooledGate gate = pooled_gate_init(1, 1, 8, 4, kBlock, true, 5);
    std::vector<double> grad(static_cast<size_t>(gate.per_head()), 0.0);
    pooled_gate_loss(gate, 0, 0, e, grad.data());
    for (int64_t at : {int64_t{0}, int64_t{13}, int64_t{37}, int64_t{60}}) {
        const double keep = gate.params[at], step = 1e-5;
        gate.params[at] = keep + step;
        const double up = pooled_gate_loss(gate, 0, 0, e, nullptr);
        gate.params[at] = keep - step;
        const double down = pooled_gate_loss(gate, 0, 0, e, nullptr);
        gate.params[at] = keep;
        CHECK(grad[at] == Approx((up - down) / (2 * step)).margin(1e-6));
    }
}

TEST_CASE("pooled gate: training lowers the validation KL and then picks a planted block", "[pooled_gate]") {
    // Each input plants one (query block, key block) pair at random positions; the gate must learn
    // that channel 0 of the pooled queries and keys is what attention follows.
    const int64_t n = 128, d = 8, blocks = n / kBlock;
    std::mt19937_64 rng(9);
    auto examples = [&](int64_t count, uint64_t seed) {
        std::vector<std::vector<PooledGateExample>> out;
        for (int64_t b = 0; b < count; ++b) {
            const int64_t r = 2 + static_cast<int64_t>(rng() % (blocks - 2)), c = static_cast<int64_t>(rng() % (r - 1));
            const Planted p = planted_blocks(n, d, {{r, c}}, seed + static_cast<uint64_t>(b), 3.0f);
            out.push_back({pooled_gate_example(p.q, p.k, kBlock, true, true)});
        }
        return out;
    };
    const auto train = examples(12, 100), validation = examples(4, 200);
    PooledGate gate = pooled_gate_init(1, 1, d, 4, kBlock, true, 3);
    PooledGateTrainOptions o;
    o.steps = 150;
    o.eval_every = 10;
    const PooledGateTrainReport rep = pooled_gate_train(gate, train, validation, o);
    CHECK(rep.best_validation < 0.7 * rep.first_validation);
    CHECK(pooled_gate_kl(gate, validation) == Approx(rep.best_validation));
    const Planted fresh = planted_blocks(n, d, {{6, 2}}, 999, 3.0f);
    CHECK(row_has(pooled_gate_masks(gate, 0, fresh.q, fresh.k, 2).at(0, 0), 6, 2));
    // Saved and loaded, the same masks.
    const std::string path = (std::filesystem::temp_directory_path() / "sparsa-test-pooled-gate.json").string();
    pooled_gate_save(gate, path);
    const PooledGate back = pooled_gate_load(path);
    CHECK(back.params == gate.params);
    std::filesystem::remove(path);
}

TEST_CASE("the exact-score selector keeps the identity gate's blocks", "[selectors]") {
    const int64_t n = 256, d = 16, H = 2;
    const Tensor q = tensor_random({1, H, n, d}, 51), k = tensor_random({1, H, n, d}, 52);
    for (bool causal : {true, false})
        for (int64_t keep : {int64_t{2}, int64_t{5}}) {
            INFO("causal " << causal << " keep " << keep);
            const BlockGate identity = gate_identity(1, H, d, kBlock, causal);
            const MaskSet gate = gate_masks(identity, 0, q, k, keep);
            const MaskSet exact = select_exact(q, k, SelectorOptions{kBlock, keep, causal});
            for (int64_t h = 0; h < H; ++h) CHECK(exact.at(0, h).col_idx == gate.at(0, h).col_idx);
        }
}

TEST_CASE("indexer: the gradient matches finite differences", "[indexer]") {
    const Planted p = planted_blocks(48, 4, {{2, 0}, {1, 0}}, 61);
    const IndexerExample e = indexer_example(p.q, p.k, kBlock, true, 20, 3);
    Indexer ix = indexer_init(1, 2, 4, 2, 3, kBlock, true, 7);
    std::vector<double> grad(static_cast<size_t>(ix.per_layer()), 0.0);
    indexer_loss(ix, 0, e, grad.data());
    for (int64_t at = 0; at < ix.per_layer(); at += 5) {
        const double keep = ix.params[at], step = 1e-6;
        ix.params[at] = keep + step;
        const double up = indexer_loss(ix, 0, e, nullptr);
        ix.params[at] = keep - step;
        const double down = indexer_loss(ix, 0, e, nullptr);
        ix.params[at] = keep;
        CHECK(grad[at] == Approx((up - down) / (2 * step)).margin(1e-6));
    }
}

TEST_CASE("indexer: training lowers the validation KL and then picks a planted block", "[indexer]") {
    const int64_t n = 128, d = 8, blocks = n / kBlock;
    std::mt19937_64 rng(19);
    auto examples = [&](int64_t count, uint64_t seed) {
        std::vector<std::vector<IndexerExample>> out;
        for (int64_t b = 0; b < count; ++b) {
            const int64_t r = 2 + static_cast<int64_t>(rng() % (blocks - 2)), c = static_cast<int64_t>(rng() % (r - 1));
            const Planted p = planted_blocks(n, d, {{r, c}}, seed + static_cast<uint64_t>(b), 3.0f);
            out.push_back({indexer_example(p.q, p.k, kBlock, true, n, seed)});
        }
        return out;
    };
    const auto train = examples(12, 300), validation = examples(4, 400);
    Indexer ix = indexer_init(1, 1, d, 2, 4, kBlock, true, 3);
    IndexerTrainOptions o;
    o.steps = 600;
    o.lr = 3e-2;
    o.patience = 60;
    o.eval_every = 10;
    const IndexerTrainReport rep = indexer_train(ix, train, validation, o);
    CHECK(rep.best_validation < 0.7 * rep.first_validation);
    const Planted fresh = planted_blocks(n, d, {{6, 2}}, 999, 3.0f);
    const MaskSet m = indexer_masks(ix, 0, fresh.q, fresh.k, 2);
    INFO("KL " << rep.first_validation << " -> " << rep.best_validation << " in " << rep.steps << " steps; train " << rep.first_train << " -> " << rep.last_train);
    CHECK(row_has(m.at(0, 0), 6, 2));
    for (int64_t r = 0; r < blocks; ++r) {   // the diagonal, the causal rule, the keep count
        CHECK(row_has(m.at(0, 0), r, r));
        CHECK(m.at(0, 0).row_ptr[r + 1] - m.at(0, 0).row_ptr[r] == std::min<int64_t>(2, r + 1));
        for (int64_t e = m.at(0, 0).row_ptr[r]; e < m.at(0, 0).row_ptr[r + 1]; ++e) CHECK(m.at(0, 0).col_idx[e] <= r);
    }
    const std::vector<double> s = indexer_scores(ix, 0, fresh.q, fresh.k);
    CHECK(std::isinf(s[0 * n + 5]));   // causal: key 5 after query 0
}
