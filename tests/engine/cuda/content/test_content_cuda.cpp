// The CUDA engine's content-based heads (engine/cuda/content/content_cuda.hpp) against double-precision
// references written here from issue 14's spec:
//   lsh, anchors: the buckets (the GPU's against the spec's in double: equal except where the
//     double values nearly tie, lsh only), then the exact softmax over the spec's allowed set
//     A(q) built from the GPU's buckets, in double; 1, 2 and 4 rounds, causal or not, alone or
//     | a window (the fixed mask), shared_qk or not, n not divisible by the chunk, batch 2.
//   favor: FAVOR+ as the spec writes it (phi with its stabilisers, in double, on the features
//     rounded as the GPU sees them), bidirectional and causal, and with large norms.
//   and against the CPU engines on the numbers cuda_content_numbers draws as they do:
//     content_attention_forward (lsh, anchors) and favor_forward (FAVOR+), to 1e-4 in float32
//     (two float32 engines) and 2e-2 in bf16.
// Tolerances as test_cuda_attention's: float32 1e-5 of max |O| (favor 1e-4: its two passes
// round through float32 twice), bf16 / fp16 2e-2; lse 1e-5 / 2e-2 relative; every O finite
// (outputs are poisoned with NaN before each run).
// Without a GPU every case prints one line saying it skipped and why, and passes.
#include "engine/cuda/content/content_cuda.hpp"

#include "engine/content/buckets.hpp"
#include "engine/content/content_attention.hpp"
#include "engine/content/favor.hpp"
#include "engine/content/random_numbers.hpp"
#include "engine/error.hpp"

#include "tests/engine/cuda/content/content_cuda_testing.hpp"
#include "tests/engine/cuda/cuda_testing.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

using namespace sparsa;
using Catch::Matchers::Contains;

namespace {

bool gpu_ready(const char* test) { return testing::gpu_ready("test_content_cuda", test); }
using testing::content_set;
using testing::window_mask;
CudaContentAttention& engine() { return testing::content_engine(); }

const float* row_of(const Tensor& x, int64_t b, int64_t h, int64_t t) { return &x.at(b, h, t, 0); }

// [SECTION] the spec in double

// lsh bucket of x with rotation R [d, b/2]; margin: best minus second best over the b values,
// relative to the largest |u|.
int32_t lsh_bucket(const float* x, int64_t d, const float* R, int64_t buckets, double* margin) {
    const int64_t half = buckets / 2;
    std::vector<double> u(static_cast<size_t>(buckets));
    double big = 0;
    for (int64_t c = 0; c < half; ++c) {
        double s = 0;
        for (int64_t i = 0; i < d; ++i) s += double{x[i]} * R[i * half + c];
        u[static_cast<size_t>(c)] = s;
        u[static_cast<size_t>(half + c)] = -s;
        big = std::max(big, std::abs(s));
    }
    const auto best = std::max_element(u.begin(), u.end());   // first of equals: the lowest index
    double second = -INFINITY;
    for (auto it = u.begin(); it != u.end(); ++it)
        if (it != best) second = std::max(second, *it);
    *margin = (*best - second) / std::max(big, 1e-300);
    return static_cast<int32_t>(best - u.begin());
}

// The spec's balanced assignment in double: capacity ceil(n / k), tokens by decreasing best
// cosine (ties by position), each to its best anchor with room (ties lowest).
std::vector<int32_t> anchors_assign_double(const Tensor& x, int64_t b, int64_t h, const float* anchors, int64_t k) {
    const int64_t n = x.shape.n, d = x.shape.d, capacity = (n + k - 1) / k;
    std::vector<double> cos(static_cast<size_t>(n * k)), best(static_cast<size_t>(n), -INFINITY);
    for (int64_t t = 0; t < n; ++t) {
        const float* r = row_of(x, b, h, t);
        double norm = 0;
        for (int64_t i = 0; i < d; ++i) norm += double{r[i]} * r[i];
        norm = std::sqrt(norm);
        for (int64_t a = 0; a < k; ++a) {
            double s = 0;
            for (int64_t i = 0; i < d; ++i) s += double{r[i]} * anchors[a * d + i];
            cos[static_cast<size_t>(t * k + a)] = norm > 0 ? s / norm : 0;
            best[static_cast<size_t>(t)] = std::max(best[static_cast<size_t>(t)], cos[static_cast<size_t>(t * k + a)]);
        }
    }
    std::vector<int32_t> by(static_cast<size_t>(n)), out(static_cast<size_t>(n));
    std::iota(by.begin(), by.end(), 0);
    std::stable_sort(by.begin(), by.end(), [&](int32_t a, int32_t c) { return best[static_cast<size_t>(a)] > best[static_cast<size_t>(c)]; });
    std::vector<int64_t> count(static_cast<size_t>(k), 0);
    for (int32_t t : by) {
        int64_t pick = -1;
        for (int64_t a = 0; a < k; ++a) {
            if (count[static_cast<size_t>(a)] < capacity && (pick < 0 || cos[static_cast<size_t>(t * k + a)] > cos[static_cast<size_t>(t * k + pick)])) pick = a;
        }
        ++count[static_cast<size_t>(pick)];
        out[static_cast<size_t>(t)] = static_cast<int32_t>(pick);
    }
    return out;
}

// Each token's chunk per round from its buckets: stable sort by (bucket, position), chunk = s / chunk.
std::vector<int32_t> chunks_of(const int32_t* bucket, int64_t n, int64_t chunk) {
    std::vector<int32_t> order(static_cast<size_t>(n)), out(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return bucket[a] < bucket[b]; });
    for (int64_t s = 0; s < n; ++s) out[static_cast<size_t>(order[static_cast<size_t>(s)])] = static_cast<int32_t>(s / chunk);
    return out;
}

