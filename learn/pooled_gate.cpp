// The trained pooled gate (SeerAttention-style): see pooled_gate.hpp.
//
// Index: [SECTION] the gate, [SECTION] examples and loss, [SECTION] training, [SECTION] masks and files
#include "learn/pooled_gate.hpp"

#include "engine/error.hpp"
#include "engine/threads.hpp"
#include "io/atomic_file.hpp"
#include "learn/distill.hpp"
#include "learn/early_stopped_adam.hpp"
#include "learn/pool.hpp"

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <memory>

namespace sparsa::learn {

namespace {

using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMapD = Eigen::Map<const MatrixD>;
using MapD = Eigen::Map<MatrixD>;

void check_example(const PooledGate& gate, int64_t layer, int64_t head, const PooledGateExample& e) {
    if (layer < 0 || layer >= gate.layers || head < 0 || head >= gate.heads || e.heads != gate.heads || e.head_dim != gate.head_dim)
        throw Error("pooled gate: (layer " + std::to_string(layer) + ", head " + std::to_string(head) + ") of an input with " +
                    std::to_string(e.heads) + " heads of width " + std::to_string(e.head_dim) + " does not fit a gate of " +
                    std::to_string(gate.layers) + " layers x " + std::to_string(gate.heads) + " heads of width " + std::to_string(gate.head_dim));
}

// The forward pass of one (layer, head): a = mean(Q) wq, b = mean(K) wk: [blocks, width];
// S = a b^T / sqrt(width): [blocks, blocks] (-inf above the diagonal when causal); P = softmax rows.
struct Forward {
    MatrixD a, b, s, p;
};
Forward forward(const PooledGate& gate, int64_t layer, int64_t head, const PooledGateExample& e) {
    check_example(gate, layer, head, e);
    const int64_t B = e.blocks, d = e.head_dim, w = gate.width;
    const double* params = gate.at(layer, head);
    const ConstMapD qm(e.q_mean.data() + head * B * d, B, d), km(e.k_mean.data() + head * B * d, B, d);
    const ConstMapD wq(params, d, w), wk(params + d * w, d, w);
    Forward f;
    f.a = qm * wq;
    f.b = km * wk;
    f.s = f.a * f.b.transpose() / std::sqrt(static_cast<double>(w));
    f.p.resize(B, B);
    for (int64_t r = 0; r < B; ++r) {
        const int64_t seen = gate.causal ? r + 1 : B;
        for (int64_t c = seen; c < B; ++c) f.s(r, c) = -INFINITY;
        const double top = f.s.row(r).head(seen).maxCoeff();
        double total = 0;
        for (int64_t c = 0; c < B; ++c) total += (f.p(r, c) = c < seen ? std::exp(f.s(r, c) - top) : 0.0);
        f.p.row(r) /= total;
    }
    return f;
}

} // namespace

// [SECTION] the gate

PooledGate pooled_gate_init(int64_t layers, int64_t heads, int64_t head_dim, int64_t width, int32_t block, bool causal, uint64_t seed) {
    if (layers < 1 || heads < 1 || head_dim < 1 || width < 1)
        throw Error("pooled gate: layers, heads, head_dim and width must each be at least 1 (got " + std::to_string(layers) + ", " +
                    std::to_string(heads) + ", " + std::to_string(head_dim) + ", " + std::to_string(width) + ")");
    if (!block_size_valid(block)) throw Error("pooled gate: block size " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
    PooledGate g;
    g.layers = layers;
    g.heads = heads;
    g.head_dim = head_dim;
    g.width = width;
    g.block = block;
    g.causal = causal;
    const Tensor noise = tensor_random({1, 1, 1, layers * heads * g.per_head()}, seed);
    const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
    g.params.resize(noise.data.size());
    for (size_t e = 0; e < g.params.size(); ++e) g.params[e] = scale * noise.data[e];
    return g;
}

// [SECTION] examples and loss

PooledGateExample pooled_gate_example(const Tensor& q, const Tensor& k, int32_t block, bool causal, bool with_target,
                                      bool max_target) {
    if (!(q.shape == k.shape) || q.shape.batch != 1)
        throw Error("pooled gate: q " + tensor_shape_text(q.shape) + " and k " + tensor_shape_text(k.shape) + " must both be [1, heads, n, d]");
    const int64_t H = q.shape.heads, n = q.shape.n, d = q.shape.d, B = (n + block - 1) / block;
    PooledGateExample e;
    e.heads = H;
    e.blocks = B;
    e.head_dim = d;
    e.q_mean.assign(static_cast<size_t>(H * B * d), 0.0);
    e.k_mean.assign(e.q_mean.size(), 0.0);
    for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < n; ++i) {
            const int64_t r = i / block, count = std::min<int64_t>(block, n - r * block);
            for (int64_t j = 0; j < d; ++j) {
                e.q_mean[(h * B + r) * d + j] += q.at(0, h, i, j) / static_cast<double>(count);
                e.k_mean[(h * B + r) * d + j] += k.at(0, h, i, j) / static_cast<double>(count);
            }
        }
    if (!with_target) return e;
    PooledAttention pooled = pooled_zeros(1, H, n, block);
    pooled_add_layer(pooled, 0, q, k, causal);
    pooled_finish(pooled, 1);
    e.target.assign(static_cast<size_t>(H * B * B), 0.0);
    for (int64_t h = 0; h < H; ++h)
        for (int64_t r = 0; r < B; ++r) {
            double total = 0;
            for (int64_t c = 0; c < B; ++c)
                total += (e.target[(h * B + r) * B + c] = max_target ? pooled.row_max[pooled.index(0, h, r, c)] : pooled.row_share(0, h, r, c));
            for (int64_t c = 0; c < B; ++c) e.target[(h * B + r) * B + c] /= total;
        }
    return e;
}

std::vector<double> pooled_gate_scores(const PooledGate& gate, int64_t layer, int64_t head, const PooledGateExample& example) {
    const Forward f = forward(gate, layer, head, example);
    return std::vector<double>(f.s.data(), f.s.data() + f.s.size());
}

double pooled_gate_loss(const PooledGate& gate, int64_t layer, int64_t head, const PooledGateExample& e, double* grad, double scale) {
    const Forward f = forward(gate, layer, head, e);
    const int64_t B = e.blocks, d = e.head_dim, w = gate.width;
    if (static_cast<int64_t>(e.target.size()) != e.heads * B * B) throw Error("pooled gate: this input was made without its target (with_target)");
    const ConstMapD t(e.target.data() + head * B * B, B, B);
    double loss = 0;
    for (int64_t r = 0; r < B; ++r)
        for (int64_t c = 0; c < B; ++c)
            if (t(r, c) > 0) loss += t(r, c) * (std::log(t(r, c)) - std::log(std::max(f.p(r, c), 1e-300)));
    loss /= static_cast<double>(B);
    if (!grad) return loss * scale;
    // dS = (P - T) / blocks (0 above the diagonal: P and T both 0 there); S = a b^T / sqrt(w):
    // dA = dS b / sqrt(w), dB = dS^T a / sqrt(w); dwq = mean(Q)^T dA, dwk = mean(K)^T dB.
    const double k = scale / (static_cast<double>(B) * std::sqrt(static_cast<double>(w)));
    const MatrixD ds = (f.p - MatrixD(t)) * k;
    const ConstMapD qm(e.q_mean.data() + head * B * d, B, d), km(e.k_mean.data() + head * B * d, B, d);
    MapD gq(grad, d, w), gk(grad + d * w, d, w);
    gq += qm.transpose() * (ds * f.b);
    gk += km.transpose() * (ds.transpose() * f.a);
    return loss * scale;
}

double pooled_gate_kl(const PooledGate& gate, const std::vector<std::vector<PooledGateExample>>& examples) {
    if (examples.empty()) throw Error("pooled gate: no inputs to measure the KL on");
    double total = 0;
    for (const auto& input : examples)
        for (int64_t l = 0; l < gate.layers; ++l)
            for (int64_t h = 0; h < gate.heads; ++h) total += pooled_gate_loss(gate, l, h, input.at(static_cast<size_t>(l)), nullptr);
    return total / static_cast<double>(static_cast<int64_t>(examples.size()) * gate.layers * gate.heads);
}

// [SECTION] training

PooledGateTrainReport pooled_gate_train(PooledGate& gate, const std::vector<std::vector<PooledGateExample>>& train,
                                        const std::vector<std::vector<PooledGateExample>>& validation, const PooledGateTrainOptions& o) {
    if (train.empty() || validation.empty()) throw Error("pooled gate: training needs training and validation inputs (got " +
                                                         std::to_string(train.size()) + " and " + std::to_string(validation.size()) + ")");
    for (const auto* set : {&train, &validation})
        for (const auto& input : *set)
            if (static_cast<int64_t>(input.size()) != gate.layers)
                throw Error("pooled gate: an input has " + std::to_string(input.size()) + " layers, the gate " + std::to_string(gate.layers));
    const int64_t heads_total = gate.layers * gate.heads, P = gate.per_head();
    std::vector<EarlyStoppedAdamReport> reports(static_cast<size_t>(heads_total));
    auto mean_loss = [&](const std::vector<std::vector<PooledGateExample>>& set, int64_t l, int64_t h, double* grad) {
        double loss = 0;
        for (const auto& input : set) loss += pooled_gate_loss(gate, l, h, input[l], grad, 1.0 / static_cast<double>(set.size()));
        return loss;
    };
    parallel_for(heads_total, 0, [&](int64_t begin, int64_t end) {
        for (int64_t lh = begin; lh < end; ++lh) {
            const int64_t l = lh / gate.heads, h = lh % gate.heads;
            reports[lh] = early_stopped_adam(
                gate.at(l, h), P, [&](double* grad) { return mean_loss(train, l, h, grad); },
                [&] { return mean_loss(validation, l, h, nullptr); }, {o.steps, o.lr, o.eval_every, o.patience});
        }
    });
    PooledGateTrainReport report;
    for (const EarlyStoppedAdamReport& r : reports) {
        const double share = 1.0 / static_cast<double>(heads_total);
        report.first_train += share * r.first_train;
        report.last_train += share * r.last_train;
        report.first_validation += share * r.first_validation;
        report.best_validation += share * r.best_validation;
        report.steps = std::max(report.steps, r.steps);
        report.best_step = std::max(report.best_step, r.best_step);
    }
    return report;
}

// [SECTION] masks and files

MaskSet pooled_gate_masks(const PooledGate& gate, int64_t layer, const Tensor& q, const Tensor& k, int64_t keep) {
    const PooledGateExample e = pooled_gate_example(q, k, gate.block, gate.causal, false);
    std::vector<std::shared_ptr<const BlockMask>> masks;
    for (int64_t h = 0; h < gate.heads; ++h)
        masks.push_back(std::make_shared<BlockMask>(
            block_mask_top_k(q.shape.n, gate.block, pooled_gate_scores(gate, layer, h, e), keep, true, gate.causal)));
    return mask_set_make(1, gate.heads, std::move(masks));
}

void pooled_gate_save(const PooledGate& gate, const std::string& path) {
    const nlohmann::json j = {{"format", "sparsa.pooled_gate"}, {"version", 1}, {"layers", gate.layers}, {"heads", gate.heads},
                              {"head_dim", gate.head_dim}, {"width", gate.width}, {"block", gate.block}, {"causal", gate.causal},
                              {"params", gate.params}};
    const std::string text = j.dump();
    AtomicFile file(path);
    file.write(text.data(), text.size());
    file.commit();
}

PooledGate pooled_gate_load(const std::string& path) {
    const std::vector<uint8_t> bytes = InputFile(path).read_all();
    PooledGate g;
    try {
        const auto j = nlohmann::json::parse(bytes.begin(), bytes.end());
        if (j.at("format") != "sparsa.pooled_gate") throw Error("not a sparsa pooled gate file");
        if (j.at("version").get<int64_t>() > 1)
            throw Error("pooled gate version " + j.at("version").dump() + " is newer than this sparsa reads: update sparsa");
        g.layers = j.at("layers");
        g.heads = j.at("heads");
        g.head_dim = j.at("head_dim");
        g.width = j.at("width");
        g.block = j.at("block");
        g.causal = j.at("causal");
        g.params = j.at("params").get<std::vector<double>>();
    } catch (const nlohmann::json::exception& e) {
        throw Error(path + ": not a valid pooled gate file (" + e.what() + "): write one with 'sparsa learn ruler'");
    } catch (const Error& e) {
        throw Error(path + ": " + e.what());
    }
    if (g.layers < 1 || g.heads < 1 || g.head_dim < 1 || g.width < 1 || !block_size_valid(g.block) ||
        static_cast<int64_t>(g.params.size()) != g.layers * g.heads * g.per_head())
        throw Error(path + ": the pooled gate's sizes and its " + std::to_string(g.params.size()) + " parameters disagree: the file is corrupt");
    return g;
}

} // namespace sparsa::learn
