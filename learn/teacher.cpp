// The dense teacher: forward, hand-written backward, Adam training, checkpoints. See teacher.hpp.
//
// Index: [SECTION] parameters, [SECTION] one sequence forward and backward, [SECTION] batches,
//        [SECTION] training, [SECTION] checkpoints
#include "learn/teacher.hpp"

#include "io/atomic_file.hpp"
#include "engine/cpu_attention.hpp"
#include "learn/causal_mask.hpp"
#include "engine/error.hpp"
#include "engine/threads.hpp"

#include <Eigen/Dense>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace sparsa::learn {

namespace {

using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const Mat>;
using MMap = Eigen::Map<Mat>;

constexpr int64_t kPerLayer = 12;   // parameter tensors per layer
enum LayerSlot { ln1_g, ln1_b, wq, wk, wv, wo, ln2_g, ln2_b, w1, b1, w2, b2 };
constexpr double kLayerNormEps = 1e-5;

} // namespace

// [SECTION] parameters

void teacher_config_check(const TeacherConfig& c) {
    auto fail = [](const std::string& what) { throw Error("teacher: " + what); };
    if (c.vocab < 2) fail("vocab = " + std::to_string(c.vocab) + " must be at least 2");
    if (c.d < 2 || c.d > 1024) fail("d = " + std::to_string(c.d) + " is out of range (2 to 1024)");
    if (c.heads < 1 || c.heads > 256) fail("heads = " + std::to_string(c.heads) + " is out of range (1 to 256)");
    if (c.head_width < 0 || c.head_width > 256) fail("head_width = " + std::to_string(c.head_width) + " is out of range (1 to 256; 0: d / heads)");
    if (c.head_width == 0 && c.d % c.heads != 0)
        fail("heads = " + std::to_string(c.heads) + " must divide d = " + std::to_string(c.d) + " (or give the head width)");
    if (c.head_dim() > 256) fail("head width d / heads = " + std::to_string(c.head_dim()) + " is above the engine's 256");
    if (c.kv_heads < 0 || (c.kv_heads > 0 && c.heads % c.kv_heads != 0))
        fail("kv_heads = " + std::to_string(c.kv_heads) + " must divide heads = " + std::to_string(c.heads) + " (0: as many as heads)");
    if (c.positions == Positions::rotary && c.head_dim() % 2 != 0)
        fail("rotary positions turn pairs of dimensions: the head width " + std::to_string(c.head_dim()) + " must be even");
    if (c.layers < 1 || c.layers > 64) fail("layers = " + std::to_string(c.layers) + " is out of range (1 to 64)");
    if (c.mlp < 1 || c.mlp > 8192) fail("mlp = " + std::to_string(c.mlp) + " is out of range (1 to 8192)");
}

std::vector<ParamSlot> teacher_param_slots(const TeacherConfig& c) {
    std::vector<ParamSlot> slots;
    int64_t offset = 0;
    auto add = [&](std::string name, int64_t rows, int64_t cols) {
        slots.push_back({std::move(name), offset, rows, cols});
        offset += rows * cols;
    };
    add("tok_emb", c.vocab, c.d);
    add("prev_emb", c.vocab, c.d);   // the previous token's embedding (a token shift)
    for (int64_t l = 0; l < c.layers; ++l) {
        const std::string p = "layer" + std::to_string(l) + ".";
        add(p + "ln1_g", 1, c.d);
        add(p + "ln1_b", 1, c.d);
        add(p + "wq", c.d, c.q_width());
        add(p + "wk", c.d, c.kv_width());
        add(p + "wv", c.d, c.kv_width());
        add(p + "wo", c.q_width(), c.d);
        add(p + "ln2_g", 1, c.d);
        add(p + "ln2_b", 1, c.d);
        add(p + "w1", c.d, c.mlp);
        add(p + "b1", 1, c.mlp);
        add(p + "w2", c.mlp, c.d);
        add(p + "b2", 1, c.d);
    }
    add("lnf_g", 1, c.d);
    add("lnf_b", 1, c.d);
    add("w_out", c.d, c.vocab);
    add("b_out", 1, c.vocab);
    return slots;
}

int64_t teacher_param_count(const TeacherConfig& config) {
    const auto slots = teacher_param_slots(config);
    return slots.back().offset + slots.back().size();
}

std::string positions_name(Positions positions) {
    return positions == Positions::rotary ? "rotary" : positions == Positions::none ? "none" : "sinusoidal";
}

Positions positions_parse(const std::string& text) {
    for (Positions p : {Positions::rotary, Positions::none, Positions::sinusoidal})
        if (text == positions_name(p)) return p;
    throw Error("unknown positions '" + text + "' (use rotary, none or sinusoidal)");
}

TeacherConfig teacher_config_default(const TaskConfig& task) {
    TeacherConfig c;
    c.vocab = task.vocab();
    c.d = 128;
    c.heads = 2;
    c.head_width = 0;   // d / heads = 64
    c.kv_heads = 0;
    c.layers = 2;
    c.mlp = 256;
    c.causal = true;
    c.positions = Positions::none;   // measured: keeps its accuracy at 16x the length it was trained at
    return c;
}

