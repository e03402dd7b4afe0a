// The lightning indexer (DeepSeek-style): see indexer.hpp.
//
// Index: [SECTION] shared, [SECTION] the indexer, [SECTION] examples and loss, [SECTION] training and masks
#include "learn/indexer.hpp"

#include "engine/error.hpp"
#include "engine/threads.hpp"
#include "learn/distill.hpp"
#include "learn/early_stopped_adam.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>

namespace sparsa::learn {

namespace {

// [SECTION] shared

using MatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMapD = Eigen::Map<const MatrixD>;
using MapD = Eigen::Map<MatrixD>;

void check_qk(const Indexer& ix, int64_t layer, const Tensor& q, const Tensor& k) {
    if (layer < 0 || layer >= ix.layers || !(q.shape == k.shape) || q.shape.batch != 1 || q.shape.heads != ix.heads || q.shape.d != ix.head_dim)
        throw Error("indexer: layer " + std::to_string(layer) + ", q " + tensor_shape_text(q.shape) + ", k " + tensor_shape_text(k.shape) +
                    " do not fit an indexer of " + std::to_string(ix.layers) + " layers reading " + std::to_string(ix.heads) +
                    " heads of width " + std::to_string(ix.head_dim));
}

// The heads of one position side by side: [n, heads * head_dim].
template <typename Matrix> Matrix concat_heads(const Tensor& x) {
    const int64_t H = x.shape.heads, n = x.shape.n, d = x.shape.d;
    Matrix m(n, H * d);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t e = 0; e < d; ++e) m(i, h * d + e) = x.at(0, h, i, e);
    return m;
}

} // namespace

// [SECTION] the indexer

