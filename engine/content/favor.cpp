// FAVOR+ on the CPU: random features drawn on the host, features of Q and K in float32, the
// states phi(K)^T V, phi(K)^T 1 summed in double by chunks, causal attention as a chunked scan
// (the chunk's own keys through a masked [C, C] product, earlier ones through the state).
//
// [SECTION] features: omega from the generator (Gram-Schmidt in double), or given
// [SECTION] phi: x -> exp(omega x' - ...) with the stabilisers of favor.hpp
// [SECTION] scans: forward (O, and for the backward dQ) and reverse (dK, dV)
// [SECTION] entry points: checks, heads on threads, the report
// [SECTION] error against exact attention
#include "engine/content/favor.hpp"

#include "engine/block_mask.hpp"
#include "engine/content/random_numbers.hpp"
#include "engine/error.hpp"
#include "engine/reference.hpp"
#include "engine/threads.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace sparsa {

namespace {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const Matrix>;
using Map = Eigen::Map<Matrix>;

// Keys per chunk of the causal scan: the chunk's own pairs cost C (m + d) per row, the state
// 2 m d, so C = 64 keeps the masked part under the state's cost at m = 256, d = 64. The
// bidirectional passes stream in larger chunks (only the GEMM shapes change).
constexpr int64_t kCausalChunk = 64;
constexpr int64_t kChunk = 256;

size_t to_size(int64_t i) { return static_cast<size_t>(i); }
std::string text(int64_t v) { return std::to_string(v); }
std::string number_text(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

// [SECTION] features

void check_feature_size(int64_t m, int64_t d, const std::string& what) {
    if (m < 1 || d < 1) {
        throw Error(what + ": FAVOR+ features [m, d] = [" + text(m) + ", " + text(d) +
                    "] (need m >= 1 features of the head's d >= 1)");
    }
    if (m > (int64_t{1} << 40) / d) {
        throw Error(what + ": FAVOR+ features [" + text(m) + ", " + text(d) + "] are too many (use fewer features)");
    }
}

} // namespace

FavorFeatures favor_features_draw(uint64_t seed, int64_t layer, int64_t head, int64_t draw, int64_t m, int64_t d) {
    check_feature_size(m, d, "favor_features_draw");
    RandomStream stream(seed, layer, head, draw);
    std::vector<double> omega(to_size(m * d)), block(to_size(d * d));
    const int64_t blocks = (m + d - 1) / d;
    for (int64_t b = 0; b < blocks; ++b) {
        for (double& x : block) x = stream.normal();
        const int64_t rows = std::min(d, m - b * d);
        // Gram-Schmidt on the rows, twice ("twice is enough": orthogonal to double's rounding).
        for (int64_t a = 0; a < rows; ++a) {
            double* row = block.data() + a * d;
            double before = 0;
            for (int64_t t = 0; t < d; ++t) before += row[t] * row[t];
            for (int pass = 0; pass < 2; ++pass) {
                for (int64_t p = 0; p < a; ++p) {
                    const double* prev = block.data() + p * d;
                    double dot = 0;
                    for (int64_t t = 0; t < d; ++t) dot += row[t] * prev[t];
                    for (int64_t t = 0; t < d; ++t) row[t] -= dot * prev[t];
                }
            }
            double norm = 0;
            for (int64_t t = 0; t < d; ++t) norm += row[t] * row[t];
            norm = std::sqrt(norm);
            if (!(norm > 1e-10 * std::sqrt(before))) {   // probability 0 for Gaussian rows
                throw Error("favor_features_draw: block " + text(b) + " of seed " + std::to_string(seed) +
                            " is singular (draw with another seed)");
            }
            for (int64_t t = 0; t < d; ++t) row[t] /= norm;
        }
        std::copy(block.begin(), block.begin() + rows * d, omega.begin() + b * d * d);
    }
    // Each row takes the norm of an independent Gaussian row (Performer's "regular" scaling).
    for (int64_t r = 0; r < m; ++r) {
        double sum = 0;
        for (int64_t t = 0; t < d; ++t) {
            const double x = stream.normal();
            sum += x * x;
        }
        const double norm = std::sqrt(sum);
        for (int64_t t = 0; t < d; ++t) omega[to_size(r * d + t)] *= norm;
    }
    FavorFeatures f;
    f.m = m;
    f.d = d;
    f.omega.assign(omega.begin(), omega.end());
    return f;
}

FavorFeatures favor_features_make(std::vector<float> omega, int64_t m, int64_t d, const std::string& what) {
    check_feature_size(m, d, what);
    if (static_cast<int64_t>(omega.size()) != m * d) {
        throw Error(what + ": FAVOR+ features hold " + text(static_cast<int64_t>(omega.size())) +
                    " values but [m, d] = [" + text(m) + ", " + text(d) + "] needs " + text(m * d) +
                    " (give omega as m rows of d values)");
    }
    for (size_t e = 0; e < omega.size(); ++e) {
        if (!std::isfinite(omega[e])) {
            throw Error(what + ": FAVOR+ feature [" + text(static_cast<int64_t>(e) / d) + ", " +
                        text(static_cast<int64_t>(e) % d) + "] is " + (std::isnan(omega[e]) ? "NaN" : "infinite") +
                        " (features must be finite)");
        }
    }
    FavorFeatures f;
    f.m = m;
    f.d = d;
    f.omega = std::move(omega);
    return f;
}

FavorFeatures favor_features_for_head(const ContentSpec& spec, int64_t layer, int64_t head, int64_t d, int64_t draw,
                                      const ContentArrays* arrays, const std::string& what) {
    if (spec.kind != ContentKind::favor) {
        throw Error(what + ": head " + text(head) + " of layer " + text(layer) +
                    " is not a favor head (only favor(...) heads have FAVOR+ features)");
    }
    if (spec.features < 1) {
        throw Error(what + ": favor(features = " + text(spec.features) + ") (give features >= 1)");
    }
    if (const ContentArray* array = content_array_find(arrays, spec, what)) {
        content_array_check_shape(*array, {spec.features, d}, what,
                                  "FAVOR+ features, float32 [features, d]: features = " + text(spec.features) +
                                      " as the script says, d = " + text(d) + " as Q and K");
        return favor_features_make(array->values, spec.features, d, what + ": " + array->path);
    }
    return favor_features_draw(spec.seed, layer, head, draw, spec.features, d);
}

namespace {

// [SECTION] phi

// What one head's features did, for the report.
struct FeatureStats {
    int64_t lost_rows = 0;      // rows with a feature exponent below kFavorMinExponent
    double spread = 0;          // the most negative exponent, negated
    double largest_norm = 0;    // max |x'|
    double mean_sq_norm = 0;    // mean |x'|^2
};

// phi [n, m] of the rows x [n, d] of one head (x' = sign * root_scale * x):
//   exponent_jr = omega_r x'_j - c_j          (queries: c_j = max_r omega_r x'_j)
//   exponent_jr = omega_r x'_j - |x'_j|^2 / 2 - C   (keys: C = the max of that over j and r)
//   phi_jr = exp(exponent_jr), or 0 below kFavorMinExponent.
// omega x'_j is |x'_j| (omega x^_j), x^ the unit row, as a float product of bounded operands: no
// float overflow for any finite x, and the exponent's rounding is relative to |x'| max |omega_r|.
// The row's largest entry of omega x^ is subtracted in float before |x'| multiplies, so the
// exponent's rounding is that of the spread, in double where the norms come in.
// x_hat: scratch [n, d]. Returns what the features did, for the report.
FeatureStats phi_compute(const float* x, int64_t n, int64_t d, const Matrix& omega, double root_scale, float sign,
                         bool keys, Matrix& phi, Matrix& x_hat) {
    const int64_t m = omega.rows();
    std::vector<double> norm(to_size(n)), shift(to_size(n));
    x_hat.resize(n, d);
    for (int64_t j = 0; j < n; ++j) {
        const float* row = x + j * d;
        double sum = 0;
        for (int64_t t = 0; t < d; ++t) sum += static_cast<double>(row[t]) * static_cast<double>(row[t]);
        const double length = std::sqrt(sum);
        norm[to_size(j)] = length * root_scale;   // |x'|
        const double inverse = length > 0 ? 1.0 / length : 0.0;
        for (int64_t t = 0; t < d; ++t) x_hat(j, t) = static_cast<float>(sign * row[t] * inverse);
    }
    phi.resize(n, m);
    phi.noalias() = x_hat * omega.transpose();   // omega x^ [n, m]
    FeatureStats stats;
    double key_max = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < n; ++j) {
        float* row = phi.data() + j * m;
        const float top = *std::max_element(row, row + m);
        const double length = norm[to_size(j)];
        stats.largest_norm = std::max(stats.largest_norm, length);
        stats.mean_sq_norm += length * length / static_cast<double>(n);
        // The row's exponents relative to its largest: |x'| (p_r - p_max) <= 0.
        for (int64_t r = 0; r < m; ++r) row[r] = static_cast<float>(length * static_cast<double>(row[r] - top));
        if (keys) {
            shift[to_size(j)] = length * static_cast<double>(top) - 0.5 * length * length;
            key_max = std::max(key_max, shift[to_size(j)]);
        }
    }
    const float floor = static_cast<float>(kFavorMinExponent);
    for (int64_t j = 0; j < n; ++j) {
        Eigen::Map<Eigen::ArrayXf> row(phi.data() + j * m, m);
        if (keys) row += static_cast<float>(shift[to_size(j)] - key_max);
        const float lowest = row.minCoeff();
        stats.spread = std::max(stats.spread, -static_cast<double>(lowest));
        if (lowest < floor) {
            ++stats.lost_rows;
            row = (row < floor).select(0.0f, row.max(floor).exp());
        } else {
            row = row.exp();
        }
    }
    return stats;
}

// [SECTION] scans

// One head's inputs and features for the scans.
struct Head {
    int64_t n = 0, d = 0, m = 0;
    bool causal = false;
    const Matrix* phi_q = nullptr;   // [n, m]
    const Matrix* phi_k = nullptr;   // [n, m]
    const float* v = nullptr;        // [n, d]
    const Matrix* omega = nullptr;   // [m, d]
};

// Per-row results of the forward scan.
struct Rows {
    std::vector<double> inverse_den;   // [n]: 1 / D, or 0 for a degraded row (left out of the backward)
    std::vector<float> g_dot_o;        // [n]: d_o . o (backward only)
};

struct RowReport {
    int64_t degraded = 0, zero = 0;
    double worst_ratio = 1;
    int64_t worst_i = -1;
};

// The forward scan over query chunks: o [n, d] and rows.inverse_den; with g (d_o, [n, d]) also
// dq' = (phi_q o u / D) omega [n, d], where u_i = sum over keys j of query i of
// phi_k_j (g_i . v_j - g_i . o_i) is dL/dphi_q_i times D_i.
// Per chunk: N = phi_q S + (causal) P V with P = phi_q phi_k^T of the chunk, masked to j <= i;
// D = phi_q z + (causal) rowsum(P) in double, z = phi_k^T 1 so far (every key, bidirectional).
RowReport scan_forward(const Head& h, float* o, Rows& rows, const float* g, float* dq_prime) {
    const int64_t n = h.n, d = h.d, m = h.m;
    const Matrix& phi_q = *h.phi_q;
    const Matrix& phi_k = *h.phi_k;
    const int64_t chunk = h.causal ? kCausalChunk : kChunk;
    MatrixD state = MatrixD::Zero(m, d);            // S = phi_k^T V over the keys so far
    Eigen::VectorXd z = Eigen::VectorXd::Zero(m);   // z = phi_k^T 1
    auto add_keys = [&](int64_t c0, int64_t count) {
        const ConstMap v_c(h.v + c0 * d, count, d);
        const auto k_c = phi_k.middleRows(c0, count);
        state += (k_c.transpose() * v_c).cast<double>();
        z += k_c.cast<double>().colwise().sum().transpose();
    };
    if (!h.causal) {
        for (int64_t c0 = 0; c0 < n; c0 += chunk) add_keys(c0, std::min(chunk, n - c0));
    }
    Matrix state_f = state.cast<float>();
    Eigen::RowVectorXf z_f = z.transpose().cast<float>();
    const float key_top = phi_k.maxCoeff();
    rows.inverse_den.assign(to_size(n), 0.0);
    if (g != nullptr) rows.g_dot_o.assign(to_size(n), 0.0f);
    RowReport report;
    Matrix num, pairs, u, da;
    Eigen::VectorXd den;
    Eigen::VectorXf q_top, inverse;
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
        const int64_t count = std::min(chunk, n - c0);
        const auto q_c = phi_q.middleRows(c0, count);
        const auto k_c = phi_k.middleRows(c0, count);
        const ConstMap v_c(h.v + c0 * d, count, d);
        num.noalias() = q_c * state_f;             // N = phi_q S (earlier chunks, or every key)
        den.noalias() = q_c.cast<double>() * z;    // D = phi_q z
        if (h.causal) {
            pairs.noalias() = q_c * k_c.transpose();   // the chunk's own pairs, j <= i
            pairs.triangularView<Eigen::StrictlyUpper>().setZero();
            num.noalias() += pairs * v_c;
            den += pairs.cast<double>().rowwise().sum();
        }
        q_top = q_c.rowwise().maxCoeff();
        inverse.resize(count);
        for (int64_t i = 0; i < count; ++i) {
            const int64_t row = c0 + i;
            const double scale = static_cast<double>(q_top[i]) * key_top;
            const double ratio = scale > 0 ? den[i] / scale : 0.0;
            float* out = o + row * d;
            const bool degraded = !(ratio >= kFavorMinRatio);
            if (ratio < report.worst_ratio) {
                report.worst_ratio = ratio;
                report.worst_i = row;
            }
            if (degraded) {
                ++report.degraded;
                if (!(den[i] > 0)) ++report.zero;
            }
            bool finite = den[i] > 0;
            for (int64_t t = 0; t < d && finite; ++t) {
                out[t] = static_cast<float>(static_cast<double>(num(i, t)) / den[i]);
                finite = std::isfinite(out[t]);
            }
            if (!finite) {
                // V is checked so N cannot overflow: only a degraded row gets here (D = 0, or a
                // D so small that N / D leaves float32). It gives 0, as an empty row does.
                if (!degraded) {
                    throw Error("favor_forward: row " + text(row) + " of a head gave a non-finite o with denominator " +
                                number_text(den[i]) + " (please report this input)");
                }
                std::fill(out, out + d, 0.0f);
            }
            if (!degraded && finite) rows.inverse_den[to_size(row)] = 1.0 / den[i];
            inverse[i] = static_cast<float>(rows.inverse_den[to_size(row)]);
            if (g != nullptr) {
                const float* g_i = g + row * d;
                double e = 0;
                for (int64_t t = 0; t < d; ++t) e += static_cast<double>(g_i[t]) * out[t];
                rows.g_dot_o[to_size(row)] = static_cast<float>(e);
            }
        }
        if (g != nullptr) {
            const ConstMap g_c(g + c0 * d, count, d);
            const Eigen::Map<const Eigen::VectorXf> e_c(rows.g_dot_o.data() + c0, count);
            u.noalias() = g_c * state_f.transpose();   // S g_i - z (g_i . o_i): earlier keys
            u.noalias() -= e_c * z_f;
            if (h.causal) {
                pairs.noalias() = g_c * v_c.transpose();   // W_ij = g_i . v_j - g_i . o_i, j <= i
                pairs.colwise() -= e_c;
                pairs.triangularView<Eigen::StrictlyUpper>().setZero();
                u.noalias() += pairs * k_c;
            }
            // da_ir = phi_q_ir u_ir / D_i: bounded, since phi_q_ir z_ir <= D_i (0: degraded rows).
            da = q_c.cwiseProduct(u);
            da.array().colwise() *= inverse.array();
            Map(dq_prime + c0 * d, count, d).noalias() = da * (*h.omega);   // dq' = sum_r da_r omega_r
        }
        if (h.causal) {
            add_keys(c0, count);
            state_f = state.cast<float>();
            z_f = z.transpose().cast<float>();
        }
    }
    return report;
}