Teacher teacher_init(const TeacherConfig& config, const TaskConfig& task, uint64_t seed) {
    teacher_config_check(config);
    task_config_check(task);
    if (config.vocab != task.vocab())
        throw Error("teacher: vocab = " + std::to_string(config.vocab) + " but the task has " + std::to_string(task.vocab()) + " tokens");
    Teacher t;
    t.config = config;
    t.task = task;
    const auto slots = teacher_param_slots(config);
    t.params.assign(static_cast<size_t>(teacher_param_count(config)), 0.0);
    const Tensor noise = tensor_random({1, 1, 1, static_cast<int64_t>(t.params.size())}, seed);
    const double width = 1.0 / std::sqrt(static_cast<double>(config.d));
    const double residual = width / std::sqrt(2.0 * static_cast<double>(config.layers));
    // wo reads the heads' concatenation: 1 / sqrt(heads * head width) (the same as above when that is d).
    const double out_residual = 1.0 / std::sqrt(static_cast<double>(config.q_width()) * 2.0 * static_cast<double>(config.layers));
    for (const ParamSlot& s : slots) {
        const std::string tail = s.name.substr(s.name.find('.') == std::string::npos ? 0 : s.name.find('.') + 1);
        double scale = 0;
        if (tail == "tok_emb" || tail == "prev_emb") scale = 1.0;
        else if (tail == "wq" || tail == "wk" || tail == "wv" || tail == "w1" || tail == "w_out") scale = width;
        else if (tail == "wo") scale = out_residual;
        else if (tail == "w2") scale = residual * std::sqrt(static_cast<double>(config.d) / static_cast<double>(config.mlp));
        const bool gain = tail == "ln1_g" || tail == "ln2_g" || tail == "lnf_g";
        for (int64_t e = 0; e < s.size(); ++e)
            t.params[s.offset + e] = gain ? 1.0 : scale * noise.data[s.offset + e];
        if (tail == "wq" || tail == "wk")
            for (int64_t i = 0; i < std::min(s.rows, s.cols); ++i) t.params[s.offset + i * s.cols + i] += config.qk_identity;
    }
    return t;
}

MaskSet mask_set_dense(int64_t n, int32_t block, int64_t layers, int64_t heads) {
    if (!block_size_valid(block)) throw Error("block size " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
    auto mask = std::make_shared<BlockMask>();
    mask->n = n;
    mask->block = block;
    const int64_t nb = mask->q_blocks();
    mask->row_ptr.resize(static_cast<size_t>(nb + 1));
    for (int64_t r = 0; r <= nb; ++r) mask->row_ptr[r] = r * nb;
    for (int64_t r = 0; r < nb; ++r)
        for (int64_t c = 0; c < nb; ++c) mask->col_idx.push_back(static_cast<int32_t>(c));
    mask->partial_idx.assign(mask->col_idx.size(), -1);
    std::vector<std::shared_ptr<const BlockMask>> all(static_cast<size_t>(layers * heads), mask);
    return mask_set_make(layers, heads, std::move(all));
}

// [SECTION] one sequence forward and backward

namespace {

// The sinusoidal position table: [n, d], pe[i, 2j] = sin(i / 10000^(2j/d)), pe[i, 2j+1] = cos.
Mat positions_sinusoidal(int64_t n, int64_t d) {
    Mat pe(n, d);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < d; ++j) {
            const double freq = std::pow(10000.0, -static_cast<double>(j - j % 2) / static_cast<double>(d));
            pe(i, j) = j % 2 == 0 ? std::sin(static_cast<double>(i) * freq) : std::cos(static_cast<double>(i) * freq);
        }
    return pe;
}

// The rotary turn's angles: [n, hd / 2], angle(i, j) = i * 10000^(-2j / hd).
struct Rotary {
    Mat cos, sin;
};
Rotary rotary_table(int64_t n, int64_t hd) {
    Rotary r{Mat(n, hd / 2), Mat(n, hd / 2)};
    for (int64_t j = 0; j < hd / 2; ++j) {
        const double freq = std::pow(10000.0, -2.0 * static_cast<double>(j) / static_cast<double>(hd));
        for (int64_t i = 0; i < n; ++i) {
            r.cos(i, j) = std::cos(static_cast<double>(i) * freq);
            r.sin(i, j) = std::sin(static_cast<double>(i) * freq);
        }
    }
    return r;
}

// Turns every head of x ([n, heads * hd]) in place: (a, b) of pair j of row i becomes
// (a cos - b sin, a sin + b cos); inverse (the transpose, for gradients): (a cos + b sin, -a sin + b cos).
void rotary_apply(Mat& x, const Rotary& r, int64_t hd, bool inverse) {
    const int64_t n = x.rows(), heads = x.cols() / hd, half = hd / 2;
    const double sign = inverse ? -1.0 : 1.0;
    for (int64_t i = 0; i < n; ++i)
        for (int64_t h = 0; h < heads; ++h)
            for (int64_t j = 0; j < half; ++j) {
                double& a = x(i, h * hd + 2 * j);
                double& b = x(i, h * hd + 2 * j + 1);
                const double c = r.cos(i, j), sn = sign * r.sin(i, j);
                const double a2 = a * c - b * sn, b2 = a * sn + b * c;
                a = a2;
                b = b2;
            }
}

// Grouped-query heads: [n, kv * hd] -> [n, heads * hd], query head h reading kv head h / (heads / kv);
// and back, summing each group (the gradient of the repeat).
Mat kv_repeat(const Mat& x, int64_t heads, int64_t hd) {
    const int64_t kv = x.cols() / hd;
    if (kv == heads) return x;
    Mat out(x.rows(), heads * hd);
    for (int64_t h = 0; h < heads; ++h) out.middleCols(h * hd, hd) = x.middleCols(h / (heads / kv) * hd, hd);
    return out;
}
Mat kv_sum(const Mat& x, int64_t kv, int64_t hd) {
    const int64_t heads = x.cols() / hd;
    if (kv == heads) return x;
    Mat out = Mat::Zero(x.rows(), kv * hd);
    for (int64_t h = 0; h < heads; ++h) out.middleCols(h / (heads / kv) * hd, hd) += x.middleCols(h * hd, hd);
    return out;
}

struct LayerNormCache {
    Mat xhat;                 // [n, d]
    Eigen::VectorXd rstd;     // [n]
};

// y = xhat * g + b, xhat = (x - mean) / sqrt(var + eps), per row. x: [n, d]; g, b: [d].
Mat layer_norm_forward(const Mat& x, const double* g, const double* b, LayerNormCache& cache) {
    const int64_t n = x.rows(), d = x.cols();
    cache.xhat.resize(n, d);
    cache.rstd.resize(n);
    Mat y(n, d);
    for (int64_t i = 0; i < n; ++i) {
        const double mean = x.row(i).mean();
        const double var = (x.row(i).array() - mean).square().mean();
        cache.rstd[i] = 1.0 / std::sqrt(var + kLayerNormEps);
        for (int64_t j = 0; j < d; ++j) {
            cache.xhat(i, j) = (x(i, j) - mean) * cache.rstd[i];
            y(i, j) = cache.xhat(i, j) * g[j] + b[j];
        }
    }
    return y;
}

// dx from dy; adds to dg, db. dy: [n, d].
Mat layer_norm_backward(const Mat& dy, const double* g, const LayerNormCache& cache, double* dg, double* db) {
    const int64_t n = dy.rows(), d = dy.cols();
    Mat dx(n, d);
    Eigen::VectorXd dxhat(d);
    for (int64_t i = 0; i < n; ++i) {
        double mean_dxhat = 0, mean_dxhat_xhat = 0;
        for (int64_t j = 0; j < d; ++j) {
            if (dg) dg[j] += dy(i, j) * cache.xhat(i, j);
            if (db) db[j] += dy(i, j);
            dxhat[j] = dy(i, j) * g[j];
            mean_dxhat += dxhat[j];
            mean_dxhat_xhat += dxhat[j] * cache.xhat(i, j);
        }
        mean_dxhat /= static_cast<double>(d);
        mean_dxhat_xhat /= static_cast<double>(d);
        for (int64_t j = 0; j < d; ++j)
            dx(i, j) = cache.rstd[i] * (dxhat[j] - mean_dxhat - cache.xhat(i, j) * mean_dxhat_xhat);
    }
    return dx;
}

constexpr double kGeluC = 0.7978845608028654;   // sqrt(2 / pi)

double gelu(double u) { return 0.5 * u * (1.0 + std::tanh(kGeluC * (u + 0.044715 * u * u * u))); }
double gelu_grad(double u) {
    const double t = std::tanh(kGeluC * (u + 0.044715 * u * u * u));
    return 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * kGeluC * (1.0 + 3.0 * 0.044715 * u * u);
}

// [n, d] -> [1, heads, n, d / heads] floats, and back.
Tensor heads_split(const Mat& x, int64_t heads) {
    const int64_t n = x.rows(), dh = x.cols() / heads;
    Tensor t = tensor_zeros<float>({1, heads, n, dh});
    for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < dh; ++j) t.at(0, h, i, j) = static_cast<float>(x(i, h * dh + j));
    return t;
}
Mat heads_merge(const Tensor& t) {
    const int64_t heads = t.shape.heads, n = t.shape.n, dh = t.shape.d;
    Mat x(n, heads * dh);
    for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < dh; ++j) x(i, h * dh + j) = t.at(0, h, i, j);
    return x;
}

