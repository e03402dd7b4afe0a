// lsh and anchors heads on the CPU: buckets, then passes (the fixed mask in token order, one
// banded pass per round in sorted order) merged by log-sum-exp with the -log(count) correction
// (content_attention.hpp says why that is exact). Passes run tile by tile with Eigen products,
// one query tile (forward, dQ) or key tile (dK, dV) per work item, as cpu_attention.cpp does.
//
// (content_pairs.hpp: the heads' buckets, the tilings and each pair's count)
// [SECTION] tiles: scores, bias, softmax forward and backward of one tile
// [SECTION] passes: gather, run, merge or scatter, for every content head at once
// [SECTION] entry points
#include "engine/content/content_attention.hpp"

#include "engine/content/content_pairs.hpp"
#include "engine/reference.hpp"
#include "engine/threads.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

namespace sparsa {

using namespace content_detail;

namespace {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Block = Eigen::Map<Matrix>;
using ConstBlock = Eigen::Map<const Matrix>;

// exp below -80 would be subnormal (slow on x86) and is nothing beside the row's largest term.
constexpr float kExpFloor = -80.0f;
double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// [SECTION] tiles

struct Scratch {
    Matrix q, s, bias, dp, acc_a, acc_b;   // [T, d], [T, T], [T, T], [T, T], [T, d], [T, d]
    Eigen::VectorXf m, l, alpha;          // [T]
    Eigen::VectorXd p_sum;                // [T]
    BiasScratch lookups;
    explicit Scratch(int64_t tile, int64_t d)
        : q(tile, d), s(tile, tile), bias(tile, tile), dp(tile, tile), acc_a(tile, d), acc_b(tile, d), m(tile),
          l(tile), alpha(tile), p_sum(tile) {}
};

// w.q = scale * Q rows of query tile qt; then S = (scale Q) K^T of tile pair (qt, kt) in w.s
// plus the bias: the same product for the same tiles in every pass (forward, dQ, dK dV), so
// the backward's S is the forward's bit for bit.
void tile_queries(const PassView& p, int64_t qt, float scale, Scratch& w) {
    const int64_t q0 = p.tiling->start[to_size(qt)], rows = p.tiling->size(qt);
    Block(w.q.data(), rows, p.d) = scale * ConstBlock(p.q + q0 * p.d, rows, p.d);
}

Block tile_scores(const PassView& p, int64_t qt, int64_t kt, int32_t partial, bool correction, Scratch& w,
                  int64_t* first) {
    const int64_t rows = p.tiling->size(qt), k0 = p.tiling->start[to_size(kt)], cols = p.tiling->size(kt);
    Block s(w.s.data(), rows, cols), bias(w.bias.data(), rows, cols);
    s.noalias() = ConstBlock(w.q.data(), rows, p.d) * ConstBlock(p.k + k0 * p.d, cols, p.d).transpose();   // S = Q K^T
    const int64_t new_pairs = tile_bias(p, qt, kt, partial, correction, bias.data(), w.lookups);
    if (first != nullptr) *first += new_pairs;
    s += bias;   // -log count, or -inf off the pass
    return s;
}

// P = exp(S - shift) row by row, exactly 0 where S = -inf (pairs off the pass) or the shift is
// -inf (a row with no key).
// Eigen's vectorised exp on the clamped values, then the pairs off the pass set to 0 (Eigen
// 3.4's select would take the scalar exp, measured at 9% of a forward).
void tile_exp(Block s, const Eigen::Ref<const Eigen::VectorXf>& shift) {
    for (int64_t i = 0; i < s.rows(); ++i) {
        if (shift[i] == kNegInf) {
            s.row(i).setZero();
            continue;
        }
        float* row = &s(i, 0);
        const int64_t cols = s.cols();
        uint64_t off[(kMaxBlock + 63) / 64] = {};   // which columns are -inf (cols <= kMaxBlock)
        for (int64_t j = 0; j < cols; ++j) off[j / 64] |= uint64_t{row[j] == kNegInf} << (j % 64);
        Eigen::Map<Eigen::ArrayXf> r(row, cols);
        r = (r - shift[i]).max(kExpFloor).exp();
        for (int64_t j = 0; j < cols; ++j) {
            if ((off[j / 64] >> (j % 64)) & 1) row[j] = 0.0f;
        }
    }
}

// Forward of query tile qt: online softmax over its key tiles; writes rows of o_p [n, d] and
// lse_p [n] (pass order). Returns the pairs no earlier pass holds.
int64_t tile_forward(const PassView& p, int64_t qt, float scale, bool correction, Scratch& w, float* o, float* lse) {
    const Tiling& t = *p.tiling;
    const int64_t q0 = t.start[to_size(qt)], rows = t.size(qt), d = p.d;
    tile_queries(p, qt, scale, w);
    Block acc(w.acc_a.data(), rows, d);
    acc.setZero();
    auto m = w.m.head(rows), l = w.l.head(rows), alpha = w.alpha.head(rows);
    m.fill(kNegInf);
    l.setZero();
    int64_t first = 0;
    for (int64_t e = t.row_ptr[to_size(qt)]; e < t.row_ptr[to_size(qt + 1)]; ++e) {
        const int64_t kt = t.col_idx[to_size(e)];
        Block s = tile_scores(p, qt, kt, t.row_partial[to_size(e)], correction, w, &first);
        // online softmax: m = running max, l = running sum of exp(S - m), acc = running P V
        for (int64_t i = 0; i < rows; ++i) {
            const float m_new = std::max(m[i], s.row(i).maxCoeff());
            alpha[i] = m_new == kNegInf ? 1.0f : std::exp(m[i] - m_new);   // exp(-inf) = 0 on the first key
            m[i] = m_new;
        }
        tile_exp(s, m);
        l = alpha.cwiseProduct(l) + s.rowwise().sum();
        acc = alpha.asDiagonal() * acc;
        acc.noalias() += s * ConstBlock(p.v + t.start[to_size(kt)] * d, t.size(kt), d);   // O += P V
    }
    for (int64_t i = 0; i < rows; ++i) {
        float* out = o + (q0 + i) * d;
        if (m[i] == kNegInf) {   // no key in this pass
            std::fill(out, out + d, 0.0f);
            lse[q0 + i] = kNegInf;
            continue;
        }
        Eigen::Map<Eigen::RowVectorXf>(out, d) = acc.row(i) / l[i];
        lse[q0 + i] = m[i] + std::log(l[i]);
    }
    return first;
}

// What the backward of a pass reads beside q, k, v, in the pass's order: dO [n, d], and the
// merged lse and D = rowsum(dO * o) [n].
struct PassGrad {
    const float *d_o = nullptr, *lse = nullptr, *delta = nullptr;
};

// P = exp(S - lse) and dS = P (dP - D), dP = dO V^T, of tile pair (qt, kt) into w.s, w.dp.
void tile_grads(const PassView& p, const PassGrad& g, int64_t qt, int64_t kt, int32_t partial, bool correction,
                Scratch& w) {
    const Tiling& t = *p.tiling;
    const int64_t q0 = t.start[to_size(qt)], rows = t.size(qt), k0 = t.start[to_size(kt)], cols = t.size(kt);
    Block s = tile_scores(p, qt, kt, partial, correction, w, nullptr);
    tile_exp(s, Eigen::Map<const Eigen::VectorXf>(g.lse + q0, rows));                              // P = exp(S - lse)
    Block ds(w.dp.data(), rows, cols);
    ds.noalias() = ConstBlock(g.d_o + q0 * p.d, rows, p.d) * ConstBlock(p.v + k0 * p.d, cols, p.d).transpose();   // dP = dO V^T
    for (int64_t i = 0; i < rows; ++i) ds.row(i).array() = s.row(i).array() * (ds.row(i).array() - g.delta[q0 + i]);   // dS
}

// dQ of query tile qt into rows of dq [n, d], and each row's sum of P into p_sum [n].
void tile_backward_dq(const PassView& p, const PassGrad& g, int64_t qt, float scale, bool correction, Scratch& w,
                      float* dq, double* p_sum) {
    const Tiling& t = *p.tiling;
    const int64_t q0 = t.start[to_size(qt)], rows = t.size(qt), d = p.d;
    tile_queries(p, qt, scale, w);
    Block acc(w.acc_a.data(), rows, d);
    acc.setZero();
    auto sums = w.p_sum.head(rows);
    sums.setZero();
    for (int64_t e = t.row_ptr[to_size(qt)]; e < t.row_ptr[to_size(qt + 1)]; ++e) {
        const int64_t kt = t.col_idx[to_size(e)];
        tile_grads(p, g, qt, kt, t.row_partial[to_size(e)], correction, w);
        const ConstBlock pt(w.s.data(), rows, t.size(kt)), ds(w.dp.data(), rows, t.size(kt));
        sums += pt.rowwise().sum().cast<double>();
        acc.noalias() += ds * ConstBlock(p.k + t.start[to_size(kt)] * d, t.size(kt), d);   // dQ += dS K
    }
    Block(dq + q0 * d, rows, d) = scale * acc;
    Eigen::Map<Eigen::VectorXd>(p_sum + q0, rows) = sums;
}

// dK, dV of key tile kt into rows of dk, dv [n, d], over its query tiles in ascending order.
void tile_backward_dkv(const PassView& p, const PassGrad& g, int64_t kt, float scale, bool correction, Scratch& w,
                       float* dk, float* dv) {
    const Tiling& t = *p.tiling;
    const int64_t k0 = t.start[to_size(kt)], cols = t.size(kt), d = p.d;
    Block dk_acc(w.acc_a.data(), cols, d), dv_acc(w.acc_b.data(), cols, d);
    dk_acc.setZero();
    dv_acc.setZero();
    for (int64_t e = t.col_ptr[to_size(kt)]; e < t.col_ptr[to_size(kt + 1)]; ++e) {
        const int64_t qt = t.row_idx[to_size(e)], q0 = t.start[to_size(qt)], rows = t.size(qt);
        tile_queries(p, qt, scale, w);
        tile_grads(p, g, qt, kt, t.col_partial[to_size(e)], correction, w);
        const ConstBlock pt(w.s.data(), rows, cols), ds(w.dp.data(), rows, cols);
        dv_acc.noalias() += pt.transpose() * ConstBlock(g.d_o + q0 * d, rows, d);   // dV += P^T dO
        dk_acc.noalias() += ds.transpose() * ConstBlock(w.q.data(), rows, d);       // dK += dS^T (scale Q)
    }
    Block(dk + k0 * d, cols, d) = dk_acc;
    Block(dv + k0 * d, cols, d) = dv_acc;
}

// [SECTION] passes

// Runs body(view, tile, scratch) for every tile of every view, items taken one at a time from a
// shared counter; each writes only its own rows, so results do not depend on the thread count.
template <typename Body>
void tiles_run(const std::vector<PassView>& views, int threads, int64_t d, const Body& body) {
    std::vector<int64_t> first(views.size() + 1, 0);
    int64_t max_tile = 1;
    for (size_t i = 0; i < views.size(); ++i) {
        first[i + 1] = first[i] + views[i].tiling->tiles();
        max_tile = std::max(max_tile, views[i].tiling->max_tile);
    }
    const int64_t count = first.back();
    std::atomic<int64_t> next{0};
    const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, count));
    parallel_for(workers, static_cast<int>(workers), [&](int64_t, int64_t) {
        Scratch w(max_tile, d);
        for (int64_t item; (item = next.fetch_add(1)) < count;) {
            const size_t v = to_size(std::upper_bound(first.begin(), first.end(), item) - first.begin() - 1);
            body(v, item - first[v], w);
        }
    });
}

