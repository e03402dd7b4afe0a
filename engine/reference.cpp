// The dense reference in double precision: each query row scores its allowed keys, takes an exact
// softmax, and mixes the values; the backward differentiates the same formulas by hand.
#include "engine/reference.hpp"

#include "engine/error.hpp"
#include "engine/threads.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace sparsa {

namespace {

size_t to_size(int64_t i) { return static_cast<size_t>(i); }

std::string text(int64_t v) { return std::to_string(v); }

// "8e+40", "0.125", "nan": a double as C's %g writes it.
std::string number_text(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

// Half the physical memory: the default ceiling of a reference call.
int64_t default_max_bytes() {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return int64_t{8} << 30;
    return static_cast<int64_t>(pages) * page / 2;
}

// "512 bytes", "3.5 MiB"
std::string bytes_text(double bytes) {
    if (bytes < 1 << 20) return text(static_cast<int64_t>(bytes)) + " bytes";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / (1 << 20));
    return buf;
}

void check_bytes(const std::string& what, double bytes, const ReferenceOptions& options) {
    const int64_t limit = options.max_bytes > 0 ? options.max_bytes : default_max_bytes();
    if (bytes > static_cast<double>(limit)) {
        throw Error(what + ": the dense reference needs " + bytes_text(bytes) + " for this size but may use " +
                    bytes_text(static_cast<double>(limit)) +
                    " (compute fewer query rows at a time, or use a smaller batch, heads, n or d)");
    }
}

// The keys query q may attend to, and their scores scale * q.k, appended to keys / scores.
// Candidates come from the kept blocks of q's block row; each is tested with mask.allowed.
template <typename T>
void row_scores(const std::string& what, const BasicTensor<T>& q, const BasicTensor<T>& k, int64_t b, int64_t h,
                int64_t qi, const BlockMask& mask, double scale, std::vector<int64_t>& keys, std::vector<double>& scores) {
    keys.clear();
    scores.clear();
    const int64_t d = q.shape.d, qb = qi / mask.block;
    const T* qrow = q.row(b, h, qi);
    for (int64_t e = mask.row_ptr[to_size(qb)]; e < mask.row_ptr[to_size(qb) + 1]; ++e) {
        const int64_t k0 = int64_t{mask.col_idx[to_size(e)]} * mask.block, k1 = std::min(mask.n, k0 + mask.block);
        for (int64_t key = k0; key < k1; ++key) {
            if (!mask.allowed(qi, key)) continue;
            const T* krow = k.row(b, h, key);
            double dot = 0;
            for (int64_t j = 0; j < d; ++j) dot += static_cast<double>(qrow[j]) * static_cast<double>(krow[j]);
            if (!std::isfinite(scale * dot)) {   // float inputs never get here; double ones of ~1e150 may
                throw Error(what + ": the score of Q row [" + text(b) + ", " + text(h) + ", " + text(qi) + "] and K row [" +
                            text(b) + ", " + text(h) + ", " + text(key) +
                            "] overflows double (scale Q or K down, or lower `scale`)");
            }
            keys.push_back(key);
            scores.push_back(scale * dot);
        }
    }
}

// Turns scores into probabilities in place (exact softmax) and returns log(sum(exp(scores))).
double row_softmax(std::vector<double>& scores) {
    const double m = *std::max_element(scores.begin(), scores.end());
    double sum = 0;
    for (double& s : scores) {
        s = std::exp(s - m);
        sum += s;
    }
    for (double& s : scores) s /= sum;
    return m + std::log(sum);
}

template <typename T>
ReferenceOutput forward(const BasicTensor<T>& q, const BasicTensor<T>& k, const BasicTensor<T>& v, const MaskSet& masks,
                        int64_t layer, const ReferenceOptions& options) {
    const std::string what = "reference_forward";
    attention_check_shapes(what, q.shape, k.shape, v.shape, masks, layer);
    const TensorShape s = q.shape;
    const int64_t row_begin = options.row_begin, row_end = options.row_end < 0 ? s.n : options.row_end;
    if (row_begin < 0 || row_end > s.n || row_begin > row_end) {
        throw Error(what + ": query rows [" + text(row_begin) + ", " + text(row_end) + ") are not inside [0, " + text(s.n) +
                    ") (give 0 <= row_begin <= row_end <= n, or row_end = -1 for n)");
    }
    const int64_t rows = row_end - row_begin;
    const int threads = attention_threads(what, options.threads);
    const double scale = attention_scale(what, options.scale, s.d);
    check_bytes(what,
                8.0 * static_cast<double>(s.batch * s.heads * rows) * static_cast<double>(s.d + 1) +
                    16.0 * threads * static_cast<double>(s.n),
                options);
    tensor_check_finite(q, "Q");
    tensor_check_finite(k, "K");
    tensor_check_finite(v, "V");

    ReferenceOutput out;
    out.o = tensor_zeros<double>({s.batch, s.heads, rows, s.d});
    out.lse = tensor_zeros<double>({s.batch, s.heads, rows, 1});
    // One item per (b, h, row); each writes only its own row of o and lse.
    parallel_for(s.batch * s.heads * rows, threads, [&](int64_t begin, int64_t end) {
        std::vector<int64_t> keys;
        std::vector<double> p;
        for (int64_t item = begin; item < end; ++item) {
            const int64_t r = item % rows, bh = item / rows, b = bh / s.heads, h = bh % s.heads;
            const BlockMask& mask = masks.at(layer, h);
            row_scores(what, q, k, b, h, row_begin + r, mask, scale, keys, p);
            double* o = out.o.row(b, h, r);
            if (keys.empty()) {   // no allowed key: zeros, and the log of an empty sum
                out.lse.at(b, h, r, 0) = -std::numeric_limits<double>::infinity();
                continue;
            }
            out.lse.at(b, h, r, 0) = row_softmax(p);
            for (size_t t = 0; t < keys.size(); ++t) {
                const T* vrow = v.row(b, h, keys[t]);
                for (int64_t j = 0; j < s.d; ++j) o[j] += p[t] * static_cast<double>(vrow[j]);
            }
        }
    });
    return out;
}

template <typename T>
ReferenceGrads backward(const BasicTensor<T>& q, const BasicTensor<T>& k, const BasicTensor<T>& v,
                        const BasicTensor<T>& d_o, const MaskSet& masks, int64_t layer, const ReferenceOptions& options) {
    const std::string what = "reference_backward";
    attention_check_shapes(what, q.shape, k.shape, v.shape, masks, layer);
    const TensorShape s = q.shape;
    if (!(d_o.shape == s)) {
        throw Error(what + ": dO is " + tensor_shape_text(d_o.shape) + " but Q is " + tensor_shape_text(s) +
                    " (dO is the gradient of O, which has Q's shape)");
    }
    const int threads = attention_threads(what, options.threads);
    const double scale = attention_scale(what, options.scale, s.d);
    check_bytes(what, 24.0 * static_cast<double>(s.size()) + 32.0 * threads * static_cast<double>(s.n), options);
    tensor_check_finite(q, "Q");
    tensor_check_finite(k, "K");
    tensor_check_finite(v, "V");
    tensor_check_finite(d_o, "dO");

    ReferenceGrads g;
    g.dq = tensor_zeros<double>(s);
    g.dk = tensor_zeros<double>(s);
    g.dv = tensor_zeros<double>(s);
    // One item per (b, h): dK and dV gather from every row of the head, so a head is one task.
    parallel_for(s.batch * s.heads, threads, [&](int64_t begin, int64_t end) {
        std::vector<int64_t> keys;
        std::vector<double> p, dp;
        for (int64_t bh = begin; bh < end; ++bh) {
            const int64_t b = bh / s.heads, h = bh % s.heads;
            const BlockMask& mask = masks.at(layer, h);
            for (int64_t qi = 0; qi < s.n; ++qi) {
                row_scores(what, q, k, b, h, qi, mask, scale, keys, p);
                if (keys.empty()) continue;   // o = 0 whatever q, k, v are: no gradient
                row_softmax(p);
                const T* dorow = d_o.row(b, h, qi);
                // dP = dO . v for each key, D = sum(P * dP) (which is dO . O).
                dp.assign(keys.size(), 0.0);
                double dsum = 0;
                for (size_t t = 0; t < keys.size(); ++t) {
                    const T* vrow = v.row(b, h, keys[t]);
                    for (int64_t j = 0; j < s.d; ++j) dp[t] += static_cast<double>(dorow[j]) * static_cast<double>(vrow[j]);
                    dsum += p[t] * dp[t];
                }
                const T* qrow = q.row(b, h, qi);
                double* dq = g.dq.row(b, h, qi);
                for (size_t t = 0; t < keys.size(); ++t) {
                    const double ds = p[t] * (dp[t] - dsum);   // dS = P * (dP - D)
                    const T* krow = k.row(b, h, keys[t]);
                    double* dk = g.dk.row(b, h, keys[t]);
                    double* dv = g.dv.row(b, h, keys[t]);
                    for (int64_t j = 0; j < s.d; ++j) {
                        dq[j] += scale * ds * static_cast<double>(krow[j]);   // dQ = scale dS K
                        dk[j] += scale * ds * static_cast<double>(qrow[j]);   // dK = scale dS^T Q
                        dv[j] += p[t] * static_cast<double>(dorow[j]);        // dV = P^T dO
                    }
                }
            }
        }
    });
    return g;
}

} // namespace