// The exact softmax over the spec's A(q), in double, for (b, h): qc / kc [rounds][n] chunk ids.
void reference_head(const Tensor& q, const Tensor& k, const Tensor& v, int64_t b, int64_t h, const std::vector<uint8_t>& fixed,
                    const std::vector<std::vector<int32_t>>& qc, const std::vector<std::vector<int32_t>>& kc, bool causal,
                    double scale, AttentionOutput& out) {
    const int64_t n = q.shape.n, d = q.shape.d;
    auto meets = [&](int64_t qt, int64_t kt) {
        for (size_t r = 0; r < qc.size(); ++r) {
            const int32_t g = qc[r][static_cast<size_t>(qt)] - kc[r][static_cast<size_t>(kt)];
            if (g == 0 || g == 1) return true;
        }
        return false;
    };
    for (int64_t qt = 0; qt < n; ++qt) {
        std::vector<int64_t> keys;
        for (int64_t kt = 0; kt < n; ++kt) {
            const bool f = !fixed.empty() && fixed[static_cast<size_t>(qt * n + kt)];
            if ((f || (kt != qt && meets(qt, kt))) && !(causal && kt > qt)) keys.push_back(kt);
        }
        if (keys.empty() && (meets(qt, qt) || (!fixed.empty() && fixed[static_cast<size_t>(qt * n + qt)]))) keys.push_back(qt);
        std::vector<double> s;
        double mx = -INFINITY;
        for (int64_t kt : keys) {
            double dot = 0;
            for (int64_t i = 0; i < d; ++i) dot += double{q.at(b, h, qt, i)} * k.at(b, h, kt, i);
            s.push_back(dot * scale);
            mx = std::max(mx, s.back());
        }
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int64_t i = 0; i < d; ++i) {
            double o = 0;
            for (size_t e = 0; e < keys.size(); ++e) o += s[e] * v.at(b, h, keys[e], i);
            out.o.at(b, h, qt, i) = keys.empty() ? 0.f : static_cast<float>(o / sum);
        }
        out.lse.at(b, h, qt, 0) = keys.empty() ? -INFINITY : static_cast<float>(mx + std::log(sum));
    }
}

void check_output(const AttentionOutput& got, const AttentionOutput& want, double tolerance, bool check_lse = true) {
    const TensorShape s = got.o.shape;
    for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t h = 0; h < s.heads; ++h) {
            double err = 0, size = 0, lse_err = 0;
            int64_t not_finite = -1, bad_lse = -1;
            for (int64_t i = 0; i < s.n; ++i) {
                for (int64_t j = 0; j < s.d; ++j) {
                    const float g = got.o.at(b, h, i, j), w = want.o.at(b, h, i, j);
                    if (!std::isfinite(g) && not_finite < 0) not_finite = i;
                    err = std::max(err, static_cast<double>(std::abs(g - w)));
                    size = std::max(size, static_cast<double>(std::abs(w)));
                }
                if (!check_lse) continue;
                const float gl = got.lse.at(b, h, i, 0), wl = want.lse.at(b, h, i, 0);
                if (std::isinf(wl) || !std::isfinite(gl)) {
                    if (gl != wl && bad_lse < 0) bad_lse = i;
                } else {
                    lse_err = std::max(lse_err, std::abs(gl - wl) / std::max(1.0, std::abs(static_cast<double>(wl))));
                }
            }
            INFO("head [" << b << ", " << h << "]: max |O error| " << err << ", max |O_ref| " << size << ", lse relative error "
                          << lse_err << ", first non-finite O row " << not_finite << ", first wrong lse row " << bad_lse);
            CHECK(not_finite == -1);
            CHECK(bad_lse == -1);
            CHECK(err <= tolerance * std::max(size, 1e-30));
            CHECK(lse_err <= tolerance);
        }
    }
}

double tolerance_of(CudaDtype dtype) { return dtype == CudaDtype::float32 ? 1e-5 : 2e-2; }

struct Case {
    ContentKind kind = ContentKind::lsh;
    int64_t rounds = 1, buckets = 8, chunk = 64, n = 300, d = 64, heads = 2, batch = 2;
    bool causal = false, window = false, shared_qk = true, tensor_cores = true;
    CudaDtype dtype = CudaDtype::bfloat16;
    uint64_t seed = 1;
    int version = 0;   // CudaContentOptions::version
    std::string hashing;   // if set: the kernel that must have hashed (CudaContentWalk::hashing)
};