struct LayerCache {
    Mat x_in, h1, a, h2, u, g;
    LayerNormCache ln1, ln2;
    Tensor q, k, v, o, lse;
    MaskSet chosen;            // the chooser's masks, when there is one
    const MaskSet* masks = nullptr;
    int64_t mask_layer = 0;
    Mat dq_sharp, dk_sharp;    // [n, d]: the sharpness term's gradient by q and k, when it is on
};

// The attention-shaping terms of one layer (dense, in double, from the engine's q and k). For
// each head, S = scale * q k^T ([n, n]) and P its row softmax:
// - sharpness: H_i = -sum_j P_ij log P_ij, with dH_i/dS_ij = -P_ij (log P_ij + H_i);
// - own block: O_i = -log sum_{j in i's block} P_ij (B = block), with
//   dO_i/dS_ij = P_ij - [j in i's block] P_ij / sum_{j' in i's block} P_ij', for the rows no answer
//   is asked at (targets[i] < 0): an answer row must be free to look far, at its key.
// Adds sum_i,h H_i to *entropy and sum_i,h O_i to *own_block. When dq, dk are given ([n, d]), adds
// the gradient of sharp_coef * sum H + own_coef * sum O: dq = scale * dS k, dk = scale * dS^T q.
// Causal: row i sees keys 0..i only (its own block is cut there too).
void attention_terms(const Tensor& q, const Tensor& k, const int32_t* targets, int64_t block, bool causal, double sharp_coef,
                     double own_coef, double* entropy, double* own_block, Mat* dq, Mat* dk) {
    const int64_t heads = q.shape.heads, n = q.shape.n, dh = q.shape.d;
    const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
    for (int64_t h = 0; h < heads; ++h) {
        Mat qh(n, dh), kh(n, dh);
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < dh; ++j) {
                qh(i, j) = q.at(0, h, i, j);
                kh(i, j) = k.at(0, h, i, j);
            }
        Mat logp = scale * qh * kh.transpose();   // [n, n]: scores, then log P
        Mat ds = Mat::Zero(n, n);
        for (int64_t i = 0; i < n; ++i) {
            const int64_t keys = causal ? i + 1 : n;   // row i's keys: 0 .. keys - 1
            auto row = logp.row(i).head(keys);
            const double top = row.maxCoeff();
            const double lse = top + std::log((row.array() - top).exp().sum());
            row.array() -= lse;
            const Eigen::ArrayXd p = row.array().exp();
            const double h_i = -(p * row.transpose().array()).sum();
            *entropy += h_i;
            const bool free_row = targets[i] < 0;
            const int64_t first = i / block * block, count = std::min(block, keys - first);
            double log_own = 0;   // log of the own block's mass, from the log probabilities (no underflow)
            if (free_row) {
                const double own_top = logp.row(i).segment(first, count).maxCoeff();
                log_own = own_top + std::log((logp.row(i).segment(first, count).array() - own_top).exp().sum());
                *own_block += -log_own;
            }
            if (!dq) continue;
            Eigen::ArrayXd g = -sharp_coef * p * (row.transpose().array() + h_i);
            if (free_row) {
                g += own_coef * p;
                g.segment(first, count) -= own_coef * (logp.row(i).segment(first, count).transpose().array() - log_own).exp();
            }
            ds.row(i).head(keys) = g.transpose();
        }
        if (!dq) continue;
        dq->middleCols(h * dh, dh) += scale * ds * kh;
        dk->middleCols(h * dh, dh) += scale * ds.transpose() * qh;
    }
}