// The reverse scan for dK and dV, with psi_i = phi_q_i / D_i (0 for degraded rows) and
// e_i = g_i . o_i from the forward scan:
//   dphi_k_j = sum over queries i of key j of psi_i (g_i . v_j - e_i)     [m]
//   dv_j     = sum over those i of (psi_i . phi_k_j) g_i                   [d]
// by the state R = sum psi_i^T g_i, r = sum psi_i e_i over later chunks (all rows, bidirectional)
// and, causal, the chunk's own pairs i >= j. Then db = phi_k o dphi_k (the exponent's gradient)
// and dk' = db omega - k' sum_r db_r. dk_prime, dv: [n, d].
void scan_reverse(const Head& h, const Rows& rows, const float* g, const float* k_prime, float* dk_prime, float* dv) {
    const int64_t n = h.n, d = h.d, m = h.m;
    const Matrix& phi_q = *h.phi_q;
    const Matrix& phi_k = *h.phi_k;
    const int64_t chunk = h.causal ? kCausalChunk : kChunk;
    MatrixD state = MatrixD::Zero(m, d);
    Eigen::VectorXd r_state = Eigen::VectorXd::Zero(m);
    Matrix psi, pairs, dphi, db;
    auto psi_of = [&](int64_t c0, int64_t count) {
        psi = phi_q.middleRows(c0, count);
        for (int64_t i = 0; i < count; ++i) psi.row(i) *= static_cast<float>(rows.inverse_den[to_size(c0 + i)]);
    };
    auto add_queries = [&](int64_t c0, int64_t count) {
        const ConstMap g_c(g + c0 * d, count, d);
        state += (psi.transpose() * g_c).cast<double>();
        for (int64_t i = 0; i < count; ++i) {
            r_state += psi.row(i).transpose().cast<double>() * static_cast<double>(rows.g_dot_o[to_size(c0 + i)]);
        }
    };
    if (!h.causal) {
        for (int64_t c0 = 0; c0 < n; c0 += chunk) {
            const int64_t count = std::min(chunk, n - c0);
            psi_of(c0, count);
            add_queries(c0, count);
        }
    }
    Matrix state_f = state.cast<float>();
    Eigen::RowVectorXf r_f = r_state.transpose().cast<float>();
    const int64_t chunks = (n + chunk - 1) / chunk;
    for (int64_t c = chunks - 1; c >= 0; --c) {
        const int64_t c0 = c * chunk, count = std::min(chunk, n - c0);
        const auto k_c = phi_k.middleRows(c0, count);
        const ConstMap v_c(h.v + c0 * d, count, d);
        Map dv_c(dv + c0 * d, count, d);
        dphi.noalias() = v_c * state_f.transpose();   // R v_j - r: later queries
        dphi.rowwise() -= r_f;
        dv_c.noalias() = k_c * state_f;                // phi_k_j R
        if (h.causal) {
            const ConstMap g_c(g + c0 * d, count, d);
            psi_of(c0, count);
            pairs.noalias() = g_c * v_c.transpose();   // W_ij = g_i . v_j - e_i, j <= i
            for (int64_t i = 0; i < count; ++i) pairs.row(i).array() -= rows.g_dot_o[to_size(c0 + i)];
            pairs.triangularView<Eigen::StrictlyUpper>().setZero();
            dphi.noalias() += pairs.transpose() * psi;
            pairs.noalias() = psi * k_c.transpose();   // psi_i . phi_k_j, j <= i
            pairs.triangularView<Eigen::StrictlyUpper>().setZero();
            dv_c.noalias() += pairs.transpose() * g_c;
            add_queries(c0, count);
            state_f = state.cast<float>();
            r_f = r_state.transpose().cast<float>();
        }
        db = k_c.cwiseProduct(dphi);
        Map dk_c(dk_prime + c0 * d, count, d);
        dk_c.noalias() = db * (*h.omega);
        for (int64_t j = 0; j < count; ++j) {
            const double sum = db.row(j).cast<double>().sum();
            const float* kp = k_prime + (c0 + j) * d;
            for (int64_t t = 0; t < d; ++t) {
                dk_c(j, t) = static_cast<float>(static_cast<double>(dk_c(j, t)) - static_cast<double>(kp[t]) * sum);
            }
        }
    }
}

