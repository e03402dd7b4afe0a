// FAVOR+ (engine/content/favor.hpp) against an independent reference written here in plain double
// loops with the spec's own stabilisers (Performer's: the key stabiliser is the max of omega k'
// alone, and |x'|^2 / 2 and 1 / sqrt(m) are kept), against exact attention as the features grow,
// causal against per-prefix bidirectional runs, at extreme norms, and its backward against
// central differences of the double reference and an analytic double backward written here.
//
// Tolerances: the pinned forward 1e-5 of max |O| (float32 features and products against double);
// the double analytic backward against central differences (h = 1e-5) 1e-7 of the largest
// gradient of the tensor; favor_backward (float32) against the double analytic backward 1e-4
// of the largest gradient (float32 GEMMs over n and m terms, relative rounding ~1e-6 each).
//
// [SECTION] the double reference: forward and analytic backward
// [SECTION] features
// [SECTION] forward: pinned case, causal vs prefixes, threads
// [SECTION] convergence with m
// [SECTION] extreme inputs: large norms, zero scores, zero denominators
// [SECTION] backward
// [SECTION] errors
// [SECTION] speed (hidden: run with `test_favor "[.perf]"`)
#include "engine/content/favor.hpp"

#include "engine/content/random_numbers.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/error.hpp"
#include "engine/threads.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

using namespace sparsa;
using Catch::Matchers::Contains;