void attention_check_shapes(const std::string& what, const TensorShape& q, const TensorShape& k, const TensorShape& v,
                            const MaskSet& masks, int64_t layer) {
    if (q.batch < 1 || q.heads < 1 || q.n < 1 || q.d < 1) {
        throw Error(what + ": Q is " + tensor_shape_text(q) + " (need [batch, heads, n, d] with every dimension >= 1)");
    }
    if (q.d > kMaxHeadDim) {
        throw Error(what + ": head dimension d = " + text(q.d) + " is above " + text(kMaxHeadDim) +
                    " (the engines support d from 1 to 256; split the head)");
    }
    if (!(k == q) || !(v == q)) {
        throw Error(what + ": Q is " + tensor_shape_text(q) + ", K is " + tensor_shape_text(k) + ", V is " +
                    tensor_shape_text(v) + " (all three must be [batch, heads, n, d] of one shape)");
    }
    if (layer < 0 || layer >= masks.layers) {
        throw Error(what + ": layer " + text(layer) + " is out of range (the masks have " + text(masks.layers) +
                    " layer" + (masks.layers == 1 ? "" : "s") + ": use 0 to " + text(masks.layers - 1) + ")");
    }
    if (masks.n != q.n) {
        throw Error(what + ": the masks were compiled for n = " + text(masks.n) + " but the tensors have n = " + text(q.n) +
                    " (compile the script with --n " + text(q.n) + ")");
    }
    if (masks.heads != q.heads) {
        throw Error(what + ": the masks have " + text(masks.heads) + " head" + (masks.heads == 1 ? "" : "s") +
                    " per layer but the tensors have " + text(q.heads) + " (give tensors with " + text(masks.heads) +
                    " heads, or a script with `heads " + text(q.heads) + "`)");
    }
    if (static_cast<int64_t>(masks.masks.size()) != masks.layers * masks.heads) {
        throw Error(what + ": the mask set holds " + text(static_cast<int64_t>(masks.masks.size())) + " masks for " +
                    text(masks.layers) + " layers x " + text(masks.heads) + " heads (build it with mask_set_make)");
    }
    for (int64_t h = 0; h < masks.heads; ++h) {
        const auto& m = masks.masks[to_size(layer * masks.heads + h)];
        if (!m || m->n != q.n || m->block != masks.block || !block_size_valid(m->block) ||
            static_cast<int64_t>(m->row_ptr.size()) != m->q_blocks() + 1) {
            throw Error(what + ": the mask of layer " + text(layer) + ", head " + text(h) + " is missing or not for n = " +
                        text(q.n) + ", block " + text(masks.block) + " (build sets with mask_set_make, or load them)");
        }
    }
}