// [SECTION] entry points

struct Call {
    TensorShape shape;
    double scale = 0, root_scale = 0;
    float key_sign = 1;
    int threads = 1;
    std::vector<int64_t> features_m;   // [heads]
};

Call check_call(const std::string& what, const Tensor& q, const Tensor& k, const Tensor& v,
                const std::vector<FavorFeatures>& features, const FavorOptions& options) {
    const TensorShape s = q.shape;
    if (s.batch < 1 || s.heads < 1 || s.n < 1 || s.d < 1) {
        throw Error(what + ": Q is " + tensor_shape_text(s) + " (need [batch, heads, n, d] with every dimension >= 1)");
    }
    if (!(k.shape == s) || !(v.shape == s)) {
        throw Error(what + ": Q is " + tensor_shape_text(s) + ", K is " + tensor_shape_text(k.shape) + ", V is " +
                    tensor_shape_text(v.shape) + " (all three must be [batch, heads, n, d] of one shape)");
    }
    if (static_cast<int64_t>(features.size()) != s.heads) {
        throw Error(what + ": " + text(static_cast<int64_t>(features.size())) + " sets of FAVOR+ features for " +
                    text(s.heads) + " heads (give one [m, d] set per head: favor_features_for_head)");
    }
    for (int64_t h = 0; h < s.heads; ++h) {
        const FavorFeatures& f = features[to_size(h)];
        if (f.d != s.d || f.m < 1 || static_cast<int64_t>(f.omega.size()) != f.m * f.d) {
            throw Error(what + ": the FAVOR+ features of head " + text(h) + " are [" + text(f.m) + ", " + text(f.d) +
                        "] with " + text(static_cast<int64_t>(f.omega.size())) + " values but Q has d = " + text(s.d) +
                        " (give [m, " + text(s.d) + "] features, m >= 1: favor_features_draw or favor_features_make)");
        }
    }
    for (const auto& [t, name] : {std::pair{&q, "Q"}, std::pair{&k, "K"}, std::pair{&v, "V"}}) {
        try {
            tensor_check_finite(*t, name);
        } catch (const Error& e) {
            throw Error(what + ": " + e.what());
        }
    }
    Call call;
    call.shape = s;
    call.scale = attention_scale(what, options.scale, s.d);
    call.root_scale = std::sqrt(std::abs(call.scale));
    call.key_sign = call.scale < 0 ? -1.0f : 1.0f;
    call.threads = attention_threads(what, options.threads);
    for (const FavorFeatures& f : features) call.features_m.push_back(f.m);
    // Every sum of phi V is at most max |v| n m (features <= 1), the state at most max |v| n.
    float v_max = 0;
    for (float x : v.data) v_max = std::max(v_max, std::abs(x));
    int64_t m_max = 0;
    for (const FavorFeatures& f : features) m_max = std::max(m_max, f.m);
    const double bound = static_cast<double>(v_max) * static_cast<double>(s.n) * static_cast<double>(m_max);
    if (bound > static_cast<double>(FLT_MAX) / 4) {
        throw Error(what + ": V's largest |value| " + number_text(v_max) + " times n = " + text(s.n) + " times m = " +
                    text(m_max) + " features is " + number_text(bound) +
                    ", beyond what float32 sums hold (3.4e38 / 4; scale V down)");
    }
    return call;
}