namespace {

// [SECTION] the double reference: forward and analytic backward

size_t at(int64_t i) { return static_cast<size_t>(i); }

// One head in double: rows of n x d, omega m x d.
struct RefHead {
    int64_t n = 0, d = 0, m = 0;
    std::vector<double> q, k, v, omega;   // [n, d] x 3, [m, d]
};

// The spec's phi for every row: exp(omega x' - |x'|^2 / 2 - c) / sqrt(m), c the row's max of
// omega x' (queries) or the max over every key and feature (keys). [n, m]
std::vector<double> ref_phi(const std::vector<double>& x, const RefHead& h, double factor, bool keys) {
    std::vector<double> proj(at(h.n * h.m)), half_norm(at(h.n)), phi(at(h.n * h.m));
    double key_max = -INFINITY;
    for (int64_t j = 0; j < h.n; ++j) {
        for (int64_t t = 0; t < h.d; ++t) half_norm[at(j)] += 0.5 * (factor * x[at(j * h.d + t)]) * (factor * x[at(j * h.d + t)]);
        for (int64_t r = 0; r < h.m; ++r) {
            double dot = 0;
            for (int64_t t = 0; t < h.d; ++t) dot += h.omega[at(r * h.d + t)] * factor * x[at(j * h.d + t)];
            proj[at(j * h.m + r)] = dot;
            key_max = std::max(key_max, dot);
        }
    }
    for (int64_t j = 0; j < h.n; ++j) {
        double c = key_max;
        if (!keys) c = *std::max_element(proj.begin() + j * h.m, proj.begin() + (j + 1) * h.m);
        for (int64_t r = 0; r < h.m; ++r) {
            phi[at(j * h.m + r)] = std::exp(proj[at(j * h.m + r)] - half_norm[at(j)] - c) / std::sqrt(static_cast<double>(h.m));
        }
    }
    return phi;
}

struct RefForward {
    std::vector<double> o, a, den;   // o [n, d]; a [n, n] = phi_q_i . phi_k_j (0 where j > i, causal); den [n]
    std::vector<double> phi_q, phi_k;
};

RefForward ref_forward(const RefHead& h, double scale, bool causal) {
    const double root = std::sqrt(std::abs(scale)), sign = scale < 0 ? -1.0 : 1.0;
    RefForward f;
    f.phi_q = ref_phi(h.q, h, root, false);
    f.phi_k = ref_phi(h.k, h, sign * root, true);
    f.o.assign(at(h.n * h.d), 0.0);
    f.a.assign(at(h.n * h.n), 0.0);
    f.den.assign(at(h.n), 0.0);
    for (int64_t i = 0; i < h.n; ++i) {
        for (int64_t j = 0; j < h.n; ++j) {
            if (causal && j > i) continue;
            double dot = 0;
            for (int64_t r = 0; r < h.m; ++r) dot += f.phi_q[at(i * h.m + r)] * f.phi_k[at(j * h.m + r)];
            f.a[at(i * h.n + j)] = dot;
            f.den[at(i)] += dot;
            for (int64_t t = 0; t < h.d; ++t) f.o[at(i * h.d + t)] += dot * h.v[at(j * h.d + t)];
        }
        for (int64_t t = 0; t < h.d; ++t) f.o[at(i * h.d + t)] /= f.den[at(i)];
    }
    return f;
}

struct RefGrads {
    std::vector<double> dq, dk, dv;   // [n, d]
};

// The analytic backward of sum(g * o), by hand: o_i = sum_j a_ij v_j / sum_j a_ij, so
// da_ij = (g_i . v_j - g_i . o_i) / den_i and dv_j = sum_i a_ij g_i / den_i; then
// dphi_q_i = sum_j da_ij phi_k_j, dphi_k_j = sum_i da_ij phi_q_i, and through
// phi = exp(omega x' - |x'|^2 / 2 - c): dx' = sum_r dphi_r phi_r (omega_r - x'), c held constant.
RefGrads ref_backward(const RefHead& h, const std::vector<double>& g, double scale, bool causal) {
    const RefForward f = ref_forward(h, scale, causal);
    const double root = std::sqrt(std::abs(scale)), sign = scale < 0 ? -1.0 : 1.0;
    RefGrads out{std::vector<double>(at(h.n * h.d)), std::vector<double>(at(h.n * h.d)), std::vector<double>(at(h.n * h.d))};
    std::vector<double> dphi_q(at(h.n * h.m)), dphi_k(at(h.n * h.m));
    for (int64_t i = 0; i < h.n; ++i) {
        double g_o = 0;
        for (int64_t t = 0; t < h.d; ++t) g_o += g[at(i * h.d + t)] * f.o[at(i * h.d + t)];
        for (int64_t j = 0; j < h.n; ++j) {
            if (causal && j > i) continue;
            double g_v = 0;
            for (int64_t t = 0; t < h.d; ++t) g_v += g[at(i * h.d + t)] * h.v[at(j * h.d + t)];
            const double da = (g_v - g_o) / f.den[at(i)];
            for (int64_t t = 0; t < h.d; ++t) out.dv[at(j * h.d + t)] += f.a[at(i * h.n + j)] * g[at(i * h.d + t)] / f.den[at(i)];
            for (int64_t r = 0; r < h.m; ++r) {
                dphi_q[at(i * h.m + r)] += da * f.phi_k[at(j * h.m + r)];
                dphi_k[at(j * h.m + r)] += da * f.phi_q[at(i * h.m + r)];
            }
        }
    }
    auto through_phi = [&](const std::vector<double>& x, const std::vector<double>& phi, const std::vector<double>& dphi,
                           double factor, std::vector<double>& dx) {
        for (int64_t j = 0; j < h.n; ++j) {
            for (int64_t t = 0; t < h.d; ++t) {
                double sum = 0;
                for (int64_t r = 0; r < h.m; ++r) {
                    sum += dphi[at(j * h.m + r)] * phi[at(j * h.m + r)] *
                           (h.omega[at(r * h.d + t)] - factor * x[at(j * h.d + t)]);
                }
                dx[at(j * h.d + t)] = factor * sum;   // x' = factor x
            }
        }
    };
    through_phi(h.q, f.phi_q, dphi_q, root, out.dq);
    through_phi(h.k, f.phi_k, dphi_k, sign * root, out.dk);
    return out;
}

// Head (b, h) of float tensors as a RefHead.
RefHead ref_head(const Tensor& q, const Tensor& k, const Tensor& v, const FavorFeatures& f, int64_t b, int64_t h) {
    RefHead r;
    r.n = q.shape.n;
    r.d = q.shape.d;
    r.m = f.m;
    r.q.assign(q.row(b, h, 0), q.row(b, h, 0) + r.n * r.d);
    r.k.assign(k.row(b, h, 0), k.row(b, h, 0) + r.n * r.d);
    r.v.assign(v.row(b, h, 0), v.row(b, h, 0) + r.n * r.d);
    r.omega.assign(f.omega.begin(), f.omega.end());
    return r;
}

double max_abs(const float* a, int64_t count) {
    double m = 0;
    for (int64_t e = 0; e < count; ++e) m = std::max(m, std::abs(static_cast<double>(a[e])));
    return m;
}

// max |got - want| / max |want| over `count` elements.
double relative_diff(const float* got, const std::vector<double>& want) {
    double diff = 0, scale = 0;
    for (size_t e = 0; e < want.size(); ++e) {
        diff = std::max(diff, std::abs(static_cast<double>(got[e]) - want[e]));
        scale = std::max(scale, std::abs(want[e]));
    }
    return diff / std::max(scale, 1e-300);
}

Tensor scaled(Tensor t, float factor) {
    for (float& x : t.data) x *= factor;
    return t;
}

std::vector<FavorFeatures> draw_features(int64_t heads, int64_t m, int64_t d, uint64_t seed, int64_t draw = 0) {
    std::vector<FavorFeatures> f;
    for (int64_t h = 0; h < heads; ++h) f.push_back(favor_features_draw(seed, 0, h, draw, m, d));
    return f;
}

bool all_finite(const Tensor& t) {
    return std::all_of(t.data.begin(), t.data.end(), [](float x) { return std::isfinite(x); });
}

} // namespace

// [SECTION] features

