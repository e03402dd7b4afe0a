// Training-free block selectors (MoBA, Quest, vertical and slash, DuoAttention): see selectors.hpp.
//
// Index: [SECTION] shared, [SECTION] exact scores, [SECTION] MoBA, [SECTION] Quest, [SECTION] vertical and slash,
//        [SECTION] DuoAttention
#include "learn/selectors.hpp"

#include "engine/error.hpp"
#include "learn/causal_mask.hpp"
#include "learn/distill.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

namespace sparsa::learn {

namespace {

// [SECTION] shared

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRows = Eigen::Map<const Matrix>;

// The rows of one head: [n, d], no copy.
ConstRows head_rows(const Tensor& x, int64_t head) { return ConstRows(x.row(0, head, 0), x.shape.n, x.shape.d); }

void check_inputs(const Tensor& q, const Tensor& k, const SelectorOptions& o, const char* who) {
    if (!(q.shape == k.shape) || q.shape.batch != 1)
        throw Error(std::string(who) + ": q " + tensor_shape_text(q.shape) + " and k " + tensor_shape_text(k.shape) +
                    " must both be [1, heads, n, d] (one input, one layer)");
    if (!block_size_valid(o.block))
        throw Error(std::string(who) + ": block size " + std::to_string(o.block) + " is not valid (use 16, 32, 64, 128 or 256)");
    const int64_t blocks = (q.shape.n + o.block - 1) / o.block;
    if (o.keep < 1 || o.keep > blocks)
        throw Error(std::string(who) + ": keep " + std::to_string(o.keep) + " blocks per row is outside 1 to " + std::to_string(blocks) +
                    " (the key blocks at n = " + std::to_string(q.shape.n) + ", block " + std::to_string(o.block) + ")");
}

// Mean of each block's rows: [blocks, d].
Matrix block_means(const Tensor& x, int64_t head, int32_t block) {
    const int64_t n = x.shape.n, blocks = (n + block - 1) / block;
    const ConstRows rows = head_rows(x, head);
    Matrix m(blocks, x.shape.d);
    for (int64_t r = 0; r < blocks; ++r) {
        const int64_t begin = r * block, count = std::min<int64_t>(block, n - begin);
        m.row(r) = rows.middleRows(begin, count).colwise().sum() / static_cast<float>(count);
    }
    return m;
}

std::vector<double> to_scores(const Matrix& s) {
    std::vector<double> out(static_cast<size_t>(s.size()));
    for (int64_t r = 0; r < s.rows(); ++r)
        for (int64_t c = 0; c < s.cols(); ++c) out[r * s.cols() + c] = s(r, c);
    return out;
}

// Top `keep` per row of each head's scores, the diagonal kept: a one-layer MaskSet.
template <typename Scores> MaskSet top_k_set(const Tensor& q, const SelectorOptions& o, Scores scores) {
    std::vector<std::shared_ptr<const BlockMask>> masks;
    for (int64_t h = 0; h < q.shape.heads; ++h)
        masks.push_back(std::make_shared<BlockMask>(block_mask_top_k(q.shape.n, o.block, scores(h), o.keep, true, o.causal)));
    return mask_set_make(1, q.shape.heads, std::move(masks));
}

} // namespace

// [SECTION] exact scores

MaskSet select_exact(const Tensor& q, const Tensor& k, const SelectorOptions& o) {
    check_inputs(q, k, o, "exact");
    const int64_t n = q.shape.n, B = o.block, blocks = (n + B - 1) / B;
    const float scale = 1.0f / std::sqrt(static_cast<float>(q.shape.d));
    return top_k_set(q, o, [&](int64_t h) {
        const ConstRows queries = head_rows(q, h), keys = head_rows(k, h);
        std::vector<double> score(static_cast<size_t>(blocks * blocks), 0.0);
        Eigen::ArrayXf e(n);
        for (int64_t r = 0; r < blocks; ++r) {
            const int64_t begin = r * B, count = std::min<int64_t>(B, n - begin);
            const Matrix s = queries.middleRows(begin, count) * keys.transpose() * scale;   // S = Q_r K^T / sqrt(d): [count, n]
            for (int64_t a = 0; a < count; ++a) {
                const auto row = s.row(a).array();
                e = (row - row.maxCoeff()).exp();
                const double total = e.cast<double>().sum();
                for (int64_t c = 0; c < blocks; ++c) {
                    const int64_t kb = c * B, kc = std::min<int64_t>(B, n - kb);
                    const double share = e.segment(kb, kc).cast<double>().sum() / total;
                    score[r * blocks + c] = std::max(score[r * blocks + c], share);
                }
            }
        }
        return score;
    });
}

// [SECTION] MoBA

std::vector<double> moba_scores(const Tensor& q, const Tensor& k, int64_t head, int32_t block) {
    const Matrix qm = block_means(q, head, block), km = block_means(k, head, block);
    return to_scores(qm * km.transpose());   // S = mean(Q_r) mean(K_c)^T: [blocks, blocks]
}

MaskSet select_moba(const Tensor& q, const Tensor& k, const SelectorOptions& o) {
    check_inputs(q, k, o, "moba");
    return top_k_set(q, o, [&](int64_t h) { return moba_scores(q, k, h, o.block); });
}

// [SECTION] Quest

std::vector<double> quest_scores(const Tensor& q, const Tensor& k, int64_t head, int32_t block) {
    const int64_t n = q.shape.n, d = q.shape.d, blocks = (n + block - 1) / block;
    const ConstRows keys = head_rows(k, head), queries = head_rows(q, head);
    Matrix hi(blocks, d), lo(blocks, d);   // per key block and channel: the largest and smallest key
    for (int64_t c = 0; c < blocks; ++c) {
        const int64_t begin = c * block, count = std::min<int64_t>(block, n - begin);
        hi.row(c) = keys.middleRows(begin, count).colwise().maxCoeff();
        lo.row(c) = keys.middleRows(begin, count).colwise().minCoeff();
    }
    // u = q+ hi^T + q- lo^T: [n, blocks], the bound of every query against every key block.
    const Matrix u = queries.cwiseMax(0.0f) * hi.transpose() + queries.cwiseMin(0.0f) * lo.transpose();
    Matrix s(blocks, blocks);
    for (int64_t r = 0; r < blocks; ++r) {
        const int64_t begin = r * block, count = std::min<int64_t>(block, n - begin);
        s.row(r) = u.middleRows(begin, count).colwise().maxCoeff();   // the largest bound over the block's queries
    }
    return to_scores(s);
}

MaskSet select_quest(const Tensor& q, const Tensor& k, const SelectorOptions& o) {
    check_inputs(q, k, o, "quest");
    return top_k_set(q, o, [&](int64_t h) { return quest_scores(q, k, h, o.block); });
}

// [SECTION] vertical and slash

VerticalSlash vertical_slash_estimate(const Tensor& q, const Tensor& k, int64_t head, int64_t last_queries, bool causal) {
    const int64_t n = q.shape.n, d = q.shape.d, m = std::clamp<int64_t>(last_queries, 1, n), first = n - m;
    const ConstRows queries = head_rows(q, head), keys = head_rows(k, head);
    // S = Q_last K^T / sqrt(d): [m, n], then a softmax per row over the keys it may see.
    Matrix s = queries.middleRows(first, m) * keys.transpose();
    s *= 1.0f / std::sqrt(static_cast<float>(d));
    VerticalSlash e;
    Eigen::ArrayXd vertical = Eigen::ArrayXd::Zero(n), slash = Eigen::ArrayXd::Zero(causal ? n : 2 * n - 1);
    Eigen::ArrayXf p(n);
    for (int64_t a = 0; a < m; ++a) {
        const int64_t i = first + a, seen = causal ? i + 1 : n;
        const auto row = s.row(a).head(seen).array();
        p.head(seen) = (row - row.maxCoeff()).exp();
        p.head(seen) /= p.head(seen).sum();
        vertical.head(seen) += p.head(seen).cast<double>();
        // slash[i - j] += p_j: offsets i - j for j = 0 .. seen - 1 run from i down to i - seen + 1.
        const int64_t low = causal ? i - seen + 1 : i - seen + 1 + n - 1;
        slash.segment(low, seen) += p.head(seen).reverse().cast<double>();
    }
    e.vertical.assign(vertical.data(), vertical.data() + vertical.size());
    e.slash.assign(slash.data(), slash.data() + slash.size());
    return e;
}

MaskSet select_vertical_slash(const Tensor& q, const Tensor& k, const SelectorOptions& o, int64_t last_queries) {
    check_inputs(q, k, o, "vertical-slash");
    if (last_queries < 1) throw Error("vertical-slash: last_queries " + std::to_string(last_queries) + " must be at least 1");
    const int64_t n = q.shape.n, B = o.block, blocks = (n + B - 1) / B;
    // Block diagonal D = r - c runs from -(blocks - 1) (bidirectional only) to blocks - 1; index D + blocks - 1.
    const int64_t diagonals = 2 * blocks - 1;
    std::vector<std::shared_ptr<const BlockMask>> masks;
    for (int64_t h = 0; h < q.shape.heads; ++h) {
        const VerticalSlash e = vertical_slash_estimate(q, k, h, last_queries, o.causal);
        // One ranking of candidates: column c (index c) and diagonal D (index blocks + D + blocks - 1).
        std::vector<double> score(static_cast<size_t>(blocks + diagonals), 0.0);
        for (int64_t j = 0; j < n; ++j) score[j / B] += e.vertical[j];
        for (size_t s = 0; s < e.slash.size(); ++s) {
            const int64_t offset = o.causal ? static_cast<int64_t>(s) : static_cast<int64_t>(s) - (n - 1);
            // Offset o crosses diagonals floor(o / B) and floor(o / B) + 1, weighted by the pairs it has in each.
            const int64_t low = offset >= 0 ? offset / B : -((-offset + B - 1) / B);
            for (int64_t D = low; D <= low + 1; ++D) {
                const double w = static_cast<double>(B - std::abs(offset - D * B)) / static_cast<double>(B);
                if (w > 0 && D > -blocks && D < blocks) score[blocks + D + blocks - 1] += w * e.slash[s];
            }
        }
        std::vector<int64_t> order(score.size());
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return score[a] > score[b]; });
        std::vector<std::vector<int32_t>> rows(static_cast<size_t>(blocks));
        for (int64_t r = 0; r < blocks; ++r) {
            std::vector<uint8_t> taken(static_cast<size_t>(blocks), 0);
            rows[r].push_back(static_cast<int32_t>(r));
            taken[r] = 1;
            const int64_t want = o.causal ? std::min(o.keep, r + 1) : o.keep;
            for (int64_t cand : order) {
                if (static_cast<int64_t>(rows[r].size()) >= want) break;
                const int64_t c = cand < blocks ? cand : r - (cand - blocks - (blocks - 1));
                if (c < 0 || c >= blocks || (o.causal && c > r) || taken[c]) continue;
                taken[c] = 1;
                rows[r].push_back(static_cast<int32_t>(c));
            }
        }
        masks.push_back(std::make_shared<BlockMask>(block_mask_from_rows(n, o.block, rows)));
    }
    return mask_set_make(1, q.shape.heads, std::move(masks));
}