struct SequencePass {
    const Teacher& teacher;
    const std::vector<ParamSlot>& slots;
    const Mat& pe;             // [n, d] sinusoidal positions (empty unless the config has them)
    const Rotary& rotary;      // the rotary table (empty unless the config has it)
    const TeacherRunOptions& options;
    const MaskSet& fixed;      // the dense or given masks
    double sharp_coef = 0;     // d objective / d (one row's entropy), when the sharpness term is on
    double own_coef = 0;       // d objective / d (one row's own-block term), when that term is on

    bool shaping() const { return options.sharpness > 0 || options.own_block > 0; }
    const double* p(int64_t slot) const { return teacher.params.data() + slots[slot].offset; }
    CMap m(int64_t slot) const { return CMap(p(slot), slots[slot].rows, slots[slot].cols); }
    int64_t layer_slot(int64_t l, int s) const { return 2 + l * kPerLayer + s; }

    // Forward (and backward when grads != nullptr) of one sequence; loss terms scaled by
    // loss_scale in the gradients. tokens, targets: [n].
    void run(const int32_t* tokens, const int32_t* targets, double loss_scale, double* grads, TeacherResult& result,
             int64_t batch_index) const {
        const TeacherConfig& c = teacher.config;
        const int64_t n = teacher.task.n, d = c.d, L = c.layers, hd = c.head_dim();
        AttentionOptions attention;
        attention.threads = 1;
        Mat x(n, d);
        for (int64_t i = 0; i < n; ++i) {
            x.row(i) = m(0).row(tokens[i]);
            if (c.positions == Positions::sinusoidal) x.row(i) += pe.row(i);
            if (i > 0) x.row(i) += m(1).row(tokens[i - 1]);
        }
        std::vector<LayerCache> cache(static_cast<size_t>(L));
        for (int64_t l = 0; l < L; ++l) {
            LayerCache& lc = cache[l];
            lc.x_in = x;
            lc.h1 = layer_norm_forward(x, p(layer_slot(l, ln1_g)), p(layer_slot(l, ln1_b)), lc.ln1);
            // q: [n, heads * hd]; k, v: [n, kv_heads * hd], turned (q, k) and repeated per query head.
            Mat qm = lc.h1 * m(layer_slot(l, wq)), km = lc.h1 * m(layer_slot(l, wk));
            if (c.positions == Positions::rotary) {
                rotary_apply(qm, rotary, hd, false);
                rotary_apply(km, rotary, hd, false);
            }
            lc.q = heads_split(qm, c.heads);
            lc.k = heads_split(kv_repeat(km, c.heads, hd), c.heads);
            lc.v = heads_split(kv_repeat(lc.h1 * m(layer_slot(l, wv)), c.heads, hd), c.heads);
            if (options.chooser) {
                lc.chosen = options.chooser(l, lc.q, lc.k);
                if (c.causal) lc.chosen = mask_set_restrict_causal(lc.chosen);
                lc.masks = &lc.chosen;
                lc.mask_layer = 0;
            } else {
                lc.masks = &fixed;
                lc.mask_layer = fixed.layers == 1 ? 0 : l;
            }
            if (options.attention) {   // an estimate of the dense attention (no lse: evaluation only)
                lc.o = options.attention(l, lc.q, lc.k, lc.v);
                if (lc.o.shape != lc.q.shape)
                    throw Error("teacher: the attention replacement gave O of another shape than q (layer " + std::to_string(l) + ")");
            } else {
                AttentionOutput out = attention_forward(lc.q, lc.k, lc.v, *lc.masks, lc.mask_layer, attention);
                lc.o = std::move(out.o);
                lc.lse = std::move(out.lse);
            }
            lc.a = heads_merge(lc.o);
            if (shaping()) {
                if (grads) {
                    lc.dq_sharp = Mat::Zero(n, c.q_width());
                    lc.dk_sharp = Mat::Zero(n, c.q_width());
                }
                attention_terms(lc.q, lc.k, targets, options.block, c.causal, sharp_coef, own_coef, &result.entropy, &result.own_block,
                                grads ? &lc.dq_sharp : nullptr, grads ? &lc.dk_sharp : nullptr);
            }
            Mat x2 = x + lc.a * m(layer_slot(l, wo));
            lc.h2 = layer_norm_forward(x2, p(layer_slot(l, ln2_g)), p(layer_slot(l, ln2_b)), lc.ln2);
            lc.u = (lc.h2 * m(layer_slot(l, w1))).rowwise() + m(layer_slot(l, b1)).row(0);
            lc.g = lc.u.unaryExpr([](double u) { return gelu(u); });
            x = (x2 + lc.g * m(layer_slot(l, w2))).rowwise() + m(layer_slot(l, b2)).row(0);
        }
        const int64_t f = 2 + L * kPerLayer;   // lnf_g, lnf_b, w_out, b_out
        LayerNormCache lnf;
        const Mat hf = layer_norm_forward(x, p(f), p(f + 1), lnf);
        const Mat logits = (hf * m(f + 2)).rowwise() + m(f + 3).row(0);
        Mat dlogits = Mat::Zero(n, c.vocab);
        result.hits.assign(static_cast<size_t>(n), -1);
        for (int64_t i = 0; i < n; ++i) {
            if (targets[i] < 0) continue;
            const double top = logits.row(i).maxCoeff();
            const double lse = top + std::log((logits.row(i).array() - top).exp().sum());
            result.loss += lse - logits(i, targets[i]);
            result.answers += 1;
            Eigen::Index arg = 0;
            logits.row(i).maxCoeff(&arg);
            if (arg == targets[i]) result.correct += 1;
            result.hits[static_cast<size_t>(i)] = arg == targets[i] ? 1 : 0;
            if (grads) {
                dlogits.row(i) = (logits.row(i).array() - lse).exp() * loss_scale;
                dlogits(i, targets[i]) -= loss_scale;
            }
        }
        if (options.capture) {
            TeacherCapture& cap = *options.capture;
            for (int64_t l = 0; l < L; ++l) {
                cap.q[batch_index][l] = cache[l].q;
                cap.k[batch_index][l] = cache[l].k;
                cap.v[batch_index][l] = cache[l].v;
                cap.o[batch_index][l] = cache[l].o;
                cap.lse[batch_index][l] = cache[l].lse;
            }
        }
        if (!grads) return;

        auto g = [&](int64_t slot) { return MMap(grads + slots[slot].offset, slots[slot].rows, slots[slot].cols); };
        // logits = hf W_out + b_out
        g(f + 2) += hf.transpose() * dlogits;
        g(f + 3).row(0) += dlogits.colwise().sum();
        Mat dx = layer_norm_backward(dlogits * m(f + 2).transpose(), p(f), lnf, grads + slots[f].offset,
                                     grads + slots[f + 1].offset);
        for (int64_t l = L - 1; l >= 0; --l) {
            const LayerCache& lc = cache[l];
            // x = x2 + gelu(h2 W1 + b1) W2 + b2
            g(layer_slot(l, w2)) += lc.g.transpose() * dx;
            g(layer_slot(l, b2)).row(0) += dx.colwise().sum();
            const Mat dg = dx * m(layer_slot(l, w2)).transpose();
            const Mat du = dg.array() * lc.u.unaryExpr([](double u) { return gelu_grad(u); }).array();
            g(layer_slot(l, w1)) += lc.h2.transpose() * du;
            g(layer_slot(l, b1)).row(0) += du.colwise().sum();
            const Mat dx2 = dx + layer_norm_backward(du * m(layer_slot(l, w1)).transpose(), p(layer_slot(l, ln2_g)), lc.ln2,
                                                     grads + slots[layer_slot(l, ln2_g)].offset,
                                                     grads + slots[layer_slot(l, ln2_b)].offset);
            // x2 = x_in + attention(q, k, v) Wo
            g(layer_slot(l, wo)) += lc.a.transpose() * dx2;
            const Tensor d_o = heads_split(dx2 * m(layer_slot(l, wo)).transpose(), c.heads);
            const AttentionGrads ag = attention_backward(lc.q, lc.k, lc.v, lc.o, lc.lse, d_o, *lc.masks, lc.mask_layer, attention);
            Mat dq = heads_merge(ag.dq), dk = heads_merge(ag.dk);   // [n, heads * hd], per query head
            if (shaping()) {
                dq += lc.dq_sharp;
                dk += lc.dk_sharp;
            }
            dk = kv_sum(dk, c.kv_head_count(), hd);                  // [n, kv_heads * hd]
            const Mat dv = kv_sum(heads_merge(ag.dv), c.kv_head_count(), hd);
            if (c.positions == Positions::rotary) {
                rotary_apply(dq, rotary, hd, true);
                rotary_apply(dk, rotary, hd, true);
            }
            g(layer_slot(l, wq)) += lc.h1.transpose() * dq;
            g(layer_slot(l, wk)) += lc.h1.transpose() * dk;
            g(layer_slot(l, wv)) += lc.h1.transpose() * dv;
            const Mat dh1 = dq * m(layer_slot(l, wq)).transpose() + dk * m(layer_slot(l, wk)).transpose() +
                            dv * m(layer_slot(l, wv)).transpose();
            dx = dx2 + layer_norm_backward(dh1, p(layer_slot(l, ln1_g)), lc.ln1, grads + slots[layer_slot(l, ln1_g)].offset,
                                           grads + slots[layer_slot(l, ln1_b)].offset);
        }
        MMap demb = g(0);
        MMap dprev = g(1);
        for (int64_t i = 0; i < n; ++i) {
            demb.row(tokens[i]) += dx.row(i);
            if (i > 0) dprev.row(tokens[i - 1]) += dx.row(i);
        }
    }
};