TEST_CASE("favor features: blocks of orthogonal rows with the norms of Gaussian rows, in the spec's order", "[favor]") {
    for (const auto& [m, d] : {std::pair<int64_t, int64_t>{40, 16}, {16, 16}, {5, 8}, {300, 64}}) {
        const FavorFeatures f = favor_features_draw(7, 2, 3, 1, m, d);
        REQUIRE(f.m == m);
        REQUIRE(f.d == d);
        REQUIRE(static_cast<int64_t>(f.omega.size()) == m * d);
        auto row = [&](int64_t r) { return f.omega.data() + r * d; };
        auto dot = [&](int64_t a, int64_t b) {
            double s = 0;
            for (int64_t t = 0; t < d; ++t) s += static_cast<double>(row(a)[t]) * row(b)[t];
            return s;
        };
        // The stream: blocks of d x d normals, then m x d normals whose row norms scale omega.
        RandomStream stream(7, 2, 3, 1);
        const int64_t blocks = (m + d - 1) / d;
        std::vector<double> first_block(static_cast<size_t>(d * d));
        for (int64_t e = 0; e < blocks * d * d; ++e) {
            const double x = stream.normal();
            if (e < d * d) first_block[static_cast<size_t>(e)] = x;
        }
        for (int64_t r = 0; r < m; ++r) {
            double norm = 0;
            for (int64_t t = 0; t < d; ++t) {
                const double x = stream.normal();
                norm += x * x;
            }
            INFO("m = " << m << ", d = " << d << ", row " << r);
            CHECK(std::sqrt(dot(r, r)) == Approx(std::sqrt(norm)).epsilon(1e-6));
            // Rows of one block are orthogonal (to float32's rounding), rows of two blocks are not.
            for (int64_t p = (r / d) * d; p < r; ++p) CHECK(std::abs(dot(r, p)) <= 1e-6 * std::sqrt(dot(r, r) * dot(p, p)));
        }
        // Row 0 is the first Gaussian row, normalised, times its norm.
        double g0 = 0;
        for (int64_t t = 0; t < d; ++t) g0 += first_block[static_cast<size_t>(t)] * first_block[static_cast<size_t>(t)];
        const double length = std::sqrt(dot(0, 0));
        for (int64_t t = 0; t < d; ++t) CHECK(row(0)[t] == Approx(first_block[static_cast<size_t>(t)] / std::sqrt(g0) * length).epsilon(1e-5));
    }
    // Rows from different blocks are independent: over many pairs their cosines spread as 1 / sqrt(d).
    const FavorFeatures big = favor_features_draw(1, 0, 0, 0, 1024, 16);
    double mean_sq_norm = 0;
    for (int64_t r = 0; r < 1024; ++r) {
        for (int64_t t = 0; t < 16; ++t) mean_sq_norm += static_cast<double>(big.omega[static_cast<size_t>(r * 16 + t)]) * big.omega[static_cast<size_t>(r * 16 + t)];
    }
    mean_sq_norm /= 1024;
    CHECK(std::abs(mean_sq_norm - 16) < 1.0);   // chi-squared(16) mean 16, std of the mean 0.18
}

TEST_CASE("favor features: the same (seed, layer, head, draw) gives the same omega; any other, another", "[favor]") {
    const FavorFeatures a = favor_features_draw(5, 1, 2, 0, 64, 32);
    CHECK(favor_features_draw(5, 1, 2, 0, 64, 32).omega == a.omega);
    CHECK(favor_features_draw(6, 1, 2, 0, 64, 32).omega != a.omega);
    CHECK(favor_features_draw(5, 0, 2, 0, 64, 32).omega != a.omega);
    CHECK(favor_features_draw(5, 1, 3, 0, 64, 32).omega != a.omega);
    CHECK(favor_features_draw(5, 1, 2, 1, 64, 32).omega != a.omega);
    // A larger m draws the same first block (the norms come after every block, so they differ):
    // row 0 points the same way.
    const FavorFeatures more = favor_features_draw(5, 1, 2, 0, 96, 32);
    for (int64_t t = 0; t < 32; ++t) {
        const double ratio = static_cast<double>(more.omega[static_cast<size_t>(t)]) / a.omega[static_cast<size_t>(t)];
        CHECK(ratio == Approx(static_cast<double>(more.omega[0]) / a.omega[0]).epsilon(1e-5));
    }
}