void report_merge(FavorReport& into, const RowReport& rows, const FeatureStats& q_stats, const FeatureStats& k_stats,
                  int64_t m, int64_t b, int64_t h) {
    // Capped so that the report stays finite (exp overflows past |q'|^2 + |k'|^2 = 709).
    const double variance = std::expm1(std::min(q_stats.mean_sq_norm + k_stats.mean_sq_norm, 600.0));
    into.predicted_error = std::max(into.predicted_error, std::sqrt(variance / static_cast<double>(m)));
    into.degraded_rows += rows.degraded;
    into.zero_rows += rows.zero;
    if (rows.worst_ratio < into.worst_ratio) {
        into.worst_ratio = rows.worst_ratio;
        into.worst_b = b;
        into.worst_h = h;
        into.worst_i = rows.worst_i;
    }
    into.large_norm_queries += q_stats.lost_rows;
    into.large_norm_keys += k_stats.lost_rows;
    into.largest_spread = std::max({into.largest_spread, q_stats.spread, k_stats.spread});
    into.largest_q_norm = std::max(into.largest_q_norm, q_stats.largest_norm);
    into.largest_k_norm = std::max(into.largest_k_norm, k_stats.largest_norm);
}

// Runs body(b, h, report) for every (batch, head) on the call's threads; reports merge in order.
template <typename Body> FavorReport heads_run(const Call& call, const Body& body) {
    const int64_t total = call.shape.batch * call.shape.heads;
    struct Parts {
        RowReport rows;
        FeatureStats q, k;
        int64_t m = 1;
    };
    std::vector<Parts> parts(to_size(total));
    parallel_for(total, call.threads, [&](int64_t begin, int64_t end) {
        Matrix phi_q, phi_k, scratch, omega;
        for (int64_t bh = begin; bh < end; ++bh) {
            Parts& p = parts[to_size(bh)];
            p.m = call.features_m[to_size(bh % call.shape.heads)];
            body(bh / call.shape.heads, bh % call.shape.heads, phi_q, phi_k, scratch, omega, p.rows, p.q, p.k);
        }
    });
    FavorReport report;
    report.rows = total * call.shape.n;
    for (int64_t bh = 0; bh < total; ++bh) {
        const Parts& p = parts[to_size(bh)];
        report_merge(report, p.rows, p.q, p.k, p.m, bh / call.shape.heads, bh % call.shape.heads);
    }
    return report;
}