// [SECTION] DuoAttention

BlockMask streaming_mask(int64_t n, int32_t block, int64_t sink_blocks, int64_t window_blocks, bool causal) {
    if (window_blocks < 1 || sink_blocks < 0)
        throw Error("streaming mask: window " + std::to_string(window_blocks) + " blocks and sink " + std::to_string(sink_blocks) +
                    " blocks (the window must hold at least the diagonal block, the sink 0 or more)");
    const int64_t blocks = (n + block - 1) / block;
    std::vector<std::vector<int32_t>> rows(static_cast<size_t>(blocks));
    for (int64_t r = 0; r < blocks; ++r) {
        for (int64_t c = 0; c < std::min(sink_blocks, blocks); ++c) rows[r].push_back(static_cast<int32_t>(c));
        for (int64_t c = std::max<int64_t>(0, r - window_blocks + 1); c <= r; ++c) rows[r].push_back(static_cast<int32_t>(c));
    }
    const BlockMask mask = block_mask_from_rows(n, block, rows);
    return causal ? block_mask_restrict_causal(mask) : mask;
}

namespace {

double mask_density(const BlockMask& mask, bool causal) {
    const int64_t blocks = mask.q_blocks();
    const double all = causal ? static_cast<double>(causal_block_count(mask.n, mask.block)) : static_cast<double>(blocks * blocks);
    return static_cast<double>(mask.kept_blocks()) / all;
}

} // namespace