TEST_CASE("favor features: from a spec, from a given array, and the file's shape checked", "[favor]") {
    ContentSpec spec;
    spec.kind = ContentKind::favor;
    spec.features = 24;
    spec.seed = 3;
    CHECK(favor_features_for_head(spec, 1, 2, 8, 0, nullptr, "run").omega == favor_features_draw(3, 1, 2, 0, 24, 8).omega);
    spec.file = "feats.npy";
    CHECK_THROWS_WITH(favor_features_for_head(spec, 1, 2, 8, 0, nullptr, "run"), Contains("feats.npy") && Contains("not loaded"));
    ContentArrays arrays;
    arrays["feats.npy"] = ContentArray{"/tmp/x/feats.npy", {24, 4}, std::vector<float>(96, 1.0f)};
    CHECK_THROWS_WITH(favor_features_for_head(spec, 1, 2, 8, 0, &arrays, "run"),
                      Contains("/tmp/x/feats.npy") && Contains("[24, 4]") && Contains("[24, 8]"));
    std::vector<float> values(24 * 8);
    for (size_t e = 0; e < values.size(); ++e) values[e] = static_cast<float>(e) * 0.01f;
    arrays["feats.npy"] = ContentArray{"/tmp/x/feats.npy", {24, 8}, values};
    CHECK(favor_features_for_head(spec, 1, 2, 8, 0, &arrays, "run").omega == values);
    values[17] = NAN;
    arrays["feats.npy"].values = values;
    CHECK_THROWS_WITH(favor_features_for_head(spec, 1, 2, 8, 0, &arrays, "run"),
                      Contains("feats.npy") && Contains("[2, 1]") && Contains("NaN"));
    spec.kind = ContentKind::lsh;
    CHECK_THROWS_WITH(favor_features_for_head(spec, 1, 2, 8, 0, &arrays, "run"), Contains("not a favor head"));
    CHECK_THROWS_WITH(favor_features_draw(0, 0, 0, 0, 0, 8), Contains("m >= 1"));
    CHECK_THROWS_WITH(favor_features_make({1, 2, 3}, 2, 2, "given"), Contains("given") && Contains("needs 4"));
}

// [SECTION] forward: pinned case, causal vs prefixes, threads

TEST_CASE("favor forward: given features, O matches the double reference to 1e-5, bidirectional and causal", "[favor]") {
    const TensorShape shape{2, 2, 150, 16};   // n = 150: causal chunks of 64, 64, 22
    const Tensor q = tensor_random(shape, 11), k = tensor_random(shape, 12), v = tensor_random(shape, 13);
    // Given features: an arbitrary array (not orthogonal, m = 40 not a multiple of d).
    std::vector<FavorFeatures> features;
    for (int64_t h = 0; h < 2; ++h) {
        const Tensor w = tensor_random({1, 1, 40, 16}, 100 + static_cast<uint64_t>(h));
        features.push_back(favor_features_make(w.data, 40, 16, "test"));
    }
    for (const double scale : {0.0, 0.3, -0.2}) {
        for (const bool causal : {false, true}) {
            FavorOptions options;
            options.scale = scale;
            options.causal = causal;
            const FavorOutput out = favor_forward(q, k, v, features, options);
            CHECK_FALSE(out.report.degraded());
            CHECK(out.report.rows == 2 * 2 * 150);
            const double s = scale == 0 ? 0.25 : scale;
            for (int64_t b = 0; b < 2; ++b) {
                for (int64_t h = 0; h < 2; ++h) {
                    const RefForward ref = ref_forward(ref_head(q, k, v, features[static_cast<size_t>(h)], b, h), s, causal);
                    INFO("scale " << s << (causal ? ", causal" : "") << ", head [" << b << ", " << h << "]");
                    CHECK(relative_diff(out.o.row(b, h, 0), ref.o) < 1e-5);
                }
            }
        }
    }
}

TEST_CASE("favor forward: causal row i is the bidirectional estimate over keys 0..i", "[favor]") {
    const int64_t n = 150, d = 8;
    const TensorShape shape{1, 1, n, d};
    const Tensor q = tensor_random(shape, 21), k = tensor_random(shape, 22), v = tensor_random(shape, 23);
    const auto features = draw_features(1, 32, d, 4);
    FavorOptions causal;
    causal.causal = true;
    const FavorOutput out = favor_forward(q, k, v, features, causal);
    double worst = 0;
    for (int64_t i = 0; i < n; ++i) {
        // The first i + 1 tokens alone, bidirectional: its last row.
        const TensorShape prefix{1, 1, i + 1, d};
        Tensor qp = tensor_zeros<float>(prefix), kp = tensor_zeros<float>(prefix), vp = tensor_zeros<float>(prefix);
        std::copy(q.data.begin(), q.data.begin() + (i + 1) * d, qp.data.begin());
        std::copy(k.data.begin(), k.data.begin() + (i + 1) * d, kp.data.begin());
        std::copy(v.data.begin(), v.data.begin() + (i + 1) * d, vp.data.begin());
        const FavorOutput part = favor_forward(qp, kp, vp, features);
        for (int64_t t = 0; t < d; ++t) worst = std::max(worst, static_cast<double>(std::abs(part.o.at(0, 0, i, t) - out.o.at(0, 0, i, t))));
    }
    CHECK(worst < 1e-5 * max_abs(out.o.data.data(), n * d));
    // Row 0 sees only key 0: o = v_0 exactly up to rounding.
    for (int64_t t = 0; t < d; ++t) CHECK(out.o.at(0, 0, 0, t) == Approx(v.at(0, 0, 0, t)).margin(1e-6));
}