double attention_default_scale(int64_t d) { return 1.0 / std::sqrt(static_cast<double>(d)); }

double attention_scale(const std::string& what, double scale, int64_t d) {
    if (!std::isfinite(scale)) {
        throw Error(what + ": scale is " + number_text(scale) +
                    " (give a finite softmax scale, or 0 for 1 / sqrt(d) = " + number_text(attention_default_scale(d)) + ")");
    }
    return scale != 0 ? scale : attention_default_scale(d);
}

TensorD tensor_row_norms(const Tensor& x, int threads) {
    TensorD norms = tensor_zeros<double>({x.shape.batch, x.shape.heads, x.shape.n, 1});
    const int64_t d = x.shape.d;
    parallel_for(x.shape.batch * x.shape.heads * x.shape.n, threads, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const float* row = x.data.data() + r * d;
            double sum = 0;
            for (int64_t j = 0; j < d; ++j) sum += static_cast<double>(row[j]) * static_cast<double>(row[j]);
            norms.data[to_size(r)] = std::sqrt(sum);
        }
    });
    return norms;
}

int attention_threads(const std::string& what, int threads) {
    if (threads < 0) {
        throw Error(what + ": threads is " + text(threads) +
                    " (give a positive thread count, or 0 for SPARSA_THREADS or else the core count)");
    }
    return threads > 0 ? threads : thread_count();
}