// dst[s] = src[order[s]] for the rows of one head ([n, width] each).
void rows_gather(float* dst, const float* src, const int32_t* order, int64_t n, int64_t width) {
    for (int64_t s = 0; s < n; ++s) std::copy(src + order[s] * width, src + (order[s] + 1) * width, dst + s * width);
}

// Merges a pass's (o_p, lse_p) row s into token order[s]'s running (o, lse): log-sum-exp.
void rows_merge(float* o, float* lse, const float* o_p, const float* lse_p, const int32_t* order, int64_t n, int64_t d) {
    for (int64_t s = 0; s < n; ++s) {
        const double b_lse = lse_p[s];
        if (b_lse == -std::numeric_limits<double>::infinity()) continue;
        const int64_t t = order[s];
        float* out = o + t * d;
        const float* add = o_p + s * d;
        const double a_lse = lse[t];
        if (a_lse == -std::numeric_limits<double>::infinity()) {
            std::copy(add, add + d, out);
            lse[t] = lse_p[s];
            continue;
        }
        const double top = std::max(a_lse, b_lse), a = std::exp(a_lse - top), b = std::exp(b_lse - top);
        const float wa = static_cast<float>(a / (a + b)), wb = static_cast<float>(b / (a + b));
        for (int64_t j = 0; j < d; ++j) out[j] = wa * out[j] + wb * add[j];
        lse[t] = static_cast<float>(top + std::log(a + b));
    }
}