TEST_CASE("favor forward and backward: the same bits for any thread count", "[favor]") {
    const TensorShape shape{2, 3, 100, 16};
    const Tensor q = tensor_random(shape, 31), k = tensor_random(shape, 32), v = tensor_random(shape, 33), g = tensor_random(shape, 34);
    const auto features = draw_features(3, 48, 16, 9);
    for (const bool causal : {false, true}) {
        FavorOptions one, four;
        one.causal = four.causal = causal;
        one.threads = 1;
        four.threads = 4;
        CHECK(favor_forward(q, k, v, features, one).o.data == favor_forward(q, k, v, features, four).o.data);
        const FavorGrads a = favor_backward(q, k, v, g, features, one), b = favor_backward(q, k, v, g, features, four);
        CHECK(a.dq.data == b.dq.data);
        CHECK(a.dk.data == b.dk.data);
        CHECK(a.dv.data == b.dv.data);
    }
}

// [SECTION] convergence with m

// Relative error against exact attention for m = 16 .. 1024, averaged (root mean square) over 8
// draws of the features, on random inputs; the slope of log error against log m is fitted by
// least squares. Monte Carlo: the estimate's variance falls as 1 / m, its error as m^-1/2 (the
// ratio's bias is O(1 / m), and orthogonality only lowers the constant once m > d). Bounds -0.7
// and -0.3: -0.3 would mean the error stalls (a bias, e.g. features drawn wrong or a stabiliser
// that does not cancel), -0.7 that it falls faster than any Monte Carlo estimate can (errors of
// the exact reference, or features reused between m).
// The inputs are N(0, 0.35^2), so |q'|^2 = |k'|^2 ~ 0.5: one feature's estimate of exp(q' . k')
// has relative variance exp(|q' + k'|^2) - 1 ~ 1.7 (Performer, Lemma 2), and m = 16 is already
// in the Monte Carlo regime. With unit normal inputs (|q'|^2 ~ 4 at d = 16) that variance is ~3000:
// the error is above 1 at m = 16 and still ~1 at m = 1024 (slope -0.1, measured; an independent
// numpy run with i.i.d. features gives the same), because the features' lognormal tails are not
// yet sampled. That is FAVOR+'s, not this code's: see the report on larger norms.
TEST_CASE("favor error falls with the feature count at the Monte Carlo rate, bidirectional and causal", "[favor]") {
    const TensorShape shape{1, 2, 256, 16};
    const Tensor q = scaled(tensor_random(shape, 41), 0.35f), k = scaled(tensor_random(shape, 42), 0.35f);
    const Tensor v = tensor_random(shape, 43);
    const std::vector<int64_t> counts = favor_feature_counts(1024);
    REQUIRE(counts == std::vector<int64_t>{16, 32, 64, 128, 256, 512, 1024});
    for (const bool causal : {false, true}) {
        FavorOptions options;
        options.causal = causal;
        std::vector<double> mean_sq(counts.size(), 0.0), predicted(counts.size(), 0.0);
        const int draws = 8;
        for (int draw = 0; draw < draws; ++draw) {
            const auto curve = favor_error_curve(q, k, v, counts, 5, 0, draw, options);
            REQUIRE(curve.size() == counts.size());
            for (size_t c = 0; c < counts.size(); ++c) {
                CHECK(curve[c].features == counts[c]);
                CHECK_FALSE(curve[c].report.degraded());
                CHECK_FALSE(curve[c].report.noisy());
                CHECK(favor_report_warning(curve[c].report, "run").empty());
                predicted[c] = curve[c].report.predicted_error;
                mean_sq[c] += curve[c].error * curve[c].error / draws;
            }
        }
        double sx = 0, sy = 0, sxx = 0, sxy = 0;
        const double points = static_cast<double>(counts.size());
        for (size_t c = 0; c < counts.size(); ++c) {
            const double x = std::log(static_cast<double>(counts[c])), y = 0.5 * std::log(mean_sq[c]);
            sx += x;
            sy += y;
            sxx += x * x;
            sxy += x * y;
        }
        const double slope = (points * sxy - sx * sy) / (points * sxx - sx * sx);
        std::printf("favor %s, n = 256, d = 16: error %.4f at m = 16, %.4f at m = 1024, slope %.3f\n",
                    causal ? "causal" : "bidirectional", std::sqrt(mean_sq.front()), std::sqrt(mean_sq.back()), slope);
        INFO((causal ? "causal" : "bidirectional") << ": slope " << slope);
        CHECK(slope > -0.7);
        CHECK(slope < -0.3);
        CHECK(std::sqrt(mean_sq.back()) < 0.1);   // 1024 features: within 10% of exact attention
        // The report's predicted error is the measured one within a factor of 2 (it is a bound
        // for i.i.d. features on one pair; O averages pairs and orthogonal features do better).
        for (size_t c = 0; c < counts.size(); ++c) {
            INFO("m = " << counts[c] << ": measured " << std::sqrt(mean_sq[c]) << ", predicted " << predicted[c]);
            CHECK(std::sqrt(mean_sq[c]) < predicted[c]);
            CHECK(std::sqrt(mean_sq[c]) > predicted[c] / 2);
        }
    }
}