Indexer indexer_init(int64_t layers, int64_t heads, int64_t head_dim, int64_t index_heads, int64_t width, int32_t block, bool causal,
                     uint64_t seed) {
    if (layers < 1 || heads < 1 || head_dim < 1 || index_heads < 1 || width < 1)
        throw Error("indexer: layers, heads, head_dim, index heads and width must each be at least 1");
    if (!block_size_valid(block)) throw Error("indexer: block size " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
    Indexer ix;
    ix.layers = layers;
    ix.heads = heads;
    ix.head_dim = head_dim;
    ix.index_heads = index_heads;
    ix.width = width;
    ix.block = block;
    ix.causal = causal;
    const Tensor noise = tensor_random({1, 1, 1, layers * ix.per_layer()}, seed);
    const double scale = 0.1 / std::sqrt(static_cast<double>(ix.in()));   // small: index scores start near 0, the softmax near uniform
    ix.params.resize(noise.data.size());
    for (size_t e = 0; e < ix.params.size(); ++e) ix.params[e] = scale * noise.data[e];
    return ix;
}

std::vector<double> indexer_scores(const Indexer& ix, int64_t layer, const Tensor& q, const Tensor& k) {
    check_qk(ix, layer, q, k);
    const int64_t n = q.shape.n, in = ix.in(), J = ix.index_heads, w = ix.width;
    const ConstMapD wq(ix.at(layer), J * w, in), wk(ix.at(layer) + J * w * in, w, in), ww(ix.at(layer) + (J + 1) * w * in, J, in);
    const MatrixD x = concat_heads<MatrixD>(q), y = concat_heads<MatrixD>(k);
    const MatrixD a = x * wq.transpose(), b = y * wk.transpose(), weights = x * ww.transpose();   // [n, J w], [n, w], [n, J]
    MatrixD s = MatrixD::Zero(n, n);
    for (int64_t j = 0; j < J; ++j)   // I = sum_j w_j * ReLU(A_j B^T)
        s += weights.col(j).asDiagonal() * (a.middleCols(j * w, w) * b.transpose()).cwiseMax(0.0);
    if (ix.causal)
        for (int64_t t = 0; t < n; ++t) s.row(t).tail(n - t - 1).setConstant(-INFINITY);
    return std::vector<double>(s.data(), s.data() + s.size());
}

// [SECTION] examples and loss

IndexerExample indexer_example(const Tensor& q, const Tensor& k, int32_t block, bool causal, int64_t rows, uint64_t seed) {
    if (!(q.shape == k.shape) || q.shape.batch != 1)
        throw Error("indexer: q " + tensor_shape_text(q.shape) + " and k " + tensor_shape_text(k.shape) + " must both be [1, heads, n, d]");
    const int64_t n = q.shape.n, H = q.shape.heads, d = q.shape.d;
    IndexerExample e;
    e.n = n;
    e.in = H * d;
    const MatrixD x = concat_heads<MatrixD>(q), y = concat_heads<MatrixD>(k);
    e.x.assign(x.data(), x.data() + x.size());
    e.y.assign(y.data(), y.data() + y.size());
    e.rows.resize(static_cast<size_t>(n));
    std::iota(e.rows.begin(), e.rows.end(), 0);
    if (rows < n) {
        std::mt19937_64 rng(seed);
        std::shuffle(e.rows.begin(), e.rows.end(), rng);
        e.rows.resize(static_cast<size_t>(rows));
        std::sort(e.rows.begin(), e.rows.end());
    }
    const int64_t R = static_cast<int64_t>(e.rows.size());
    e.target.assign(static_cast<size_t>(R * n), 0.0);
    e.weight.assign(static_cast<size_t>(R), 0.0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    std::vector<double> s(static_cast<size_t>(n));
    for (int64_t r = 0; r < R; ++r) {
        const int64_t t = e.rows[r], seen = causal ? t + 1 : n;
        double* target = e.target.data() + r * n;
        for (int64_t h = 0; h < H; ++h) {   // the attention summed over heads, / heads
            double top = -INFINITY;
            for (int64_t j = 0; j < seen; ++j) {
                double dot = 0;
                for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(q.at(0, h, t, c)) * k.at(0, h, j, c);
                top = std::max(top, s[j] = dot * scale);
            }
            double total = 0;
            for (int64_t j = 0; j < seen; ++j) total += (s[j] = std::exp(s[j] - top));
            for (int64_t j = 0; j < seen; ++j) target[j] += s[j] / total / static_cast<double>(H);
        }
        double own = 0;
        for (int64_t j = t / block * block; j < std::min<int64_t>(n, (t / block + 1) * block); ++j) own += target[j];
        e.weight[r] = std::max(1e-3, 1 - own);
    }
    return e;
}

double indexer_loss(const Indexer& ix, int64_t layer, const IndexerExample& e, double* grad, double scale) {
    const int64_t n = e.n, in = ix.in(), J = ix.index_heads, w = ix.width, R = static_cast<int64_t>(e.rows.size());
    if (e.in != in || layer < 0 || layer >= ix.layers)
        throw Error("indexer: an example of width " + std::to_string(e.in) + " (layer " + std::to_string(layer) + ") does not fit an indexer reading " +
                    std::to_string(in) + " of " + std::to_string(ix.layers) + " layers");
    const ConstMapD wq(ix.at(layer), J * w, in), wk(ix.at(layer) + J * w * in, w, in), ww(ix.at(layer) + (J + 1) * w * in, J, in);
    const ConstMapD x(e.x.data(), n, in), y(e.y.data(), n, in), target(e.target.data(), R, n);
    MatrixD xr(R, in);   // the rows trained on
    for (int64_t r = 0; r < R; ++r) xr.row(r) = x.row(e.rows[r]);
    const MatrixD a = xr * wq.transpose(), b = y * wk.transpose(), weights = xr * ww.transpose();   // [R, J w], [n, w], [R, J]
    std::vector<MatrixD> u(static_cast<size_t>(J));   // U_j = A_j B^T: [R, n]
    MatrixD s = MatrixD::Zero(R, n);
    for (int64_t j = 0; j < J; ++j) {
        u[j] = a.middleCols(j * w, w) * b.transpose();
        s += weights.col(j).asDiagonal() * u[j].cwiseMax(0.0);
    }
    // P = softmax of each row over the keys it may see; loss = sum_r v_r KL(T_r || P_r) / sum v.
    const double weight_total = std::accumulate(e.weight.begin(), e.weight.end(), 0.0);
    MatrixD p = MatrixD::Zero(R, n);
    double loss = 0;
    for (int64_t r = 0; r < R; ++r) {
        const int64_t seen = ix.causal ? e.rows[r] + 1 : n;
        const double top = s.row(r).head(seen).maxCoeff();
        p.row(r).head(seen) = (s.row(r).head(seen).array() - top).exp().matrix();
        p.row(r) /= p.row(r).sum();
        for (int64_t j = 0; j < seen; ++j)
            if (target(r, j) > 0) loss += e.weight[r] / weight_total * target(r, j) * (std::log(target(r, j)) - std::log(std::max(p(r, j), 1e-300)));
    }
    if (!grad) return loss * scale;
    MatrixD ds = p - MatrixD(target);   // dS_r = v_r (P_r - T_r) / sum v
    for (int64_t r = 0; r < R; ++r) ds.row(r) *= e.weight[r] / weight_total * scale;
    MapD gq(grad, J * w, in), gk(grad + J * w * in, w, in), gw(grad + (J + 1) * w * in, J, in);
    MatrixD db = MatrixD::Zero(n, w), dweights(R, J);
    for (int64_t j = 0; j < J; ++j) {
        // S = sum_j diag(w_j) ReLU(U_j): dw_j = rowsum(dS .* ReLU(U_j)), dU_j = diag(w_j) dS .* [U_j > 0].
        dweights.col(j) = ds.cwiseProduct(u[j].cwiseMax(0.0)).rowwise().sum();
        const MatrixD du = (weights.col(j).asDiagonal() * ds).cwiseProduct((u[j].array() > 0.0).cast<double>().matrix());
        gq.middleRows(j * w, w) += (du * b).transpose() * xr;        // dA_j = dU_j B; dWq_j = dA_j^T X_rows
        db += du.transpose() * a.middleCols(j * w, w);                // dB += dU_j^T A_j
    }
    gk += db.transpose() * y;
    gw += dweights.transpose() * xr;
    return loss * scale;
}

// [SECTION] training and masks

IndexerTrainReport indexer_train(Indexer& ix, const std::vector<std::vector<IndexerExample>>& train,
                                 const std::vector<std::vector<IndexerExample>>& validation, const IndexerTrainOptions& o) {
    if (train.empty() || validation.empty()) throw Error("indexer: training needs training and validation inputs");
    const int64_t P = ix.per_layer();
    std::vector<EarlyStoppedAdamReport> reports(static_cast<size_t>(ix.layers));
    auto mean_loss = [&](const std::vector<std::vector<IndexerExample>>& set, int64_t l, double* grad) {
        double loss = 0;
        for (const auto& input : set) loss += indexer_loss(ix, l, input.at(static_cast<size_t>(l)), grad, 1.0 / static_cast<double>(set.size()));
        return loss;
    };
    parallel_for(ix.layers, 0, [&](int64_t begin, int64_t end) {
        for (int64_t l = begin; l < end; ++l) {
            reports[l] = early_stopped_adam(
                ix.at(l), P, [&](double* grad) { return mean_loss(train, l, grad); }, [&] { return mean_loss(validation, l, nullptr); },
                {o.steps, o.lr, o.eval_every, o.patience});
        }
    });
    IndexerTrainReport total;
    for (const EarlyStoppedAdamReport& r : reports) {
        const double share = 1.0 / static_cast<double>(ix.layers);
        total.first_train += share * r.first_train;
        total.last_train += share * r.last_train;
        total.first_validation += share * r.first_validation;
        total.best_validation += share * r.best_validation;
        total.steps = std::max(total.steps, r.steps);
    }
    return total;
}

MaskSet indexer_masks(const Indexer& ix, int64_t layer, const Tensor& q, const Tensor& k, int64_t keep) {
    check_qk(ix, layer, q, k);
    const int64_t n = q.shape.n, in = ix.in(), J = ix.index_heads, w = ix.width, B = ix.block, blocks = (n + B - 1) / B;
    // Float copies of the maps, then per query block the scores of its rows against the keys it may see.
    const MatrixF wq = ConstMapD(ix.at(layer), J * w, in).cast<float>(), wk = ConstMapD(ix.at(layer) + J * w * in, w, in).cast<float>(),
                  ww = ConstMapD(ix.at(layer) + (J + 1) * w * in, J, in).cast<float>();
    const MatrixF x = concat_heads<MatrixF>(q), y = concat_heads<MatrixF>(k);
    const MatrixF a = x * wq.transpose(), b = y * wk.transpose(), weights = x * ww.transpose();
    std::vector<double> score(static_cast<size_t>(blocks * blocks), 0.0);
    Eigen::ArrayXf e(n);
    for (int64_t r = 0; r < blocks; ++r) {
        const int64_t begin = r * B, count = std::min<int64_t>(B, n - begin), keys = ix.causal ? std::min(n, begin + count) : n;
        MatrixF s = MatrixF::Zero(count, keys);   // I = sum_j w_j ReLU(A_j B^T) for this block's rows
        for (int64_t j = 0; j < J; ++j)
            s += weights.col(j).segment(begin, count).asDiagonal() * (a.block(begin, j * w, count, w) * b.topRows(keys).transpose()).cwiseMax(0.0f);
        // Each row's softmax over the keys it may see (what the indexer is trained to match), its
        // mass per key block; a block row's score is the largest mass among its rows.
        for (int64_t t = 0; t < count; ++t) {
            const int64_t seen = ix.causal ? begin + t + 1 : n;
            const auto row = s.row(t).head(seen).array();
            e.head(seen) = (row - row.maxCoeff()).exp();
            const float total = e.head(seen).sum();
            for (int64_t c = 0; c * B < seen; ++c)
                score[r * blocks + c] = std::max<double>(score[r * blocks + c], e.segment(c * B, std::min<int64_t>(B, seen - c * B)).sum() / total);
        }
    }
    const auto mask = std::make_shared<BlockMask>(block_mask_top_k(n, ix.block, score, keep, true, ix.causal));
    return mask_set_make(1, ix.heads, std::vector<std::shared_ptr<const BlockMask>>(static_cast<size_t>(ix.heads), mask));
}

} // namespace sparsa::learn