// The views of pass `round` (-1: fixed) over every head that has it, without their rows.
std::vector<PassView> pass_views_of(const Setup& setup, int64_t round, int64_t n, int64_t d) {
    std::vector<PassView> views;
    for (const HeadState& hs : setup.heads) {
        if (round < 0 ? !hs.has_fixed : round >= hs.walk.rounds) continue;
        PassView p;
        p.head = &hs;
        p.round = round;
        p.tiling = round < 0 ? &hs.fixed_tiles : &hs.band;
        p.n = n;
        p.d = d;
        if (round >= 0) {
            p.q_token = hs.walk.query_order(round);
            p.k_token = hs.walk.key_order(round);
        }
        views.push_back(p);
    }
    return views;
}

// The views of pass `round` (-1: fixed) over every head that has it; a round's rows are gathered
// into sorted order in `store` (per view: q, k, v [n, d]), the fixed pass reads them in place.
std::vector<PassView> pass_views(const Setup& setup, int64_t round, const Tensor& q, const Tensor& k, const Tensor& v,
                                 std::vector<std::vector<float>>& store, int threads) {
    std::vector<PassView> views = pass_views_of(setup, round, q.shape.n, q.shape.d);
    for (PassView& p : views) {
        p.q = q.row(p.head->b, p.head->h, 0);
        p.k = k.row(p.head->b, p.head->h, 0);
        p.v = v.row(p.head->b, p.head->h, 0);
    }
    if (round < 0) return views;
    const int64_t n = q.shape.n, d = q.shape.d;
    if (store.size() < views.size() * 3) store.resize(views.size() * 3);   // kept from round to round
    parallel_for(static_cast<int64_t>(views.size() * 3), threads, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            PassView& p = views[to_size(i / 3)];
            std::vector<float>& buf = store[to_size(i)];
            if (buf.size() < to_size(n * d)) buf.resize(to_size(n * d));
            const int which = static_cast<int>(i % 3);
            const float* src = which == 0 ? p.q : which == 1 ? p.k : p.v;
            rows_gather(buf.data(), src, which == 0 ? p.q_token : p.k_token, n, d);
        }
    });
    for (size_t i = 0; i < views.size(); ++i) {
        views[i].q = store[3 * i].data();
        views[i].k = store[3 * i + 1].data();
        views[i].v = store[3 * i + 2].data();
    }
    return views;
}