// [SECTION] extreme inputs: large norms, zero scores, zero denominators

TEST_CASE("favor at norms up to 1e3 times typical: finite O, and the report says it degraded", "[favor]") {
    const TensorShape shape{1, 2, 130, 16};
    const Tensor q = tensor_random(shape, 51), k = tensor_random(shape, 52), v = tensor_random(shape, 53), g = tensor_random(shape, 54);
    const auto features = draw_features(2, 64, 16, 3);
    for (const float factor : {1.0f, 10.0f, 100.0f, 1000.0f}) {
        for (const int which : {0, 1, 2}) {   // Q large, K large, both
            for (const bool causal : {false, true}) {
                const Tensor qs = which != 1 ? scaled(q, factor) : q, ks = which != 0 ? scaled(k, factor) : k;
                FavorOptions options;
                options.causal = causal;
                const FavorOutput out = favor_forward(qs, ks, v, features, options);
                INFO("factor " << factor << ", " << (which == 0 ? "Q" : which == 1 ? "K" : "Q and K") << " large"
                               << (causal ? ", causal" : ""));
                REQUIRE(all_finite(out.o));
                // o is a weighted mean of V rows: inside their range.
                CHECK(max_abs(out.o.data.data(), static_cast<int64_t>(out.o.data.size())) <= max_abs(v.data.data(), static_cast<int64_t>(v.data.size())) * (1 + 1e-5));
                if (factor == 1.0f) {
                    // Unit normal rows at d = 16: |q'|^2 ~ 4, not degraded in float32 but noisy.
                    CHECK_FALSE(out.report.degraded());
                    CHECK(out.report.noisy());
                    CHECK_THAT(favor_report_warning(out.report, "run"), Contains("run: warning") && Contains("noisy"));
                } else if (factor >= 100.0f) {
                    CHECK(out.report.degraded());
                    CHECK((which != 1 ? out.report.large_norm_queries : out.report.large_norm_keys) > 0);
                    CHECK_THAT(favor_report_warning(out.report, "run"), Contains("run: warning") && Contains("lost features"));
                }
                // The backward gives finite gradients or says it cannot: never NaN.
                try {
                    const FavorGrads grads = favor_backward(qs, ks, v, g, features, options);
                    CHECK(all_finite(grads.dq));
                    CHECK(all_finite(grads.dk));
                    CHECK(all_finite(grads.dv));
                } catch (const Error& e) {
                    CHECK_THAT(e.what(), Contains("favor_backward") && Contains("overflows float32"));
                }
            }
        }
    }
}

TEST_CASE("favor with near-zero scores: rows of zero or tiny queries estimate the mean of V", "[favor]") {
    const TensorShape shape{1, 1, 200, 16};
    Tensor q = tensor_random(shape, 61);
    const Tensor k = tensor_random(shape, 62), v = tensor_random(shape, 63);
    for (int64_t i = 0; i < 200; i += 3) {
        for (int64_t t = 0; t < 16; ++t) q.at(0, 0, i, t) = i % 2 == 0 ? 0.0f : q.at(0, 0, i, t) * 1e-30f;
    }
    const auto features = draw_features(1, 512, 16, 8);
    const FavorOutput out = favor_forward(q, k, v, features);
    REQUIRE(all_finite(out.o));
    CHECK_FALSE(out.report.degraded());
    const TensorD exact = favor_exact_attention(q, k, v);
    for (int64_t i = 0; i < 200; i += 3) {
        // Exact attention of a zero query: the plain mean of V; the estimate weighs key j by
        // phi_k_j . 1 (mean 1 per feature), so it is the mean up to the Monte Carlo error.
        double diff = 0, norm = 0;
        for (int64_t t = 0; t < 16; ++t) {
            diff += std::pow(out.o.at(0, 0, i, t) - exact.at(0, 0, i, t), 2);
            norm += std::pow(exact.at(0, 0, i, t), 2);
        }
        INFO("row " << i);
        CHECK(std::sqrt(diff) < 0.1);   // the mean of 200 unit normals has norm ~0.28: 0.1 is MC error at m = 512
    }
}