// Runs one lsh or anchors case on the GPU and checks buckets and attention against the spec.
void check_buckets_case(const Case& c) {
    INFO(std::string(c.kind == ContentKind::lsh ? "lsh" : "anchors") << " rounds " << c.rounds << " buckets " << c.buckets
         << " chunk " << c.chunk << " n " << c.n << " d " << c.d << " causal " << c.causal << " window " << c.window
         << " shared_qk " << c.shared_qk << " " << cuda_dtype_name(c.dtype) << (c.tensor_cores ? " tensor cores" : " simple")
         << " version " << c.version);
    ContentSpec spec;
    spec.kind = c.kind;
    spec.buckets = c.buckets;
    spec.rounds = c.rounds;
    spec.chunk = c.chunk;
    spec.seed = c.seed;
    spec.shared_qk = c.shared_qk;
    spec.causal = c.causal;
    const std::vector<uint8_t> fixed = c.window ? window_mask(c.n, 16, c.causal) : std::vector<uint8_t>{};
    const MaskSet set = content_set(c.n, c.heads, fixed, spec);
    const TensorShape shape{c.batch, c.heads, c.n, c.d};
    const Tensor q = tensor_round_to(tensor_random(shape, c.seed * 7 + 1), c.dtype);
    const Tensor k = tensor_round_to(tensor_random(shape, c.seed * 7 + 2), c.dtype);
    const Tensor v = tensor_round_to(tensor_random(shape, c.seed * 7 + 3), c.dtype);
    CudaContentNumbers numbers(static_cast<size_t>(c.heads));
    for (int64_t h = 0; h < c.heads; ++h) {
        auto& x = numbers[static_cast<size_t>(h)];
        for (int64_t r = 0; r < c.rounds; ++r) {
            if (c.kind == ContentKind::lsh) {
                const std::vector<float> R = random_normals(c.seed, 0, h, r, c.d * c.buckets / 2);
                x.insert(x.end(), R.begin(), R.end());
            } else {   // unit anchors: basis vectors, a different one per round and head
                for (int64_t a = 0; a < c.buckets; ++a)
                    for (int64_t i = 0; i < c.d; ++i) x.push_back(i == (a * 3 + r + h) % c.d ? 1.f : 0.f);
            }
        }
    }
    CudaContentOptions options;
    options.dtype = c.dtype;
    options.tensor_cores = c.tensor_cores;
    options.version = c.version;
    const AttentionOutput got = engine().forward(q, k, v, set, 0, numbers, options);
    const CudaContentWalk walk = engine().walk();
    if (!c.hashing.empty()) CHECK(walk.hashing == c.hashing);
    REQUIRE(walk.rounds == c.rounds);
    const int64_t n = c.n, bh = c.batch * c.heads;
    AttentionOutput want{tensor_zeros<float>(shape), tensor_zeros<float>({c.batch, c.heads, c.n, 1})};
    int64_t near_ties = 0, differ = 0;
    for (int64_t b = 0; b < c.batch; ++b) {
        for (int64_t h = 0; h < c.heads; ++h) {
            std::vector<std::vector<int32_t>> qc, kc;
            for (int64_t r = 0; r < c.rounds; ++r) {
                const float* nums = numbers[static_cast<size_t>(h)].data() + r * c.d * c.buckets / (c.kind == ContentKind::lsh ? 2 : 1);
                for (int side = 0; side < (c.shared_qk ? 1 : 2); ++side) {
                    const Tensor& x = side == 0 ? q : k;
                    const int32_t* gpu = (side == 0 ? walk.q_bucket : walk.k_bucket).data() + (r * bh + b * c.heads + h) * n;
                    if (c.kind == ContentKind::lsh) {
                        for (int64_t t = 0; t < n; ++t) {
                            double margin = 0;
                            const int32_t want_bucket = lsh_bucket(row_of(x, b, h, t), c.d, nums, c.buckets, &margin);
                            if (margin < 1e-4) ++near_ties;
                            if (gpu[t] != want_bucket) {
                                ++differ;
                                INFO("token " << t << " round " << r << ": GPU bucket " << gpu[t] << ", double " << want_bucket << ", margin " << margin);
                                CHECK(margin < 1e-4);
                            }
                        }
                    } else {
                        const std::vector<int32_t> want_bucket = anchors_assign_double(x, b, h, nums, c.buckets);
                        for (int64_t t = 0; t < n; ++t) differ += gpu[t] != want_bucket[static_cast<size_t>(t)];
                    }
                    (side == 0 ? qc : kc).push_back(chunks_of(gpu, n, c.chunk));
                }
            }
            reference_head(q, k, v, b, h, fixed, qc, c.shared_qk ? qc : kc, c.causal, 1.0 / std::sqrt(double(c.d)), want);
        }
    }
    INFO("buckets that differ from the double hash: " << differ << " (near ties " << near_ties << ")");
    if (c.kind == ContentKind::anchors) CHECK(differ == 0);
    CHECK(differ <= near_ties);
    check_output(got, want, tolerance_of(c.dtype));
}