// [SECTION] batches

TeacherResult teacher_run(const Teacher& teacher, const TaskBatch& batch, std::vector<double>* grads,
                          const TeacherRunOptions& options) {
    teacher_config_check(teacher.config);
    const int64_t n = teacher.task.n;
    if (batch.n != n)
        throw Error("teacher: the batch has n = " + std::to_string(batch.n) + " but the teacher was built for n = " + std::to_string(n));
    if (static_cast<int64_t>(teacher.params.size()) != teacher_param_count(teacher.config))
        throw Error("teacher: " + std::to_string(teacher.params.size()) + " parameters, expected " +
                    std::to_string(teacher_param_count(teacher.config)));
    const auto slots = teacher_param_slots(teacher.config);
    const TeacherConfig& config = teacher.config;
    const Mat pe = config.positions == Positions::sinusoidal ? positions_sinusoidal(n, config.d) : Mat();
    const Rotary rotary = config.positions == Positions::rotary ? rotary_table(n, config.head_dim()) : Rotary{};
    // The dense mask: blocks of 64 from n = 64 (the same attention in fewer engine blocks); a
    // causal teacher's is the causal mask, and a given mask is cut to its causal part.
    const int32_t dense_block = n >= 64 ? std::max<int32_t>(options.block, 64) : options.block;
    MaskSet own;   // the dense mask, or the given one cut to its causal part
    if (!options.masks) own = config.causal ? mask_set_causal(n, dense_block, 1, config.heads) : mask_set_dense(n, dense_block, 1, config.heads);
    else if (config.causal) own = mask_set_restrict_causal(*options.masks);
    const MaskSet& fixed = options.masks && !config.causal ? *options.masks : own;
    if (!options.chooser) {
        if (fixed.n != n || fixed.heads != teacher.config.heads || (fixed.layers != 1 && fixed.layers != teacher.config.layers))
            throw Error("masks: n = " + std::to_string(fixed.n) + ", " + std::to_string(fixed.layers) + " layers x " +
                        std::to_string(fixed.heads) + " heads do not fit the teacher (n = " + std::to_string(n) + ", " +
                        std::to_string(teacher.config.layers) + " layers x " + std::to_string(teacher.config.heads) + " heads)");
    }
    if (options.sharpness < 0 || !std::isfinite(options.sharpness))
        throw Error("teacher: sharpness = " + std::to_string(options.sharpness) + " must be a finite number >= 0");
    if (options.own_block < 0 || !std::isfinite(options.own_block))
        throw Error("teacher: own_block = " + std::to_string(options.own_block) + " must be a finite number >= 0");
    if ((options.sharpness > 0 || options.own_block > 0) && (options.masks || options.chooser))
        throw Error("teacher: the sharpness and own-block terms are for dense training only (run without masks or a chooser)");
    if (options.attention && (grads != nullptr || options.masks || options.chooser || options.capture || options.sharpness > 0 || options.own_block > 0))
        throw Error("teacher: an attention replacement (TeacherRunOptions::attention) is for evaluation only: run it without gradients, "
                    "masks, a chooser, a capture or the shaping terms");
    if (options.capture) {
        for (auto* field : {&options.capture->q, &options.capture->k, &options.capture->v, &options.capture->o, &options.capture->lse})
            field->assign(static_cast<size_t>(batch.batch), std::vector<Tensor>(static_cast<size_t>(teacher.config.layers)));
    }
    int64_t answers = 0;
    for (int32_t t : batch.targets) answers += t >= 0 ? 1 : 0;
    const double scale = answers > 0 ? 1.0 / static_cast<double>(answers) : 0.0;
    const double per_row = static_cast<double>(teacher.config.layers * teacher.config.heads);
    const double rows = per_row * static_cast<double>(batch.batch * n);
    const double free_rows = std::max(1.0, per_row * static_cast<double>(batch.batch * n - answers));   // the own-block term's rows
    const SequencePass pass{teacher, slots, pe, rotary, options, fixed, options.sharpness / rows, options.own_block / free_rows};
    std::vector<TeacherResult> results(static_cast<size_t>(batch.batch));
    // Each sequence's gradients, summed below in a fixed order. Aligned like Eigen's own
    // matrices (64 bytes at AVX-512): Eigen maps these buffers, and a vectorised reduction written
    // through a map rounds differently with the map's alignment (b1 += du.colwise().sum() puts an
    // unaligned head through the scalar path, which sums rows in another order). With malloc's
    // 16 bytes, each thread's arena gave another alignment, so the gradients changed with the
    // thread count.
    std::vector<std::vector<double, Eigen::aligned_allocator<double>>> seq_grads(grads ? static_cast<size_t>(batch.batch) : 0);
    parallel_for(batch.batch, options.threads, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
            double* g = nullptr;
            if (grads) {
                seq_grads[b].assign(teacher.params.size(), 0.0);
                g = seq_grads[b].data();
            }
            pass.run(batch.tokens.data() + b * n, batch.targets.data() + b * n, scale, g, results[b], b);
        }
    });
    TeacherResult total;
    total.hits.reserve(static_cast<size_t>(batch.batch * n));
    if (grads) grads->assign(teacher.params.size(), 0.0);
    for (int64_t b = 0; b < batch.batch; ++b) {   // a fixed order: the same sums for any thread count
        total.loss += results[b].loss;
        total.answers += results[b].answers;
        total.correct += results[b].correct;
        total.entropy += results[b].entropy;
        total.own_block += results[b].own_block;
        total.hits.insert(total.hits.end(), results[b].hits.begin(), results[b].hits.end());
        if (!batch.is_passkey.empty() && batch.is_passkey[b]) {
            total.passkey_answers += results[b].answers;
            total.passkey_correct += results[b].correct;
        }
        if (grads)
            for (size_t e = 0; e < grads->size(); ++e) (*grads)[e] += seq_grads[b][e];
    }
    total.loss *= scale;
    total.entropy /= rows;
    total.own_block /= free_rows;
    total.objective = total.loss + options.sharpness * total.entropy + options.own_block * total.own_block;
    return total;
}

} // namespace