// phi_q and phi_k of head (b, h) and the Head that the scans read.
Head head_prepare(const Call& call, const Tensor& q, const Tensor& k, const Tensor& v,
                  const std::vector<FavorFeatures>& features, int64_t b, int64_t h, Matrix& phi_q, Matrix& phi_k,
                  Matrix& scratch, Matrix& omega, FeatureStats& q_stats, FeatureStats& k_stats, bool causal) {
    const FavorFeatures& f = features[to_size(h)];
    const int64_t n = call.shape.n, d = call.shape.d;
    omega = ConstMap(f.omega.data(), f.m, d);
    q_stats = phi_compute(q.row(b, h, 0), n, d, omega, call.root_scale, 1.0f, false, phi_q, scratch);
    k_stats = phi_compute(k.row(b, h, 0), n, d, omega, call.root_scale, call.key_sign, true, phi_k, scratch);
    Head head;
    head.n = n;
    head.d = d;
    head.m = f.m;
    head.causal = causal;
    head.phi_q = &phi_q;
    head.phi_k = &phi_k;
    head.v = v.row(b, h, 0);
    head.omega = &omega;
    return head;
}

} // namespace

std::string favor_report_warning(const FavorReport& r, const std::string& what) {
    if (!r.degraded() && !r.noisy()) return "";
    std::string s = what + ": warning: the FAVOR+ estimate is " + (r.degraded() ? "degraded:" : "noisy:");
    if (r.noisy()) {
        s += " at these norms one pair's kernel estimate has a relative error of about " + number_text(r.predicted_error) +
             " (sqrt((exp(|q'|^2 + |k'|^2) - 1) / m) with the mean |q'|^2, |k'|^2 of the worst head, m its features);";
    }
    if (r.degraded_rows > 0) {
        s += " " + text(r.degraded_rows) + " of " + text(r.rows) + " query rows have a denominator below " +
             number_text(kFavorMinRatio) + " of its scale (worst " + number_text(r.worst_ratio) + " at [" +
             text(r.worst_b) + ", " + text(r.worst_h) + ", " + text(r.worst_i) + "]" +
             (r.zero_rows > 0 ? ", " + text(r.zero_rows) + " of them 0, given o = 0" : std::string()) + ");";
    }
    if (r.large_norm_queries + r.large_norm_keys > 0) {
        s += " " + text(r.large_norm_queries) + " query rows and " + text(r.large_norm_keys) +
             " keys lost features below exp(" + number_text(kFavorMinExponent) +
             ") of the largest (exponents span " + number_text(r.largest_spread) + "; largest |q'| " +
             number_text(r.largest_q_norm) + ", |k'| " + number_text(r.largest_k_norm) + " after the scale);";
    }
    return s + " (FAVOR+ is accurate only while |q'|^2 + |k'|^2 is small beside log m: scale Q and K down, or use exact "
               "attention)";
}