// The identity order 0 .. n - 1 (the fixed pass's rows are tokens).
std::vector<int32_t> identity_order(int64_t n) {
    std::vector<int32_t> order(to_size(n));
    for (int64_t t = 0; t < n; ++t) order[to_size(t)] = static_cast<int32_t>(t);
    return order;
}

// Heads without a spec: the block-sparse engine on a tensor of just those heads.
Tensor heads_take(const Tensor& x, const std::vector<int64_t>& heads) {
    const TensorShape s = x.shape;
    Tensor out = tensor_zeros<float>({s.batch, static_cast<int64_t>(heads.size()), s.n, s.d});
    for (int64_t b = 0; b < s.batch; ++b) {
        for (size_t i = 0; i < heads.size(); ++i) {
            std::copy(x.row(b, heads[i], 0), x.row(b, heads[i], 0) + s.n * s.d, out.row(b, static_cast<int64_t>(i), 0));
        }
    }
    return out;
}

void heads_put(Tensor& x, const std::vector<int64_t>& heads, const Tensor& part) {
    const TensorShape s = x.shape;
    for (int64_t b = 0; b < s.batch; ++b) {
        for (size_t i = 0; i < heads.size(); ++i) {
            const float* src = part.row(b, static_cast<int64_t>(i), 0);
            std::copy(src, src + s.n * s.d, x.row(b, heads[i], 0));
        }
    }
}

MaskSet heads_masks(const MaskSet& masks, int64_t layer, const std::vector<int64_t>& heads) {
    std::vector<std::shared_ptr<const BlockMask>> list;
    for (int64_t h : heads) list.push_back(masks.masks[to_size(layer * masks.heads + h)]);
    return mask_set_make(1, static_cast<int64_t>(heads.size()), std::move(list));
}

// The checks every entry point makes first.
struct Checked {
    int threads = 1;
    float scale = 1;
    TensorD q_norms, k_norms;
};

Checked content_check(const std::string& what, const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks,
                      int64_t layer, const ContentOptions& options) {
    attention_check_shapes(what, q.shape, k.shape, v.shape, masks, layer);
    Checked c;
    c.threads = attention_threads(what, options.threads);
    c.scale = static_cast<float>(attention_scale(what, options.scale, q.shape.d));
    tensor_check_finite(q, "Q");
    tensor_check_finite(k, "K");
    tensor_check_finite(v, "V");
    c.q_norms = tensor_row_norms(q, c.threads);
    c.k_norms = tensor_row_norms(k, c.threads);
    attention_check_score_range(what, c.q_norms, c.k_norms, c.scale, ScoreEngine::cpu);
    return c;
}