TeacherCapture teacher_capture(const Teacher& teacher, const TaskBatch& batch, int32_t block, int threads) {
    TeacherCapture capture;
    TeacherRunOptions run;
    run.block = block;
    run.capture = &capture;
    run.threads = threads;
    teacher_evaluate(teacher, batch, run);
    return capture;
}

TeacherResult teacher_evaluate(const Teacher& teacher, const TaskBatch& batch, const TeacherRunOptions& options) {
    return teacher_run(teacher, batch, nullptr, options);
}

TeacherResult teacher_gradients(const Teacher& teacher, const TaskBatch& batch, std::vector<double>& grads,
                                const TeacherRunOptions& options) {
    return teacher_run(teacher, batch, &grads, options);
}

// [SECTION] training

TrainReport teacher_train(Teacher& teacher, const TrainOptions& o) {
    if (o.steps < 1 || o.batch < 1) throw Error("train: steps and batch must be at least 1");
    if (o.sharpen_steps < 1) throw Error("train: sharpen_steps = " + std::to_string(o.sharpen_steps) + " must be at least 1");
    const size_t count = teacher.params.size();
    std::vector<double> m(count, 0.0), v(count, 0.0), grads;
    const double beta1 = 0.9, beta2 = 0.98, eps = 1e-8;
    task_stream_seed(TaskStream::train, o.seed);   // refuses a seed that is the validation or test stream's
    const TaskBatch held_out = task_batch(teacher.task, task_stream_seed(TaskStream::validation, o.seed), 0, o.eval_sequences);
    if (o.sharpness < 0 || !std::isfinite(o.sharpness))
        throw Error("train: sharpness = " + std::to_string(o.sharpness) + " must be a finite number >= 0");
    if (o.own_block < 0 || !std::isfinite(o.own_block))
        throw Error("train: own_block = " + std::to_string(o.own_block) + " must be a finite number >= 0");
    const bool shaping = o.sharpness > 0 || o.own_block > 0;
    TeacherRunOptions run;
    run.threads = o.threads;
    TeacherRunOptions train_run = run;   // train_run.sharpness: 0 until the task is learned, then ramps up
    TrainReport report;
    std::vector<double> losses, entropies, own_blocks;
    const auto start = std::chrono::steady_clock::now();
    auto seconds_since = [](std::chrono::steady_clock::time_point t) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    };
    auto measure = [&]() {
        const TeacherResult r = teacher_evaluate(teacher, held_out, run);
        report.held_out_loss = r.loss;
        report.held_out_accuracy = r.answers ? static_cast<double>(r.correct) / static_cast<double>(r.answers) : 0;
        report.held_out_scores = TaskScores();
        report.held_out_scores.add(held_out, r.hits);
        // task_kinds_single(): mqar is kind 0, passkey kind 1.
        report.held_out_mqar = report.held_out_scores.kind_accuracy(0);
        report.held_out_passkey = report.held_out_scores.kind_accuracy(1);
    };
    std::vector<double> step_times;
    int64_t tokens = 0;
    for (int64_t step = 0; step < o.steps; ++step) {
        const auto step_start = std::chrono::steady_clock::now();
        const TaskBatch batch = task_batch(teacher.task, o.seed, step * o.batch, o.batch);
        if (report.sharpen_from >= 0) {
            const double ramp = static_cast<double>(std::max<int64_t>(1, o.sharpen_steps / 4));
            const double ramped = std::min(1.0, static_cast<double>(step - report.sharpen_from + 1) / ramp);
            train_run.sharpness = o.sharpness * ramped;
            train_run.own_block = o.own_block * ramped;
        }
        const TeacherResult r = teacher_gradients(teacher, batch, grads, train_run);
        double norm = 0;
        for (double g : grads) norm += g * g;
        norm = std::sqrt(norm);
        const double clip = norm > o.clip ? o.clip / norm : 1.0;
        double lr = o.lr;
        if (step < o.warmup) lr = o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup);
        else {
            const double t = static_cast<double>(step - o.warmup) / static_cast<double>(std::max<int64_t>(1, o.steps - o.warmup));
            lr = o.lr * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(3.141592653589793 * t)));
        }
        const double c1 = 1.0 - std::pow(beta1, static_cast<double>(step + 1));
        const double c2 = 1.0 - std::pow(beta2, static_cast<double>(step + 1));
        for (size_t e = 0; e < count; ++e) {
            const double g = grads[e] * clip;
            m[e] = beta1 * m[e] + (1 - beta1) * g;
            v[e] = beta2 * v[e] + (1 - beta2) * g * g;
            teacher.params[e] -= lr * (m[e] / c1) / (std::sqrt(v[e] / c2) + eps);
        }
        losses.push_back(r.loss);
        if (train_run.sharpness > 0 || train_run.own_block > 0) {
            entropies.push_back(r.entropy);
            own_blocks.push_back(std::exp(-r.own_block));
        }
        tokens += o.batch * teacher.task.n;
        report.steps = step + 1;
        const double step_seconds = seconds_since(step_start);
        step_times.push_back(step_seconds);
        const bool eval_now = (step + 1) % o.eval_every == 0 || step + 1 == o.steps;
        if (eval_now) measure();
        if (o.progress && (eval_now || step % 10 == 0)) {
            std::fprintf(stderr, "step %5lld/%lld  loss %.4f  acc %.3f  tokens/s %.0f", static_cast<long long>(step + 1),
                         static_cast<long long>(o.steps), r.loss,
                         r.answers ? static_cast<double>(r.correct) / static_cast<double>(r.answers) : 0.0,
                         static_cast<double>(o.batch * teacher.task.n) / step_seconds);
            if (train_run.sharpness > 0 || train_run.own_block > 0)
                std::fprintf(stderr, "  entropy %.3f own block %.3f", r.entropy, std::exp(-r.own_block));
            if (eval_now) {
                std::fprintf(stderr, "  validation acc %.4f (", report.held_out_accuracy);
                const char* sep = "";
                for (size_t kind = 0; kind < task_kinds_single().size(); ++kind)
                    if (report.held_out_scores.kind_answers(kind) > 0) {
                        std::fprintf(stderr, "%s%s %.3f", sep, task_kind_name(task_kinds_single()[kind]).c_str(),
                                     report.held_out_scores.kind_accuracy(kind));
                        sep = ", ";
                    }
                std::fprintf(stderr, ")");
            }
            std::fprintf(stderr, "\n");
        }
        if (eval_now && report.held_out_accuracy >= o.stop_accuracy) {
            if (!shaping) break;
            if (report.sharpen_from < 0) report.sharpen_from = step + 1;
            else if (step + 1 - report.sharpen_from >= o.sharpen_steps) break;
        }
        if (o.max_seconds > 0 && seconds_since(start) > o.max_seconds) {
            if (!eval_now) measure();
            break;
        }
    }
    report.seconds = seconds_since(start);
    teacher.config.sharpness = report.sharpen_from >= 0 ? o.sharpness : 0.0;   // what it was trained with
    teacher.config.own_block = report.sharpen_from >= 0 ? o.own_block : 0.0;
    auto mean_of = [&](const std::vector<double>& values, size_t from, size_t to) {
        double s = 0;
        for (size_t i = from; i < to; ++i) s += values[i];
        return s / static_cast<double>(to - from);
    };
    const size_t k = std::min<size_t>(10, losses.size());
    report.first_loss = mean_of(losses, 0, k);
    report.last_loss = mean_of(losses, losses.size() - k, losses.size());
    const size_t ke = std::min<size_t>(10, entropies.size());
    if (ke > 0) {
        report.first_entropy = mean_of(entropies, 0, ke);
        report.last_entropy = mean_of(entropies, entropies.size() - ke, entropies.size());
        report.first_own_block = mean_of(own_blocks, 0, ke);
        report.last_own_block = mean_of(own_blocks, own_blocks.size() - ke, own_blocks.size());
    }
    report.tokens_per_second = static_cast<double>(tokens) / report.seconds;
    std::sort(step_times.begin(), step_times.end());
    report.seconds_per_step = step_times.empty() ? 0 : step_times[step_times.size() / 2];
    return report;
}