FavorOutput favor_forward(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<FavorFeatures>& features,
                          const FavorOptions& options) {
    const Call call = check_call("favor_forward", q, k, v, features, options);
    FavorOutput out;
    out.o = tensor_zeros<float>(call.shape);
    out.report = heads_run(call, [&](int64_t b, int64_t h, Matrix& phi_q, Matrix& phi_k, Matrix& scratch, Matrix& omega,
                                     RowReport& rows_report, FeatureStats& q_stats, FeatureStats& k_stats) {
        const Head head = head_prepare(call, q, k, v, features, b, h, phi_q, phi_k, scratch, omega, q_stats, k_stats,
                                       options.causal);
        Rows rows;
        rows_report = scan_forward(head, out.o.row(b, h, 0), rows, nullptr, nullptr);
    });
    return out;
}

FavorGrads favor_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& d_o,
                          const std::vector<FavorFeatures>& features, const FavorOptions& options) {
    const std::string what = "favor_backward";
    const Call call = check_call(what, q, k, v, features, options);
    if (!(d_o.shape == call.shape)) {
        throw Error(what + ": dO is " + tensor_shape_text(d_o.shape) + " but Q is " + tensor_shape_text(call.shape) +
                    " (dO has o's shape)");
    }
    try {
        tensor_check_finite(d_o, "dO");
    } catch (const Error& e) {
        throw Error(what + ": " + e.what());
    }
    FavorGrads grads;
    grads.dq = tensor_zeros<float>(call.shape);
    grads.dk = tensor_zeros<float>(call.shape);
    grads.dv = tensor_zeros<float>(call.shape);
    const int64_t n = call.shape.n, d = call.shape.d;
    grads.report = heads_run(call, [&](int64_t b, int64_t h, Matrix& phi_q, Matrix& phi_k, Matrix& scratch, Matrix& omega,
                                       RowReport& rows_report, FeatureStats& q_stats, FeatureStats& k_stats) {
        const Head head = head_prepare(call, q, k, v, features, b, h, phi_q, phi_k, scratch, omega, q_stats, k_stats,
                                       options.causal);
        Rows rows;
        std::vector<float> o(to_size(n * d)), k_prime(to_size(n * d));
        float* dq = grads.dq.row(b, h, 0);
        rows_report = scan_forward(head, o.data(), rows, d_o.row(b, h, 0), dq);
        const float* k_row = k.row(b, h, 0);
        const float k_factor = call.key_sign * static_cast<float>(call.root_scale);
        for (int64_t e = 0; e < n * d; ++e) k_prime[to_size(e)] = k_factor * k_row[e];
        float* dk = grads.dk.row(b, h, 0);
        scan_reverse(head, rows, d_o.row(b, h, 0), k_prime.data(), dk, grads.dv.row(b, h, 0));
        // dq = sqrt|s| dq', dk = sign(s) sqrt|s| dk' (q' = sqrt|s| q, k' = sign(s) sqrt|s| k).
        for (int64_t e = 0; e < n * d; ++e) {
            dq[e] = static_cast<float>(call.root_scale * dq[e]);
            dk[e] = static_cast<float>(call.key_sign * call.root_scale * dk[e]);
        }
    });
    for (const auto& [t, name] : {std::pair{&grads.dq, "dQ"}, std::pair{&grads.dk, "dK"}, std::pair{&grads.dv, "dV"}}) {
        for (size_t e = 0; e < t->data.size(); ++e) {
            if (std::isfinite(t->data[e])) continue;
            throw Error(what + ": " + name + " overflows float32 at " + tensor_index_text(call.shape, e) +
                        " (the FAVOR+ estimate is degraded at these norms: largest |q'| " +
                        number_text(grads.report.largest_q_norm) + ", |k'| " + number_text(grads.report.largest_k_norm) +
                        "; scale Q or K down, or scale dO down)");
        }
    }
    return grads;
}