TEST_CASE("favor: a denominator of 0 gives o = 0 and is counted; tiny ones are reported", "[favor]") {
    // Keys at 1e3 times typical norm: only the key whose max_r omega_r k' - |k'|^2 / 2 is largest
    // keeps features (the others are below exp(-87) of it: 0), and only near its own direction.
    // Queries at 1e4 times typical norm keep one feature each (the one nearest their direction);
    // where the surviving key has none there, the denominator is exactly 0.
    const TensorShape shape{1, 1, 64, 8};
    const Tensor q = scaled(tensor_random(shape, 71), 1e4f), k = scaled(tensor_random(shape, 72), 1e3f);
    const Tensor v = tensor_random(shape, 73);
    const auto features = draw_features(1, 16, 8, 2);
    for (const bool causal : {false, true}) {
        FavorOptions options;
        options.causal = causal;
        const FavorOutput out = favor_forward(q, k, v, features, options);
        REQUIRE(all_finite(out.o));
        CHECK(out.report.zero_rows > 0);
        CHECK(out.report.degraded_rows >= out.report.zero_rows);
        CHECK(out.report.worst_ratio == 0.0);
        CHECK(out.report.worst_i >= 0);
        CHECK_THAT(favor_report_warning(out.report, "run"), Contains("denominator below") && Contains("o = 0"));
        int64_t zero_rows = 0;
        for (int64_t i = 0; i < 64; ++i) {
            zero_rows += std::all_of(out.o.row(0, 0, i), out.o.row(0, 0, i) + 8, [](float x) { return x == 0.0f; });
        }
        CHECK(zero_rows >= out.report.zero_rows);
        const FavorGrads grads = favor_backward(q, k, v, tensor_random(shape, 74), features, options);
        CHECK(all_finite(grads.dq));
        CHECK(all_finite(grads.dk));
        CHECK(all_finite(grads.dv));
    }
}

// [SECTION] backward

TEST_CASE("favor backward (double, by hand) matches central differences of the double reference", "[favor]") {
    const TensorShape shape{1, 1, 24, 8};
    const Tensor q = scaled(tensor_random(shape, 81), 0.8f), k = scaled(tensor_random(shape, 82), 0.8f);
    const Tensor v = tensor_random(shape, 83), g = tensor_random(shape, 84);
    const FavorFeatures f = favor_features_draw(1, 0, 0, 0, 12, 8);
    const std::vector<double> gd(g.data.begin(), g.data.end());
    for (const double scale : {0.35, -0.5}) {
        for (const bool causal : {false, true}) {
            RefHead head = ref_head(q, k, v, f, 0, 0);
            const RefGrads grads = ref_backward(head, gd, scale, causal);
            auto loss = [&](const RefHead& h) {
                const RefForward r = ref_forward(h, scale, causal);
                double sum = 0;
                for (size_t e = 0; e < r.o.size(); ++e) sum += gd[e] * r.o[e];
                return sum;
            };
            const double step = 1e-5;
            for (int which = 0; which < 3; ++which) {
                std::vector<double>& x = which == 0 ? head.q : which == 1 ? head.k : head.v;
                const std::vector<double>& want = which == 0 ? grads.dq : which == 1 ? grads.dk : grads.dv;
                double worst = 0, largest = 0;
                for (size_t e = 0; e < x.size(); ++e) {
                    const double keep = x[e];
                    x[e] = keep + step;
                    const double up = loss(head);
                    x[e] = keep - step;
                    const double down = loss(head);
                    x[e] = keep;
                    worst = std::max(worst, std::abs((up - down) / (2 * step) - want[e]));
                    largest = std::max(largest, std::abs(want[e]));
                }
                INFO("scale " << scale << (causal ? ", causal" : "") << ", d" << "QKV"[which]);
                CHECK(largest > 1e-3);
                CHECK(worst < 1e-7 * largest);
            }
        }
    }
}

TEST_CASE("favor backward (float32) matches the double analytic backward, bidirectional and causal", "[favor]") {
    const TensorShape shape{2, 2, 150, 16};
    const Tensor q = tensor_random(shape, 91), k = tensor_random(shape, 92), v = tensor_random(shape, 93), g = tensor_random(shape, 94);
    const auto features = draw_features(2, 40, 16, 6);
    for (const double scale : {0.0, -0.2}) {
        for (const bool causal : {false, true}) {
            FavorOptions options;
            options.scale = scale;
            options.causal = causal;
            const FavorGrads grads = favor_backward(q, k, v, g, features, options);
            CHECK_FALSE(grads.report.degraded());
            for (int64_t b = 0; b < 2; ++b) {
                for (int64_t h = 0; h < 2; ++h) {
                    const RefHead head = ref_head(q, k, v, features[static_cast<size_t>(h)], b, h);
                    const std::vector<double> gd(g.row(b, h, 0), g.row(b, h, 0) + 150 * 16);
                    const RefGrads want = ref_backward(head, gd, scale == 0 ? 0.25 : scale, causal);
                    INFO("scale " << scale << (causal ? ", causal" : "") << ", head [" << b << ", " << h << "]");
                    CHECK(relative_diff(grads.dq.row(b, h, 0), want.dq) < 1e-4);
                    CHECK(relative_diff(grads.dk.row(b, h, 0), want.dk) < 1e-4);
                    CHECK(relative_diff(grads.dv.row(b, h, 0), want.dv) < 1e-4);
                }
            }
        }
    }
}