void attention_check_score_range(const std::string& what, const TensorD& q_norms, const TensorD& k_norms, double scale,
                                 ScoreEngine engine) {
    const TensorShape s = q_norms.shape;
    const double abs_scale = std::abs(scale);
    // "Q row [b, h, i]"
    auto row_text = [&](const char* name, int64_t b, int64_t h, int64_t i) {
        return std::string(name) + " row [" + text(b) + ", " + text(h) + ", " + text(i) + "]";
    };
    for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t h = 0; h < s.heads; ++h) {
            // The largest row norms of Q and of K in this head: every score is at most their product.
            const double* qn = q_norms.row(b, h, 0);
            const double* kn = k_norms.row(b, h, 0);
            const int64_t qi = std::max_element(qn, qn + s.n) - qn, kj = std::max_element(kn, kn + s.n) - kn;
            const double q = qn[qi], k = kn[kj], bound = abs_scale * q * k;
            auto rows = [&] {
                return row_text("Q", b, h, qi) + " and " + row_text("K", b, h, kj) + " have norms " + number_text(q) +
                       " and " + number_text(k);
            };
            if (bound > kMaxScore) {
                throw Error(what + ": " + rows() + ": with scale " + number_text(scale) + ", scores up to " +
                            number_text(bound) + " overflow float32 (the engines take scores up to " +
                            number_text(kMaxScore) + ": scale Q or K down, or lower `scale`)");
            }
            if (engine == ScoreEngine::cuda_tensor_cores && bound > kMaxTensorCoreScore) {
                throw Error(what + ": " + rows() + ": with scale " + number_text(scale) + ", scores up to " +
                            number_text(bound) + " are beyond the " + number_text(kMaxTensorCoreScore) +
                            " that the tensor-core kernels (2 to 19) take (scale Q or K down, lower `scale`, or use "
                            "kernel 1, which takes scores up to " + number_text(kMaxScore) + ")");
            }
            if (engine == ScoreEngine::cpu && abs_scale * q > kMaxScore) {
                throw Error(what + ": " + row_text("Q", b, h, qi) + " has norm " + number_text(q) + ": times scale " +
                            number_text(scale) + " it overflows float32 (the engine scales Q first: scale Q down and "
                            "K up, or lower `scale`)");
            }
            if (engine != ScoreEngine::cpu && q * k > kMaxScore) {
                throw Error(what + ": " + rows() + ": their dot products, up to " + number_text(q * k) +
                            ", overflow float32 before the scale " + number_text(scale) +
                            " is applied (scale Q or K down and raise `scale` to match)");
            }
        }
    }
}

ReferenceOutput reference_forward(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks, int64_t layer,
                                  const ReferenceOptions& options) {
    return forward(q, k, v, masks, layer, options);
}

ReferenceOutput reference_forward(const TensorD& q, const TensorD& k, const TensorD& v, const MaskSet& masks,
                                  int64_t layer, const ReferenceOptions& options) {
    return forward(q, k, v, masks, layer, options);
}

ReferenceGrads reference_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& d_o,
                                  const MaskSet& masks, int64_t layer, const ReferenceOptions& options) {
    return backward(q, k, v, d_o, masks, layer, options);
}

ReferenceGrads reference_backward(const TensorD& q, const TensorD& k, const TensorD& v, const TensorD& d_o,
                                  const MaskSet& masks, int64_t layer, const ReferenceOptions& options) {
    return backward(q, k, v, d_o, masks, layer, options);
}

} // namespace sparsa