// Recall of every head's report: per query, the exact softmax's mass (dense; k <= q when
// causal) on A(q), in double. One item per (head, query).
void reports_recall(const Setup& setup, const Tensor& q, const Tensor& k, float scale, int threads,
                    std::vector<ContentReport>& reports) {
    const int64_t n = q.shape.n, d = q.shape.d, heads = static_cast<int64_t>(setup.heads.size());
    std::vector<double> recall(to_size(heads * n));
    parallel_for(heads * n, threads, [&](int64_t begin, int64_t end) {
        std::vector<uint8_t> row(to_size(n));
        std::vector<double> score(to_size(n));
        for (int64_t item = begin; item < end; ++item) {
            const HeadState& h = setup.heads[to_size(item / n)];
            const int64_t qi = item % n, last = h.causal ? qi + 1 : n;
            allowed_row(h, qi, row.data());
            const float* qr = q.row(h.b, h.h, qi);
            double top = -std::numeric_limits<double>::infinity();
            for (int64_t key = 0; key < last; ++key) {
                const float* kr = k.row(h.b, h.h, key);
                double dot = 0;
                for (int64_t j = 0; j < d; ++j) dot += double{qr[j]} * double{kr[j]};
                score[to_size(key)] = double{scale} * dot;
                top = std::max(top, score[to_size(key)]);
            }
            double all = 0, kept = 0;
            for (int64_t key = 0; key < last; ++key) {
                const double e = std::exp(score[to_size(key)] - top);
                all += e;
                if (row[to_size(key)]) kept += e;
            }
            recall[to_size(item)] = kept / all;
        }
    });
    for (int64_t i = 0; i < heads; ++i) {
        double sum = 0, low = 1;
        for (int64_t qi = 0; qi < n; ++qi) sum += recall[to_size(i * n + qi)], low = std::min(low, recall[to_size(i * n + qi)]);
        reports[to_size(i)].recall_mean = sum / static_cast<double>(n);
        reports[to_size(i)].recall_min = low;
    }
}

// The pairs of every head (|A|), counted through the passes' biases alone.
std::vector<int64_t> setup_pairs(const Setup& setup, const Tensor& q, int threads) {
    std::vector<int64_t> pairs(setup.heads.size(), 0);
    for (int64_t round = -1; round < setup.max_rounds; ++round) {
        const std::vector<PassView> views = pass_views_of(setup, round, q.shape.n, q.shape.d);
        std::vector<std::vector<int64_t>> counts(views.size());
        for (size_t i = 0; i < views.size(); ++i) counts[i].assign(to_size(views[i].tiling->tiles()), 0);
        tiles_run(views, threads, q.shape.d, [&](size_t vi, int64_t qt, Scratch& w) {
            const PassView& p = views[vi];
            const Tiling& t = *p.tiling;
            for (int64_t e = t.row_ptr[to_size(qt)]; e < t.row_ptr[to_size(qt + 1)]; ++e) {
                counts[vi][to_size(qt)] += tile_bias(p, qt, t.col_idx[to_size(e)], t.row_partial[to_size(e)], true, w.bias.data(), w.lookups);
            }
        });
        for (size_t i = 0; i < views.size(); ++i) {
            const size_t head = to_size(views[i].head - setup.heads.data());
            for (int64_t c : counts[i]) pairs[head] += c;
        }
    }
    return pairs;
}

} // namespace

// [SECTION] entry points