// [SECTION] error against exact attention

double favor_relative_error(const Tensor& o, const TensorD& exact) {
    if (!(o.shape == exact.shape)) {
        throw Error("favor_relative_error: O is " + tensor_shape_text(o.shape) + " but the exact O is " +
                    tensor_shape_text(exact.shape) + " (compare outputs of one call)");
    }
    double diff = 0, ref = 0;
    for (size_t e = 0; e < o.data.size(); ++e) {
        const double delta = static_cast<double>(o.data[e]) - exact.data[e];
        diff += delta * delta;
        ref += exact.data[e] * exact.data[e];
    }
    if (ref == 0) return diff == 0 ? 0.0 : std::numeric_limits<double>::infinity();
    return std::sqrt(diff / ref);
}

MaskSet favor_dense_masks(int64_t n, int64_t heads, bool causal) {
    if (n < 1 || heads < 1) {
        throw Error("favor_dense_masks: n = " + text(n) + ", heads = " + text(heads) + " (need n >= 1 and heads >= 1)");
    }
    const int32_t block = 64;
    auto mask = std::make_shared<BlockMask>();
    mask->n = n;
    mask->block = block;
    const int64_t blocks = (n + block - 1) / block;
    mask->row_ptr.push_back(0);
    for (int64_t r = 0; r < blocks; ++r) {
        const int64_t last = causal ? r : blocks - 1;
        for (int64_t c = 0; c <= last; ++c) {
            mask->col_idx.push_back(static_cast<int32_t>(c));
            const int64_t extent = std::min<int64_t>(block, n - r * block);
            if (causal && c == r && extent > 1) {   // lower-triangular; one pair alone is full
                mask->partial_idx.push_back(static_cast<int32_t>(mask->partial_blocks()));
                std::vector<uint64_t> bits(to_size(mask->words_per_block()), 0);
                for (int64_t i = 0; i < extent; ++i) {
                    for (int64_t j = 0; j <= i; ++j) bits[to_size((i * block + j) / 64)] |= uint64_t{1} << ((i * block + j) % 64);
                }
                mask->bits.insert(mask->bits.end(), bits.begin(), bits.end());
            } else {
                mask->partial_idx.push_back(-1);
            }
        }
        mask->row_ptr.push_back(static_cast<int64_t>(mask->col_idx.size()));
    }
    block_mask_validate(*mask, "favor_dense_masks");
    return mask_set_make(1, heads, std::vector<std::shared_ptr<const BlockMask>>(to_size(heads), mask));
}