// [SECTION] checkpoints

namespace {

constexpr char kMagic[8] = {'S', 'P', 'T', 'E', 'A', 'C', 'H', '\n'};

uint64_t fnv1a(const uint8_t* data, size_t size) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < size; ++i) {
        h ^= data[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

template <typename T> void put(std::vector<uint8_t>& out, const T& value) {
    const auto* bytes = reinterpret_cast<const uint8_t*>(&value);
    out.insert(out.end(), bytes, bytes + sizeof(T));
}

} // namespace

void teacher_save(const Teacher& t, const std::string& path) {
    nlohmann::json header = {
        {"format", "sparsa.teacher"},
        {"version", kTeacherFormatVersion},
        {"model", {{"vocab", t.config.vocab}, {"d", t.config.d}, {"heads", t.config.heads}, {"head_width", t.config.head_dim()},
                   {"kv_heads", t.config.kv_head_count()}, {"layers", t.config.layers}, {"mlp", t.config.mlp},
                   {"causal", t.config.causal}, {"positions", positions_name(t.config.positions)}, {"qk_identity", t.config.qk_identity},
                   {"sharpness", t.config.sharpness}, {"own_block", t.config.own_block}}},
        {"task", {{"kind", task_kind_name(t.task.kind)}, {"n", t.task.n}, {"pairs", t.task.pairs}, {"queries", t.task.queries},
                  {"keys", t.task.keys}, {"values", t.task.values}, {"fillers", t.task.fillers}, {"needles", t.task.needles}}},
    };
    const std::string text = header.dump();
    std::vector<uint8_t> bytes(kMagic, kMagic + 8);
    put(bytes, static_cast<uint32_t>(kTeacherFormatVersion));
    put(bytes, static_cast<uint32_t>(text.size()));
    bytes.insert(bytes.end(), text.begin(), text.end());
    put(bytes, static_cast<uint64_t>(t.params.size()));
    const auto* p = reinterpret_cast<const uint8_t*>(t.params.data());
    bytes.insert(bytes.end(), p, p + t.params.size() * sizeof(double));
    put(bytes, fnv1a(bytes.data(), bytes.size()));
    AtomicFile file(path);
    file.write(bytes.data(), bytes.size());
    file.commit();
}

Teacher teacher_load(const std::string& path) {
    const std::vector<uint8_t> bytes = InputFile(path).read_all();
    auto fail = [&](const std::string& what) -> Error {
        return Error(path + ": " + what);
    };
    if (bytes.size() < 8 || std::memcmp(bytes.data(), kMagic, 8) != 0)
        throw fail("not a sparsa teacher checkpoint (write one with 'sparsa learn teacher -o FILE')");
    if (bytes.size() < 8 + 4 + 4 + 8 + 8) throw fail("truncated checkpoint (" + std::to_string(bytes.size()) + " bytes): train it again");
    const size_t body = bytes.size() - 8;
    uint64_t stored = 0;
    std::memcpy(&stored, bytes.data() + body, 8);
    uint32_t version = 0, text_size = 0;
    std::memcpy(&version, bytes.data() + 8, 4);
    if (version < 1 || version > kTeacherFormatVersion)
        throw fail("checkpoint version " + std::to_string(version) + " is not one this sparsa reads (1 to " +
                   std::to_string(kTeacherFormatVersion) + ")" + (version > kTeacherFormatVersion ? ": update sparsa" : ": train it again"));
    if (fnv1a(bytes.data(), body) != stored)
        throw fail("checksum mismatch: the checkpoint is corrupt or truncated (train it again with 'sparsa learn teacher')");
    std::memcpy(&text_size, bytes.data() + 12, 4);
    if (16 + static_cast<size_t>(text_size) + 8 > body) throw fail("header runs past the end of the file: the checkpoint is corrupt");
    Teacher t;
    try {
        const auto header = nlohmann::json::parse(bytes.begin() + 16, bytes.begin() + 16 + text_size);
        const auto& model = header.at("model");
        t.config.vocab = model.at("vocab");
        t.config.d = model.at("d");
        t.config.heads = model.at("heads");
        t.config.layers = model.at("layers");
        t.config.mlp = model.at("mlp");
        if (version >= 2) {   // version 1: the first teacher, bidirectional with sinusoidal positions
            t.config.head_width = model.at("head_width");
            t.config.kv_heads = model.at("kv_heads");
            t.config.causal = model.at("causal");
            t.config.positions = positions_parse(model.at("positions"));
        } else {
            t.config.head_width = 0;
            t.config.kv_heads = 0;
            t.config.causal = false;
            t.config.positions = Positions::sinusoidal;
        }
        t.config.qk_identity = model.value("qk_identity", 0.0);
        t.config.sharpness = model.value("sharpness", 0.0);
        t.config.own_block = model.value("own_block", 0.0);
        const auto& task = header.at("task");
        t.task.kind = task_kind_parse(task.at("kind"));
        t.task.n = task.at("n");
        t.task.pairs = task.at("pairs");
        t.task.queries = task.at("queries");
        t.task.keys = task.at("keys");
        t.task.values = task.at("values");
        t.task.fillers = task.at("fillers");
        if (version >= 2) t.task.needles = task.at("needles");
    } catch (const nlohmann::json::exception& e) {
        throw fail(std::string("bad header: ") + e.what());
    } catch (const Error& e) {
        throw fail(e.what());
    }
    try {
        teacher_config_check(t.config);
        task_config_check(t.task);
    } catch (const Error& e) {
        throw fail(e.what());
    }
    uint64_t count = 0;
    const size_t at = 16 + text_size;
    std::memcpy(&count, bytes.data() + at, 8);
    if (count != static_cast<uint64_t>(teacher_param_count(t.config)) || at + 8 + count * sizeof(double) != body)
        throw fail("holds " + std::to_string(count) + " parameters, the header's model needs " +
                   std::to_string(teacher_param_count(t.config)) + ": the checkpoint is corrupt");
    t.params.resize(count);
    std::memcpy(t.params.data(), bytes.data() + at + 8, count * sizeof(double));
    return t;
}

} // namespace sparsa::learn