ContentForward content_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks,
                                         int64_t layer, const ContentOptions& options) {
    const std::string what = "content_attention_forward";
    const Checked c = content_check(what, q, k, v, masks, layer, options);
    const TensorShape s = q.shape;
    ContentForward out;
    const Setup setup = content_setup(what, q, k, masks, layer, options, c.threads, out.times);
    out.o = tensor_zeros<float>(s);
    out.lse = tensor_zeros<float>({s.batch, s.heads, s.n, 1});
    std::fill(out.lse.data.begin(), out.lse.data.end(), kNegInf);

    auto t0 = std::chrono::steady_clock::now();
    if (!setup.plain.empty()) {
        AttentionOptions plain_options;
        plain_options.scale = c.scale;
        plain_options.threads = c.threads;
        const AttentionOutput plain = attention_forward(heads_take(q, setup.plain), heads_take(k, setup.plain),
                                                        heads_take(v, setup.plain), heads_masks(masks, layer, setup.plain),
                                                        0, plain_options);
        heads_put(out.o, setup.plain, plain.o);
        heads_put(out.lse, setup.plain, plain.lse);
    }
    out.times.attention += seconds_since(t0);

    const int64_t n = s.n, d = s.d;
    std::vector<int64_t> pairs(setup.heads.size(), 0);
    const std::vector<int32_t> identity = identity_order(n);
    // Sorted copies and pass outputs, allocated once and reused by every pass.
    std::vector<std::vector<float>> store, o_p(setup.heads.size()), lse_p(setup.heads.size());
    for (int64_t round = -1; round < setup.max_rounds; ++round) {
        t0 = std::chrono::steady_clock::now();
        const std::vector<PassView> views = pass_views(setup, round, q, k, v, store, c.threads);
        parallel_for(static_cast<int64_t>(views.size()), c.threads, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
                if (o_p[to_size(i)].size() < to_size(n * d)) o_p[to_size(i)].resize(to_size(n * d)), lse_p[to_size(i)].resize(to_size(n));
            }
        });
        out.times.gathering += seconds_since(t0);

        t0 = std::chrono::steady_clock::now();
        std::vector<std::vector<int64_t>> first(views.size());
        for (size_t i = 0; i < views.size(); ++i) first[i].assign(to_size(views[i].tiling->tiles()), 0);
        tiles_run(views, c.threads, d, [&](size_t vi, int64_t qt, Scratch& w) {
            first[vi][to_size(qt)] = tile_forward(views[vi], qt, c.scale, options.duplicate_correction, w,
                                                  o_p[vi].data(), lse_p[vi].data());
        });
        out.times.attention += seconds_since(t0);

        t0 = std::chrono::steady_clock::now();
        parallel_for(static_cast<int64_t>(views.size()), c.threads, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
                const PassView& p = views[to_size(i)];
                rows_merge(out.o.row(p.head->b, p.head->h, 0), out.lse.row(p.head->b, p.head->h, 0), o_p[to_size(i)].data(),
                           lse_p[to_size(i)].data(), round < 0 ? identity.data() : p.q_token, n, d);
            }
        });
        for (size_t i = 0; i < views.size(); ++i) {
            for (int64_t f : first[i]) pairs[to_size(views[i].head - setup.heads.data())] += f;
        }
        out.times.gathering += seconds_since(t0);
    }
    for (size_t i = 0; i < setup.heads.size(); ++i) out.reports.push_back(head_report(setup.heads[i], pairs[i]));
    if (options.recall) reports_recall(setup, q, k, c.scale, c.threads, out.reports);
    for (size_t e = 0; e < out.o.data.size(); ++e) {
        if (!std::isfinite(out.o.data[e])) {
            throw Error(what + ": O at " + tensor_index_text(s, e) +
                        " overflows float32 (its sums leave float32's range; O is linear in V: scale V down, and O back up by the same factor)");
        }
    }
    return out;
}