// FAVOR+ as the spec writes it, in double: features omega [m, d] per head (as given), scale s.
AttentionOutput favor_reference(const Tensor& q, const Tensor& k, const Tensor& v, const CudaContentNumbers& omega, int64_t m,
                                bool causal, double scale) {
    const TensorShape s = q.shape;
    AttentionOutput out{tensor_zeros<float>(s), tensor_zeros<float>({s.batch, s.heads, s.n, 1})};
    const double root = std::sqrt(scale);
    for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t h = 0; h < s.heads; ++h) {
            const float* om = omega[static_cast<size_t>(h)].data();
            auto project = [&](const Tensor& x, int64_t t, std::vector<double>& a) {
                double norm2 = 0;
                for (int64_t i = 0; i < s.d; ++i) norm2 += double{x.at(b, h, t, i)} * x.at(b, h, t, i);
                for (int64_t j = 0; j < m; ++j) {
                    double u = 0;
                    for (int64_t i = 0; i < s.d; ++i) u += double{om[j * s.d + i]} * x.at(b, h, t, i);
                    a[static_cast<size_t>(j)] = root * u;
                }
                return norm2 * scale / 2;
            };
            std::vector<std::vector<double>> pk(static_cast<size_t>(s.n), std::vector<double>(static_cast<size_t>(m)));
            std::vector<double> half_k(static_cast<size_t>(s.n));
            double ck = -INFINITY;
            for (int64_t t = 0; t < s.n; ++t) {
                half_k[static_cast<size_t>(t)] = project(k, t, pk[static_cast<size_t>(t)]);
                for (double x : pk[static_cast<size_t>(t)]) ck = std::max(ck, x);
            }
            for (int64_t t = 0; t < s.n; ++t)
                for (double& x : pk[static_cast<size_t>(t)]) x = std::exp(x - half_k[static_cast<size_t>(t)] - ck) / std::sqrt(double(m));
            // the sums over keys as Performer writes them: kv[j][i] = sum phi(k)_j v_i and z[j] = sum
            // phi(k)_j over all keys (causal: keys <= t, added as t advances), in O(n m d)
            std::vector<double> kv(static_cast<size_t>(m * s.d), 0.0), z(static_cast<size_t>(m), 0.0);
            const auto add_key = [&](int64_t kt) {
                for (int64_t j = 0; j < m; ++j) {
                    const double p = pk[static_cast<size_t>(kt)][static_cast<size_t>(j)];
                    z[static_cast<size_t>(j)] += p;
                    for (int64_t i = 0; i < s.d; ++i) kv[static_cast<size_t>(j * s.d + i)] += p * v.at(b, h, kt, i);
                }
            };
            if (!causal)
                for (int64_t kt = 0; kt < s.n; ++kt) add_key(kt);
            std::vector<double> pq(static_cast<size_t>(m));
            for (int64_t t = 0; t < s.n; ++t) {
                if (causal) add_key(t);
                const double half_q = project(q, t, pq);
                const double cq = *std::max_element(pq.begin(), pq.end());
                for (double& x : pq) x = std::exp(x - half_q - cq) / std::sqrt(double(m));
                double den = 0;
                std::vector<double> num(static_cast<size_t>(s.d), 0.0);
                for (int64_t j = 0; j < m; ++j) {
                    const double p = pq[static_cast<size_t>(j)];
                    den += p * z[static_cast<size_t>(j)];
                    for (int64_t i = 0; i < s.d; ++i) num[static_cast<size_t>(i)] += p * kv[static_cast<size_t>(j * s.d + i)];
                }
                for (int64_t i = 0; i < s.d; ++i) out.o.at(b, h, t, i) = static_cast<float>(num[static_cast<size_t>(i)] / den);
            }
        }
    }
    return out;
}

void check_favor_case(int64_t n, int64_t d, int64_t m, bool causal, CudaDtype dtype, bool tensor_cores, float q_scale, uint64_t seed,
                      int version) {
    INFO("favor n " << n << " d " << d << " m " << m << " causal " << causal << " " << cuda_dtype_name(dtype)
                    << (tensor_cores ? " tensor cores" : " simple") << " |Q| x" << q_scale << " version " << version);
    ContentSpec spec;
    spec.kind = ContentKind::favor;
    spec.features = m;
    spec.causal = causal;
    const int64_t heads = 2, batch = 2;
    const MaskSet set = content_set(n, heads, {}, spec);
    const TensorShape shape{batch, heads, n, d};
    Tensor q = tensor_random(shape, seed);
    for (float& x : q.data) x *= q_scale;
    q = tensor_round_to(q, dtype);
    const Tensor k = tensor_round_to(tensor_random(shape, seed + 1), dtype), v = tensor_round_to(tensor_random(shape, seed + 2), dtype);
    CudaContentNumbers omega(static_cast<size_t>(heads));
    for (int64_t h = 0; h < heads; ++h) {
        Tensor f = tensor_random({1, 1, m, d}, seed + 10 + static_cast<uint64_t>(h));
        omega[static_cast<size_t>(h)] = tensor_round_to(f, dtype).data;   // the features as the GPU holds them
    }
    CudaContentOptions options;
    options.dtype = dtype;
    options.tensor_cores = tensor_cores;
    options.version = version;
    const AttentionOutput got = engine().forward(q, k, v, set, 0, omega, options);
    const AttentionOutput want = favor_reference(q, k, v, omega, m, causal, 1.0 / std::sqrt(double(d)));
    check_output(got, want, dtype == CudaDtype::float32 ? 1e-4 : 2e-2, false);
}

} // namespace

TEST_CASE("cuda content: small lsh and anchors cases (the sanitizer runs this)", "[cuda][content][small]") {
    if (!gpu_ready("small lsh and anchors")) return;
    for (const int version : {1, 2, 3}) {
        for (const bool tc : {true, false}) {
            Case c;
            c.tensor_cores = tc;
            c.dtype = tc ? CudaDtype::bfloat16 : CudaDtype::float32;
            c.rounds = 2;
            c.n = 200;
            c.window = true;
            c.version = version;
            check_buckets_case(c);
            c.window = false;   // version 3: the last round's pass merges the rounds
            c.causal = true;
            check_buckets_case(c);
            c.kind = ContentKind::anchors;
            c.buckets = 7;
            c.causal = true;
            check_buckets_case(c);
        }
    }
}

TEST_CASE("cuda content: small favor cases (the sanitizer runs this)", "[cuda][content][small]") {
    if (!gpu_ready("small favor")) return;
    for (const int version : {1, 2, 3}) {   // 3: causal FAVOR+'s parts in T, merged inside the intra pass
        for (const bool causal : {false, true}) {
            check_favor_case(200, 64, 96, causal, CudaDtype::bfloat16, true, 1.f, 5, version);
            check_favor_case(200, 64, 64, causal, CudaDtype::bfloat16, true, 1.f, 7, version);
            check_favor_case(200, 64, 96, causal, CudaDtype::float32, false, 1.f, 6, version);
        }
    }
}