DuoBudget duo_budget(int64_t n, int32_t block, int64_t total_heads, double density, bool causal) {
    if (total_heads < 1) throw Error("duo: " + std::to_string(total_heads) + " heads (need at least 1)");
    const int64_t blocks = (n + block - 1) / block;
    const double budget = density * static_cast<double>(total_heads);
    const double least = mask_density(streaming_mask(n, block, 1, 1, causal), causal);
    DuoBudget b;
    b.retrieval = 0;
    for (int64_t R = total_heads; R >= 0; --R)
        if (static_cast<double>(R) + static_cast<double>(total_heads - R) * least <= budget + 1e-9) {
            b.retrieval = R;
            break;
        }
    const int64_t streaming = total_heads - b.retrieval;
    for (int64_t w = 1; w <= blocks; ++w) {
        const double d = mask_density(streaming_mask(n, block, 1, w, causal), causal);
        if (w > 1 && static_cast<double>(b.retrieval) + static_cast<double>(streaming) * d > budget + 1e-9) break;
        b.window_blocks = w;
        b.density = (static_cast<double>(b.retrieval) + static_cast<double>(streaming) * d) / static_cast<double>(total_heads);
    }
    return b;
}

MaskSet duo_masks(int64_t n, int32_t block, const std::vector<bool>& retrieval, const DuoBudget& budget, bool causal) {
    const int64_t blocks = (n + block - 1) / block;
    const auto dense = causal ? block_mask_causal(n, block) : [&] {
        std::vector<std::vector<int32_t>> rows(static_cast<size_t>(blocks));
        for (auto& row : rows)
            for (int64_t c = 0; c < blocks; ++c) row.push_back(static_cast<int32_t>(c));
        return std::shared_ptr<const BlockMask>(std::make_shared<BlockMask>(block_mask_from_rows(n, block, rows)));
    }();
    const auto stream = std::make_shared<BlockMask>(streaming_mask(n, block, budget.sink_blocks, budget.window_blocks, causal));
    std::vector<std::shared_ptr<const BlockMask>> masks;
    for (bool r : retrieval) masks.push_back(r ? dense : stream);
    return mask_set_make(1, static_cast<int64_t>(retrieval.size()), std::move(masks));
}

} // namespace sparsa::learn