AttentionGrads content_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                          const Tensor& lse, const Tensor& d_o, const MaskSet& masks, int64_t layer,
                                          const ContentOptions& options) {
    const std::string what = "content_attention_backward";
    const Checked c = content_check(what, q, k, v, masks, layer, options);
    const TensorShape s = q.shape;
    const TensorShape lse_shape{s.batch, s.heads, s.n, 1};
    if (!(o.shape == s) || !(d_o.shape == s) || !(lse.shape == lse_shape)) {
        throw Error(what + ": O, dO and lse are " + tensor_shape_text(o.shape) + ", " + tensor_shape_text(d_o.shape) +
                    " and " + tensor_shape_text(lse.shape) + " but should be " + tensor_shape_text(s) + ", " +
                    tensor_shape_text(s) + " and " + tensor_shape_text(lse_shape) + " (pass the forward's o and lse)");
    }
    tensor_check_finite(o, "O");
    tensor_check_finite(d_o, "dO");
    for (size_t e = 0; e < lse.data.size(); ++e) {
        if (std::isnan(lse.data[e]) || lse.data[e] == -kNegInf) {
            throw Error(what + ": lse[" + std::to_string(e) + "] is " + std::to_string(lse.data[e]) +
                        " (lse is finite, or -inf for an empty row: pass the forward's lse)");
        }
    }
    ContentTimes times;
    const Setup setup = content_setup(what, q, k, masks, layer, options, c.threads, times);
    AttentionGrads g;
    g.dq = tensor_zeros<float>(s);
    g.dk = tensor_zeros<float>(s);
    g.dv = tensor_zeros<float>(s);
    if (!setup.plain.empty()) {
        AttentionOptions plain_options;
        plain_options.scale = c.scale;
        plain_options.threads = c.threads;
        const AttentionGrads plain = attention_backward(
            heads_take(q, setup.plain), heads_take(k, setup.plain), heads_take(v, setup.plain), heads_take(o, setup.plain),
            heads_take(lse, setup.plain), heads_take(d_o, setup.plain), heads_masks(masks, layer, setup.plain), 0,
            plain_options);
        heads_put(g.dq, setup.plain, plain.dq);
        heads_put(g.dk, setup.plain, plain.dk);
        heads_put(g.dv, setup.plain, plain.dv);
    }

    const int64_t n = s.n, d = s.d, heads = static_cast<int64_t>(setup.heads.size());
    // D = rowsum(dO * o) of the merged o, in token order: [heads, n]
    std::vector<float> delta(to_size(heads * n));
    parallel_for(heads * n, c.threads, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
            const HeadState& h = setup.heads[to_size(item / n)];
            const float *a = o.row(h.b, h.h, item % n), *b = d_o.row(h.b, h.h, item % n);
            double sum = 0;
            for (int64_t j = 0; j < d; ++j) sum += double{a[j]} * b[j];
            delta[to_size(item)] = static_cast<float>(sum);
        }
    });
    std::vector<double> p_sum(to_size(heads * n), 0.0);
    const std::vector<int32_t> identity = identity_order(n);
    for (int64_t round = -1; round < setup.max_rounds; ++round) {
        std::vector<std::vector<float>> store;
        const std::vector<PassView> views = pass_views(setup, round, q, k, v, store, c.threads);
        const size_t count = views.size();
        // Per view in the pass's order: dO [n, d], lse [n], D [n]; and its gradients [n, d] x 3, P sums [n].
        std::vector<std::vector<float>> d_o_p(count), lse_p(count), delta_p(count), dq_p(count), dk_p(count), dv_p(count);
        std::vector<std::vector<double>> sum_p(count);
        std::vector<PassGrad> grads(count);
        parallel_for(static_cast<int64_t>(count), c.threads, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
                const PassView& p = views[to_size(i)];
                const int32_t* order = round < 0 ? identity.data() : p.q_token;
                const size_t head = to_size(p.head - setup.heads.data());
                d_o_p[to_size(i)].resize(to_size(n * d));
                rows_gather(d_o_p[to_size(i)].data(), d_o.row(p.head->b, p.head->h, 0), order, n, d);
                lse_p[to_size(i)].resize(to_size(n));
                rows_gather(lse_p[to_size(i)].data(), lse.row(p.head->b, p.head->h, 0), order, n, 1);
                delta_p[to_size(i)].resize(to_size(n));
                rows_gather(delta_p[to_size(i)].data(), delta.data() + head * to_size(n), order, n, 1);
                dq_p[to_size(i)].resize(to_size(n * d));
                dk_p[to_size(i)].resize(to_size(n * d));
                dv_p[to_size(i)].resize(to_size(n * d));
                sum_p[to_size(i)].resize(to_size(n));
                grads[to_size(i)] = {d_o_p[to_size(i)].data(), lse_p[to_size(i)].data(), delta_p[to_size(i)].data()};
            }
        });
        tiles_run(views, c.threads, d, [&](size_t vi, int64_t qt, Scratch& w) {
            tile_backward_dq(views[vi], grads[vi], qt, c.scale, options.duplicate_correction, w, dq_p[vi].data(),
                             sum_p[vi].data());
        });
        tiles_run(views, c.threads, d, [&](size_t vi, int64_t kt, Scratch& w) {
            tile_backward_dkv(views[vi], grads[vi], kt, c.scale, options.duplicate_correction, w, dk_p[vi].data(),
                              dv_p[vi].data());
        });
        // Scatter-add into token order, passes in order (fixed, then rounds): the same sums for any thread count.
        parallel_for(static_cast<int64_t>(count), c.threads, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
                const PassView& p = views[to_size(i)];
                const HeadState& h = *p.head;
                const int32_t* qo = round < 0 ? identity.data() : p.q_token;
                const int32_t* ko = round < 0 ? identity.data() : p.k_token;
                const size_t head = to_size(p.head - setup.heads.data());
                float *dq = g.dq.row(h.b, h.h, 0), *dk = g.dk.row(h.b, h.h, 0), *dv = g.dv.row(h.b, h.h, 0);
                for (int64_t r = 0; r < n; ++r) {
                    for (int64_t j = 0; j < d; ++j) {
                        dq[qo[r] * d + j] += dq_p[to_size(i)][to_size(r * d + j)];
                        dk[ko[r] * d + j] += dk_p[to_size(i)][to_size(r * d + j)];
                        dv[ko[r] * d + j] += dv_p[to_size(i)][to_size(r * d + j)];
                    }
                    p_sum[head * to_size(n) + to_size(qo[r])] += sum_p[to_size(i)][to_size(r)];
                }
            }
        });
    }
    // P summed over the passes is 1 in every row when lse is the forward's (within float32's
    // rounding of S, as attention_backward allows it), and 0 in a row with no key.
    const double unit = std::ldexp(1.0, -24);
    for (size_t i = 0; i < setup.heads.size(); ++i) {
        const HeadState& h = setup.heads[i];
        const double* kn = c.k_norms.row(h.b, h.h, 0);
        const double k_max = *std::max_element(kn, kn + n);
        for (int64_t qi = 0; qi < n; ++qi) {
            const double given = lse.at(h.b, h.h, qi, 0), sum = p_sum[i * to_size(n) + to_size(qi)];
            const double bound = std::abs(double{c.scale}) * c.q_norms.at(h.b, h.h, qi, 0) * k_max;
            const double tolerance = 1e-3 + 2.0 * static_cast<double>(d + 1) * unit * bound + 4 * unit * std::abs(given);
            const bool bad = given == kNegInf ? false : !(std::abs(std::log(sum)) <= std::min(tolerance, 0.1));
            if (!bad) continue;
            char text[64];
            std::snprintf(text, sizeof text, "%.7g", sum);
            throw Error(what + ": lse does not match Q, K, the scale and the content pattern at row [" +
                        std::to_string(h.b) + ", " + std::to_string(h.h) + ", " + std::to_string(qi) +
                        "]: P = exp(S - lse) summed over the passes is " + text +
                        " instead of 1 (pass the lse content_attention_forward returned for these inputs)");
        }
    }
    for (const Tensor* t : {&g.dq, &g.dk, &g.dv}) {
        for (size_t e = 0; e < t->data.size(); ++e) {
            if (!std::isfinite(t->data[e])) {
                throw Error(what + ": a gradient at " + tensor_index_text(s, e) +
                            " overflows float32 (the gradients are linear in dO: scale dO down, and them back up)");
            }
        }
    }
    return g;
}