TEST_CASE("cuda content: lsh and anchors match the spec's allowed set in double", "[cuda][content]") {
    if (!gpu_ready("lsh and anchors")) return;
    uint64_t seed = 20;
    for (const ContentKind kind : {ContentKind::lsh, ContentKind::anchors}) {
        for (const int64_t rounds : {1, 2, 4}) {
            for (const bool causal : {false, true}) {
                for (const bool window : {false, true}) {
                    for (const bool tc : {true, false}) {
                        for (const int version : {1, 2, 3}) {
                            Case c;
                            c.version = version;
                            c.kind = kind;
                            c.buckets = kind == ContentKind::lsh ? 8 : 7;
                            c.rounds = rounds;
                            c.causal = causal;
                            c.window = window;
                            c.tensor_cores = tc;
                            c.dtype = tc ? CudaDtype::bfloat16 : CudaDtype::float32;
                            c.seed = ++seed;
                            check_buckets_case(c);
                        }
                    }
                }
            }
        }
    }
}

TEST_CASE("cuda content: d = 128, fp16, chunks of 32 and 100, separate query and key buckets", "[cuda][content]") {
    if (!gpu_ready("shapes")) return;
    for (const int version : {1, 2, 3, 4}) {
        Case c;
        c.version = version;
        c.d = 128;
        c.rounds = 2;
        c.n = 333;
        c.seed = 70;
        check_buckets_case(c);
        c.dtype = CudaDtype::float16;
        c.chunk = 32;
        c.causal = true;
        check_buckets_case(c);
        c.chunk = 100;
        c.window = true;
        c.d = 64;
        check_buckets_case(c);
        for (const ContentKind kind : {ContentKind::lsh, ContentKind::anchors}) {
            for (const bool tc : {true, false}) {
                c = Case{};
                c.version = version;
                c.kind = kind;
                c.buckets = kind == ContentKind::lsh ? 16 : 5;
                c.shared_qk = false;
                c.rounds = 2;
                c.causal = true;
                c.tensor_cores = tc;
                c.seed = 80;
                check_buckets_case(c);
            }
        }
        // one bucket a token holds at most n tokens: buckets = n is allowed (lsh: even)
        c = Case{};
        c.version = version;
        c.n = 130;
        c.buckets = 130;
        c.rounds = 2;
        check_buckets_case(c);
        // the benchmark's 64 buckets (32 columns a round: version 3 hashes two rounds in one slice)
        // and 128 (64 a round), with 2 and 4 rounds
        for (const int64_t buckets : {64, 128}) {
            for (const int64_t rounds : {2, 4}) {
                c = Case{};
                c.version = version;
                c.n = 333;
                c.d = 128;
                c.buckets = buckets;
                c.rounds = rounds;
                c.seed = 90 + static_cast<uint64_t>(buckets + rounds);
                check_buckets_case(c);
            }
        }
    }
}

// Version 4's hashing on tensor cores (content_hash_tc: x times the rotation's three 16-bit pieces)
// is a float32 hash summed in another order: its buckets may differ from the double hash only
// where two values nearly tie (check_buckets_case), in bf16 and fp16, d = 64 and 128, 8 to 64
// columns a round (16 to 128 buckets), one 64-column slice or several, queries and keys hashed
// apart, and at n = 40,000, where each block walks many tiles.
namespace {

// A version 4 lsh case that must hash on content_hash_tc: buckets, rounds, n, seed as given.
Case hash_tc_case(int64_t buckets, int64_t rounds, int64_t n, uint64_t seed) {
    Case c;
    c.version = 4;
    c.hashing = "content_hash_tc";
    c.buckets = buckets;
    c.rounds = rounds;
    c.n = n;
    c.seed = seed;
    return c;
}

} // namespace

TEST_CASE("cuda content: version 4's tensor-core hashing against the double hash", "[cuda][content][small]") {
    if (!gpu_ready("lsh version 4")) return;
    check_buckets_case(hash_tc_case(16, 2, 200, 300));   // the sanitizer's case
}

TEST_CASE("cuda content: version 4's tensor-core hashing, more shapes", "[cuda][content]") {
    if (!gpu_ready("lsh version 4 shapes")) return;
    uint64_t seed = 310;
    for (const CudaDtype dtype : {CudaDtype::bfloat16, CudaDtype::float16}) {
        for (const int64_t d : {64, 128}) {
            for (const int64_t buckets : {16, 64, 128}) {
                for (const int64_t rounds : {1, 2, 4}) {
                    Case c = hash_tc_case(buckets, rounds, 333, ++seed);
                    c.dtype = dtype;
                    c.d = d;
                    c.causal = rounds == 2;
                    c.shared_qk = rounds != 4;
                    check_buckets_case(c);
                }
            }
        }
    }
    Case c = hash_tc_case(64, 2, 40000, 340);
    c.d = 128;
    c.heads = 1;
    c.batch = 1;
    check_buckets_case(c);
}