TensorD favor_exact_attention(const Tensor& q, const Tensor& k, const Tensor& v, const FavorOptions& options) {
    const TensorShape s = q.shape;
    if (s.n < 1 || s.heads < 1) throw Error("favor_exact_attention: Q is " + tensor_shape_text(s) + " (need n >= 1, heads >= 1)");
    ReferenceOptions reference;
    reference.scale = options.scale;
    reference.threads = options.threads;
    return reference_forward(q, k, v, favor_dense_masks(s.n, s.heads, options.causal), 0, reference).o;
}

std::vector<FavorErrorPoint> favor_error_curve(const Tensor& q, const Tensor& k, const Tensor& v,
                                               const std::vector<int64_t>& feature_counts, uint64_t seed,
                                               int64_t layer, int64_t draw, const FavorOptions& options) {
    for (int64_t m : feature_counts) check_feature_size(m, std::max<int64_t>(q.shape.d, 1), "favor_error_curve");
    const TensorD exact = favor_exact_attention(q, k, v, options);
    std::vector<FavorErrorPoint> curve;
    for (int64_t m : feature_counts) {
        std::vector<FavorFeatures> features;
        for (int64_t h = 0; h < q.shape.heads; ++h) features.push_back(favor_features_draw(seed, layer, h, draw, m, q.shape.d));
        const FavorOutput out = favor_forward(q, k, v, features, options);
        curve.push_back({m, favor_relative_error(out.o, exact), out.report});
    }
    return curve;
}

std::vector<int64_t> favor_feature_counts(int64_t largest) {
    std::vector<int64_t> counts;
    for (int64_t m = 16; m <= largest; m *= 2) counts.push_back(m);
    return counts;
}

} // namespace sparsa