std::vector<uint8_t> content_allowed_dense(const Tensor& q, const Tensor& k, const MaskSet& masks, int64_t layer,
                                           int64_t b, int64_t h, const ContentOptions& options) {
    const std::string what = "content_allowed_dense";
    attention_check_shapes(what, q.shape, k.shape, k.shape, masks, layer);
    const int64_t n = q.shape.n;
    if (b < 0 || b >= q.shape.batch || h < 0 || h >= q.shape.heads) {
        throw Error(what + ": (batch " + std::to_string(b) + ", head " + std::to_string(h) + ") is outside " +
                    tensor_shape_text(q.shape) + " (give 0 <= b < batch, 0 <= h < heads)");
    }
    if (n > 32768) {
        throw Error(what + ": n = " + std::to_string(n) + " needs n^2 bytes; this function takes n up to 32768 (check a smaller n)");
    }
    tensor_check_finite(q, "Q");
    tensor_check_finite(k, "K");
    const int threads = attention_threads(what, options.threads);
    std::vector<uint8_t> dense(to_size(n * n), 0);
    const ContentSpec* spec = content_spec_of(masks, layer, h);
    if (spec == nullptr) {
        parallel_for(n, threads, [&](int64_t begin, int64_t end) {
            for (int64_t qi = begin; qi < end; ++qi) block_mask_dense_row(masks.at(layer, h), qi, dense.data() + qi * n);
        });
        return dense;
    }
    ContentTimes times;
    const Setup setup = content_setup(what, q, k, masks, layer, options, threads, times, b, h);
    const HeadState& hs = setup.heads.front();
    parallel_for(n, threads, [&](int64_t begin, int64_t end) {
        for (int64_t qi = begin; qi < end; ++qi) allowed_row(hs, qi, dense.data() + qi * n);
    });
    return dense;
}

std::vector<ContentReport> content_report(const Tensor& q, const Tensor& k, const MaskSet& masks, int64_t layer,
                                          const ContentOptions& options) {
    const std::string what = "content_report";
    const Checked c = content_check(what, q, k, k, masks, layer, options);
    ContentTimes times;
    const Setup setup = content_setup(what, q, k, masks, layer, options, c.threads, times);
    const std::vector<int64_t> pairs = setup_pairs(setup, q, c.threads);
    std::vector<ContentReport> reports;
    for (size_t i = 0; i < setup.heads.size(); ++i) reports.push_back(head_report(setup.heads[i], pairs[i]));
    if (options.recall) reports_recall(setup, q, k, c.scale, c.threads, reports);
    return reports;
}

} // namespace sparsa