// Version 3's hashing (content_hash3: a block walks token tiles, all rounds' columns side by side)
// sums each u in the order version 2's content_project2 does: the same buckets, bit for bit, at
// lengths where each block walks many tiles and with more columns than one 64-column slice.
TEST_CASE("cuda content: lsh's buckets of versions 2 and 3 are the same, bit for bit", "[cuda][content]") {
    if (!gpu_ready("lsh versions")) return;
    const int64_t heads = 4, batch = 1;
    for (const int64_t n : {int64_t{1000}, int64_t{40000}}) {
        for (const int64_t d : {64, 128}) {
            for (const int64_t rounds : {2, 4}) {
                INFO("n " << n << " d " << d << " rounds " << rounds);
                ContentSpec spec;
                spec.kind = ContentKind::lsh;
                spec.buckets = 64;
                spec.rounds = rounds;
                spec.chunk = 64;
                spec.seed = 3;
                const MaskSet set = content_set(n, heads, {}, spec);
                const CudaContentNumbers numbers = cuda_content_numbers(set, 0, d, nullptr);
                const TensorShape shape{batch, heads, n, d};
                const Tensor q = tensor_round_to(tensor_random(shape, 70 + static_cast<uint64_t>(d)), CudaDtype::bfloat16);
                const Tensor k = tensor_round_to(tensor_random(shape, 71), CudaDtype::bfloat16);
                const Tensor v = tensor_round_to(tensor_random(shape, 72), CudaDtype::bfloat16);
                std::vector<int32_t> buckets[2];
                for (const int version : {2, 3}) {
                    CudaContentOptions options;
                    options.version = version;
                    engine().forward(q, k, v, set, 0, numbers, options);
                    buckets[version - 2] = engine().walk().q_bucket;
                }
                REQUIRE(buckets[0].size() == static_cast<size_t>(rounds * batch * heads * n));
                CHECK(buckets[0] == buckets[1]);
            }
        }
    }
}

// Long enough that version 3's dense walk (content_dense3) gives a block several items: the causal
// key pass walks several splits of a feature tile, the query pass several query tiles (new Q and,
// causal, new chunk values a step), the bidirectional key pass several steps a split.
TEST_CASE("cuda content: favor with several items a block (version 3's dense walk)", "[cuda][content][small]") {
    if (!gpu_ready("favor walks")) return;
    for (const bool causal : {false, true}) {
        check_favor_case(6000, 128, 256, causal, CudaDtype::bfloat16, true, 1.f, 50, 3);
        check_favor_case(6000, 64, 96, causal, CudaDtype::float16, true, 1.f, 51, 3);
    }
}

TEST_CASE("cuda content: favor matches FAVOR+ in double", "[cuda][content]") {
    if (!gpu_ready("favor")) return;
    for (const int version : {1, 2, 3}) {   // 3: causal FAVOR+'s parts in T, merged inside the intra pass
        for (const bool causal : {false, true}) {
            for (const int64_t d : {64, 128}) {
                check_favor_case(333, d, 256, causal, CudaDtype::bfloat16, true, 1.f, 30 + static_cast<uint64_t>(d), version);
                check_favor_case(333, d, 128, causal, CudaDtype::float16, true, 1.f, 31 + static_cast<uint64_t>(d), version);
                check_favor_case(333, d, 100, causal, CudaDtype::float32, false, 1.f, 32 + static_cast<uint64_t>(d), version);
            }
            // large query norms: scores far beyond exp's range without the stabiliser, still finite
            check_favor_case(150, 64, 64, causal, CudaDtype::float32, false, 40.f, 40, version);
            check_favor_case(150, 64, 64, causal, CudaDtype::bfloat16, true, 40.f, 41, version);
        }
    }
}

TEST_CASE("cuda content: bad calls are refused with a message", "[cuda][content]") {
    if (!gpu_ready("bad calls")) return;
    const TensorShape shape{1, 2, 100, 64};
    const Tensor x = tensor_random(shape, 1);
    ContentSpec spec;
    spec.buckets = 7;   // odd
    const CudaContentNumbers none(2);
    CHECK_THROWS_WITH(engine().forward(x, x, x, content_set(100, 2, {}, spec), 0, none), Contains("even number of buckets"));
    spec.buckets = 128;   // above n
    CHECK_THROWS_WITH(engine().forward(x, x, x, content_set(100, 2, {}, spec), 0, none), Contains("n = 100"));
    spec.buckets = 8;
    CHECK_THROWS_WITH(engine().forward(x, x, x, content_set(100, 2, {}, spec), 0, none), Contains("rotations [rounds, d, buckets / 2]"));
    MaskSet mixed = content_set(100, 2, {}, spec);
    ContentSpec other = spec;
    other.rounds = 2;
    mixed.content[1] = std::make_shared<ContentSpec>(other);
    CHECK_THROWS_WITH(engine().forward(x, x, x, mixed, 0, none), Contains("head 1 of layer 0 differs"));
    spec.kind = ContentKind::favor;
    spec.features = 16;
    CudaContentOptions negative;
    negative.scale = -0.1f;
    const CudaContentNumbers omega(2, std::vector<float>(16 * 64, 0.1f));
    CHECK_THROWS_WITH(engine().forward(x, x, x, content_set(100, 2, {}, spec), 0, omega, negative), Contains("scale > 0"));
}