// [SECTION] errors

TEST_CASE("favor: bad calls are refused, naming the call and how to fix it", "[favor]") {
    const TensorShape shape{1, 2, 20, 8};
    const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3);
    const auto features = draw_features(2, 16, 8, 1);
    CHECK_THROWS_WITH(favor_forward(q, k, v, draw_features(1, 16, 8, 1)), Contains("favor_forward") && Contains("for 2 heads"));
    CHECK_THROWS_WITH(favor_forward(q, k, v, draw_features(2, 16, 4, 1)), Contains("favor_forward") && Contains("d = 8"));
    CHECK_THROWS_WITH(favor_forward(q, tensor_random({1, 2, 21, 8}, 2), v, features), Contains("one shape"));
    Tensor bad = q;
    bad.at(0, 1, 5, 3) = NAN;
    CHECK_THROWS_WITH(favor_forward(bad, k, v, features), Contains("favor_forward") && Contains("Q has NaN at [0, 1, 5, 3]"));
    FavorOptions options;
    options.scale = INFINITY;
    CHECK_THROWS_WITH(favor_forward(q, k, v, features, options), Contains("scale"));
    options.scale = 0;
    options.threads = -1;
    CHECK_THROWS_WITH(favor_forward(q, k, v, features, options), Contains("threads"));
    CHECK_THROWS_WITH(favor_forward(q, k, scaled(v, 1e37f), features), Contains("V's largest") && Contains("scale V down"));
    CHECK_THROWS_WITH(favor_backward(q, k, v, tensor_random({1, 2, 20, 4}, 4), features), Contains("dO is"));
    Tensor bad_g = tensor_random(shape, 4);
    bad_g.at(0, 0, 0, 0) = INFINITY;
    CHECK_THROWS_WITH(favor_backward(q, k, v, bad_g, features), Contains("dO has Inf"));
}

TEST_CASE("favor_dense_masks: every pair, or k <= q", "[favor]") {
    for (const int64_t n : {1, 2, 64, 65, 130}) {
        for (const bool causal : {false, true}) {
            const MaskSet set = favor_dense_masks(n, 2, causal);
            REQUIRE(set.heads == 2);
            const BlockMaskStats stats = block_mask_stats(set.at(0, 1));
            CHECK(stats.kept_pairs == (causal ? n * (n + 1) / 2 : n * n));
            CHECK((n < 2 || set.at(0, 0).allowed(1, 0)));
            CHECK((n < 2 || set.at(0, 0).allowed(0, 1) == !causal));
        }
    }
}

// [SECTION] speed (hidden: run with `test_favor "[.perf]"`)

TEST_CASE("perf: favor m = 256 against the dense CPU engine, n = 4096 and 16384, d = 64, 4 heads", "[.perf]") {
    for (const int64_t n : {4096, 16384}) {
        const TensorShape shape{1, 4, n, 64};
        const Tensor q = tensor_random(shape, 1), k = tensor_random(shape, 2), v = tensor_random(shape, 3), g = tensor_random(shape, 4);
        const auto features = draw_features(4, 256, 64, 1);
        for (const bool causal : {false, true}) {
            const MaskSet dense = favor_dense_masks(n, 4, causal);
            FavorOptions options;
            options.causal = causal;
            auto time = [](const auto& body) {
                std::vector<double> ms;
                for (int run = 0; run < 3; ++run) {
                    const auto t0 = std::chrono::steady_clock::now();
                    body();
                    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
                }
                std::sort(ms.begin(), ms.end());
                return ms[1];
            };
            const double favor_fwd = time([&] { CHECK(all_finite(favor_forward(q, k, v, features, options).o)); });
            const double favor_bwd = time([&] { CHECK(all_finite(favor_backward(q, k, v, g, features, options).dq)); });
            const double dense_fwd = time([&] { CHECK(all_finite(attention_forward(q, k, v, dense, 0).o)); });
            std::printf("n = %lld, d = 64, 4 heads, %s, %d threads, median of 3: favor(256) forward %.1f ms, backward %.1f ms; "
                        "dense engine forward %.1f ms (%.1fx)\n",
                        static_cast<long long>(n), causal ? "causal" : "bidirectional", thread_count(), favor_fwd,
                        favor_bwd, dense_fwd, dense_fwd / favor_fwd);
        }
    }
}