TEST_CASE("cuda content: matches the CPU engines on the numbers they draw", "[cuda][content]") {
    if (!gpu_ready("CPU engines")) return;
    const int64_t n = 300, d = 64, heads = 2, batch = 2;
    const TensorShape shape{batch, heads, n, d};
    for (const CudaDtype dtype : {CudaDtype::float32, CudaDtype::bfloat16}) {
        const double tolerance = dtype == CudaDtype::float32 ? 1e-4 : 2e-2;
        for (const ContentKind kind : {ContentKind::lsh, ContentKind::anchors}) {
            for (const bool causal : {false, true}) {
                for (const bool window : {false, true}) {
                    ContentSpec spec;
                    spec.kind = kind;
                    spec.buckets = kind == ContentKind::lsh ? 8 : 6;
                    spec.rounds = 2;
                    spec.chunk = 64;
                    spec.seed = 9;
                    spec.causal = causal;
                    ContentArrays arrays;
                    if (kind == ContentKind::anchors) {   // fitted anchors as a file gives them: unit rows
                        spec.file = "/anchors.npz";
                        ContentArray a{spec.file, {spec.rounds, spec.buckets, d}, random_normals(3, 0, 0, 0, spec.rounds * spec.buckets * d)};
                        for (int64_t r = 0; r < spec.rounds * spec.buckets; ++r) {
                            double norm = 0;
                            for (int64_t i = 0; i < d; ++i) norm += double{a.values[static_cast<size_t>(r * d + i)]} * a.values[static_cast<size_t>(r * d + i)];
                            for (int64_t i = 0; i < d; ++i) a.values[static_cast<size_t>(r * d + i)] /= static_cast<float>(std::sqrt(norm));
                        }
                        arrays[spec.file] = a;
                    }
                    const MaskSet set = content_set(n, heads, window ? window_mask(n, 16, causal) : std::vector<uint8_t>{}, spec);
                    const CudaContentNumbers numbers = cuda_content_numbers(set, 0, d, &arrays);
                    INFO(std::string(kind == ContentKind::lsh ? "lsh" : "anchors") << " causal " << causal << " window " << window
                         << " " << cuda_dtype_name(dtype));
                    // inputs on which the CPU's buckets (from double products) and the GPU's (float32)
                    // agree: a draw where some token nearly ties between two buckets is replaced
                    bool agree = false;
                    for (uint64_t seed = 500; seed < 506 && !agree; ++seed) {
                        const Tensor q = tensor_round_to(tensor_random(shape, seed), dtype);
                        const Tensor k = tensor_round_to(tensor_random(shape, seed + 100), dtype);
                        const Tensor v = tensor_round_to(tensor_random(shape, seed + 200), dtype);
                        CudaContentOptions options;
                        options.dtype = dtype;
                        const AttentionOutput got = engine().forward(q, k, v, set, 0, numbers, options);
                        const CudaContentWalk walk = engine().walk();
                        agree = true;
                        for (int64_t b = 0; b < batch && agree; ++b) {
                            for (int64_t h = 0; h < heads && agree; ++h) {
                                const ContentArray* file = content_array_find(&arrays, spec, "test");
                                const ContentWalk cpu = content_walk_hash(spec, file, row_of(q, b, h, 0), row_of(k, b, h, 0), n, d, 0, h, 64, "test");
                                for (int64_t r = 0; r < spec.rounds; ++r)
                                    for (int64_t t = 0; t < n; ++t)
                                        agree = agree && cpu.q_bucket[static_cast<size_t>(r * n + t)] ==
                                                             walk.q_bucket[static_cast<size_t>((r * batch * heads + b * heads + h) * n + t)];
                            }
                        }
                        if (!agree) continue;
                        ContentOptions cpu_options;
                        cpu_options.arrays = &arrays;
                        const ContentForward want = content_attention_forward(q, k, v, set, 0, cpu_options);
                        check_output(got, AttentionOutput{want.o, want.lse}, tolerance);
                    }
                    CHECK(agree);
                }
            }
        }
        // FAVOR+: the features favor_features_for_head draws (orthogonal blocks), rounded as the GPU holds them
        for (const bool causal : {false, true}) {
            ContentSpec spec;
            spec.kind = ContentKind::favor;
            spec.features = 128;
            spec.seed = 4;
            spec.causal = causal;
            const MaskSet set = content_set(n, heads, {}, spec);
            CudaContentNumbers numbers = cuda_content_numbers(set, 0, d, nullptr);
            std::vector<FavorFeatures> features;
            for (int64_t h = 0; h < heads; ++h) {
                auto& x = numbers[static_cast<size_t>(h)];
                REQUIRE(x == favor_features_draw(spec.seed, 0, h, 0, spec.features, d).omega);
                x = tensor_round_to(Tensor{{1, 1, spec.features, d}, x}, dtype).data;
                features.push_back(favor_features_make(x, spec.features, d, "test"));
            }
            const Tensor q = tensor_round_to(tensor_random(shape, 600), dtype), k = tensor_round_to(tensor_random(shape, 601), dtype);
            const Tensor v = tensor_round_to(tensor_random(shape, 602), dtype);
            CudaContentOptions options;
            options.dtype = dtype;
            FavorOptions cpu_options;
            cpu_options.causal = causal;
            INFO("favor causal " << causal << " " << cuda_dtype_name(dtype));
            const AttentionOutput got = engine().forward(q, k, v, set, 0, numbers, options);
            const FavorOutput want = favor_forward(q, k, v, features, cpu_options);
            check_output(got, AttentionOutput{want.o, got.lse}, tolerance, false);
        }
    }
}

// [SECTION] anchors' assignment on the GPU against the CPU engine's, bit for bit

namespace {

// Unit anchors [rounds, k, d] as a fitted file holds them, from normals of `seed`.
ContentArray unit_anchors(const std::string& path, int64_t rounds, int64_t k, int64_t d, uint64_t seed) {
    ContentArray a{path, {rounds, k, d}, random_normals(seed, 0, 0, 0, rounds * k * d)};
    for (int64_t r = 0; r < rounds * k; ++r) {
        double norm = 0;
        for (int64_t i = 0; i < d; ++i) norm += double{a.values[static_cast<size_t>(r * d + i)]} * a.values[static_cast<size_t>(r * d + i)];
        for (int64_t i = 0; i < d; ++i) a.values[static_cast<size_t>(r * d + i)] /= static_cast<float>(std::sqrt(norm));
    }
    return a;
}

} // namespace

TEST_CASE("cuda content: anchors' balanced assignment on the GPU is the CPU engine's, bit for bit", "[cuda][content][anchors]") {
    if (!gpu_ready("anchors assignment")) return;
    struct AssignCase {
        int64_t n, d, k, rounds;
        CudaDtype dtype;
        bool shared_qk;
        const char* input;   // random; clustered (most tokens near two anchors: the capacity binds); ties (repeated and zero rows)
    };
    const AssignCase cases[] = {
        {300, 64, 6, 2, CudaDtype::float32, true, "random"},     {1000, 64, 64, 2, CudaDtype::bfloat16, true, "random"},
        {4099, 128, 64, 1, CudaDtype::float16, false, "random"}, {2000, 64, 16, 2, CudaDtype::bfloat16, true, "clustered"},
        {777, 64, 32, 2, CudaDtype::float32, false, "clustered"}, {1500, 64, 24, 2, CudaDtype::bfloat16, true, "ties"},
        {513, 128, 513, 1, CudaDtype::float32, true, "random"},  // one token an anchor
    };
    const int64_t heads = 2, batch = 2;
    for (const AssignCase& c : cases) {
        INFO("n " << c.n << " d " << c.d << " k " << c.k << " rounds " << c.rounds << " " << cuda_dtype_name(c.dtype) << " shared_qk "
                  << c.shared_qk << " " << c.input);
        ContentSpec spec;
        spec.kind = ContentKind::anchors;
        spec.buckets = c.k;
        spec.rounds = c.rounds;
        spec.chunk = 64;
        spec.shared_qk = c.shared_qk;
        spec.file = "/anchors.npz";
        ContentArrays arrays;
        arrays[spec.file] = unit_anchors(spec.file, c.rounds, c.k, c.d, 11 + static_cast<uint64_t>(c.n));
        const MaskSet set = content_set(c.n, heads, {}, spec);
        const TensorShape shape{batch, heads, c.n, c.d};
        Tensor q = tensor_random(shape, 40 + static_cast<uint64_t>(c.n)), k = tensor_random(shape, 41 + static_cast<uint64_t>(c.n));
        const std::vector<float>& anchors = arrays[spec.file].values;
        for (Tensor* x : {&q, &k}) {
            for (int64_t b = 0; b < batch; ++b) {
                for (int64_t h = 0; h < heads; ++h) {
                    for (int64_t t = 0; t < c.n; ++t) {
                        float* row = &x->at(b, h, t, 0);
                        if (std::string(c.input) == "clustered") {   // 3 of 4 tokens: anchor 0 or 1 of round 0, plus a little noise
                            if (t % 4 == 3) continue;
                            const float* a = anchors.data() + (t % 2) * c.d;
                            for (int64_t i = 0; i < c.d; ++i) row[i] = 4.f * a[i] + 0.05f * row[i];
                        } else if (std::string(c.input) == "ties") {   // every 5th token a zero row, every 3rd a copy of token 1
                            if (t % 5 == 0) std::fill(row, row + c.d, 0.f);
                            else if (t % 3 == 0 && t > 1) std::copy(&x->at(b, h, 1, 0), &x->at(b, h, 1, 0) + c.d, row);
                        }
                    }
                }
            }
        }
        q = tensor_round_to(q, c.dtype);
        k = tensor_round_to(k, c.dtype);
        const CudaContentNumbers numbers = cuda_content_numbers(set, 0, c.d, &arrays);
        CudaContentOptions options;
        options.dtype = c.dtype;
        engine().forward(q, k, q, set, 0, numbers, options);
        const CudaContentWalk walk = engine().walk();
        REQUIRE(walk.rounds == c.rounds);
        REQUIRE(walk.q_bucket.size() == static_cast<size_t>(c.rounds * batch * heads * c.n));
        REQUIRE(walk.k_bucket.size() == (c.shared_qk ? size_t{0} : walk.q_bucket.size()));
        int64_t differ = 0, compared = 0, full = 0;
        for (int64_t b = 0; b < batch; ++b) {
            for (int64_t h = 0; h < heads; ++h) {
                const ContentWalk cpu = content_walk_hash(spec, content_array_find(&arrays, spec, "test"), row_of(q, b, h, 0), row_of(k, b, h, 0),
                                                          c.n, c.d, 0, h, 64, "test");
                for (int side = 0; side < (c.shared_qk ? 1 : 2); ++side) {
                    for (int64_t r = 0; r < c.rounds; ++r) {
                        const int32_t* gpu = (side == 0 ? walk.q_bucket : walk.k_bucket).data() + (r * batch * heads + b * heads + h) * c.n;
                        const int32_t* want = (side == 0 ? cpu.q_bucket : cpu.k_bucket).data() + r * c.n;
                        std::vector<int64_t> count(static_cast<size_t>(c.k), 0);
                        for (int64_t t = 0; t < c.n; ++t) {
                            ++compared;
                            ++count[static_cast<size_t>(want[t])];
                            if (gpu[t] == want[t]) continue;
                            if (differ++ < 5) UNSCOPED_INFO("b " << b << " h " << h << " side " << side << " round " << r << " token " << t << ": GPU "
                                                                << gpu[t] << ", CPU " << want[t]);
                        }
                        for (int64_t n_a : count) full += n_a == (c.n + c.k - 1) / c.k;
                    }
                }
            }
        }
        INFO(compared << " assignments compared, " << full << " anchors filled to capacity");
        CHECK(differ == 0);
        if (std::string(c.input) == "clustered") CHECK(full >= 2);   // the capacity did bind: the greedy's second choices were taken
    }
}
