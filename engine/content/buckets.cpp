// Buckets for lsh and anchors: hashing, balanced assignment, anchors fitting, the counting sort
// and chunks (buckets.hpp says what each computes exactly).
//
// [SECTION] lsh: rotations, hashing
// [SECTION] anchors: balanced assignment, spherical k-means
// [SECTION] walk: per round buckets, orders and chunks
#include "engine/content/buckets.hpp"

#include "engine/content/random_numbers.hpp"
#include "engine/error.hpp"
#include "engine/threads.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

namespace sparsa {

namespace {

using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMapF = Eigen::Map<const MatrixF>;

size_t to_size(int64_t i) { return static_cast<size_t>(i); }

// Rows are hashed or assigned this many at a time (a [rows, d] and a [rows, buckets] double buffer).
constexpr int64_t kRowPiece = 1024;

} // namespace

// [SECTION] lsh

std::vector<float> lsh_rotation(const ContentSpec& spec, const ContentArray* file, int64_t layer, int64_t head,
                                int64_t round, int64_t d) {
    const int64_t half = spec.buckets / 2;
    if (file != nullptr) {
        content_array_check_shape(*file, {spec.rounds, d, half}, "lsh rotations",
                                  "[rounds, d, buckets / 2]: rounds = " + std::to_string(spec.rounds) + ", d = " +
                                      std::to_string(d) + ", buckets = " + std::to_string(spec.buckets));
        const auto first = file->values.begin() + static_cast<std::ptrdiff_t>(round * d * half);
        return std::vector<float>(first, first + static_cast<std::ptrdiff_t>(d * half));
    }
    return random_normals(spec.seed, layer, head, round, d * half);
}

void lsh_hash(const float* x, int64_t n, int64_t d, const float* rotation, int64_t buckets, int32_t* bucket) {
    const int64_t half = buckets / 2;
    const MatrixD r = ConstMapF(rotation, d, half).cast<double>();
    MatrixD u;
    for (int64_t first = 0; first < n; first += kRowPiece) {
        const int64_t rows = std::min(kRowPiece, n - first);
        u.noalias() = ConstMapF(x + first * d, rows, d).cast<double>() * r;   // u = x R
        for (int64_t i = 0; i < rows; ++i) {
            // argmax over [u, -u]: index j for u_j, half + j for -u_j; strict > keeps the lowest on ties
            int32_t best = 0;
            double best_value = u(i, 0);
            for (int64_t j = 1; j < half; ++j) {
                if (u(i, j) > best_value) best_value = u(i, j), best = static_cast<int32_t>(j);
            }
            for (int64_t j = 0; j < half; ++j) {
                if (-u(i, j) > best_value) best_value = -u(i, j), best = static_cast<int32_t>(half + j);
            }
            bucket[first + i] = best;
        }
    }
}

// [SECTION] anchors

void anchors_assign(const float* x, int64_t n, int64_t d, const float* anchors, int64_t k, int32_t* bucket) {
    // cos [n, k] in double, each sum over i = 0 .. d - 1 in that order (buckets.hpp says why): the
    // anchors transposed [d, k], so the loop over anchors is the inner, vectorisable one and each
    // cosine still adds its d products one after the other.
    std::vector<double> at(to_size(d * k));
    for (int64_t a = 0; a < k; ++a)
        for (int64_t i = 0; i < d; ++i) at[to_size(i * k + a)] = anchors[a * d + i];
    std::vector<double> cos(to_size(n * k)), best(to_size(n));
    for (int64_t t = 0; t < n; ++t) {
        const float* row = x + t * d;
        double* c = cos.data() + t * k;
        double norm2 = 0;
        for (int64_t i = 0; i < d; ++i) norm2 += double{row[i]} * double{row[i]};
        const double norm = std::sqrt(norm2);
        for (int64_t i = 0; i < d; ++i) {
            const double xi = row[i];
            const double* ai = at.data() + i * k;
            for (int64_t a = 0; a < k; ++a) c[a] += xi * ai[a];
        }
        double top = -INFINITY;
        for (int64_t a = 0; a < k; ++a) {
            c[a] = norm > 0 ? c[a] / norm : 0.0;
            top = std::max(top, c[a]);
        }
        best[to_size(t)] = top;
    }
    std::vector<int32_t> order(to_size(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a_, int32_t b_) { return best[to_size(a_)] > best[to_size(b_)]; });
    const int64_t capacity = (n + k - 1) / k;
    std::vector<int64_t> room(to_size(k), capacity);
    for (int32_t t : order) {
        const double* c = cos.data() + int64_t{t} * k;
        int64_t pick = -1;
        for (int64_t j = 0; j < k; ++j) {
            if (room[to_size(j)] > 0 && (pick < 0 || c[j] > c[pick])) pick = j;
        }
        --room[to_size(pick)];   // k * capacity >= n: some anchor always has room
        bucket[t] = static_cast<int32_t>(pick);
    }
}

std::vector<float> anchors_fit(const float* x, int64_t rows, int64_t d, int64_t k, uint64_t seed, int64_t iterations,
                               int threads, const std::function<void(int64_t, double)>& progress) {
    if (k < 1) throw Error("anchors fit: " + std::to_string(k) + " anchors (give 1 or more)");
    if (iterations < 0) throw Error("anchors fit: " + std::to_string(iterations) + " iterations (give 0 or more)");
    // The unit rows.
    std::vector<int64_t> kept;
    for (int64_t i = 0; i < rows; ++i) {
        double s = 0;
        for (int64_t t = 0; t < d; ++t) s += double{x[i * d + t]} * x[i * d + t];
        if (s > 0) kept.push_back(i);
    }
    const int64_t m = static_cast<int64_t>(kept.size());
    if (m < k) {
        throw Error("anchors fit: " + std::to_string(m) + " nonzero rows of Q and K for " + std::to_string(k) +
                    " anchors (give more calibration tokens, or fewer anchors)");
    }
    MatrixF unit(m, d);
    for (int64_t i = 0; i < m; ++i) {
        const Eigen::Map<const Eigen::RowVectorXf> row(x + kept[to_size(i)] * d, d);
        unit.row(i) = (row.cast<double>() / row.cast<double>().norm()).cast<float>();
    }
    // Work in fixed pieces of rows, so that sums do not depend on the thread count.
    constexpr int64_t kPiece = 4096;
    const int64_t pieces = (m + kPiece - 1) / kPiece;
    auto over_pieces = [&](const std::function<void(int64_t, int64_t, int64_t)>& body) {
        parallel_for(pieces, threads, [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) body(p, p * kPiece, std::min(m, (p + 1) * kPiece));
        });
    };

    // k-means++: best[i] = the highest cosine of row i to a centre so far.
    MatrixF centres(k, d);
    RandomStream random(seed, 0, 0, 0);
    std::vector<double> best(to_size(m), -2.0);
    auto add_centre = [&](int64_t c, int64_t row) {
        centres.row(c) = unit.row(row);
        over_pieces([&](int64_t, int64_t i0, int64_t i1) {
            for (int64_t i = i0; i < i1; ++i) best[to_size(i)] = std::max(best[to_size(i)], double{unit.row(i).dot(centres.row(c))});
        });
    };
    add_centre(0, std::min<int64_t>(m - 1, static_cast<int64_t>(random.uniform() * static_cast<double>(m))));
    for (int64_t c = 1; c < k; ++c) {
        double total = 0;
        for (int64_t i = 0; i < m; ++i) total += std::max(0.0, 1.0 - best[to_size(i)]);
        int64_t pick = m - 1;
        if (total > 0) {
            const double target = random.uniform() * total;
            double run = 0;
            for (int64_t i = 0; i < m; ++i) {
                run += std::max(0.0, 1.0 - best[to_size(i)]);
                if (run >= target) {
                    pick = i;
                    break;
                }
            }
        } else {
            pick = std::min<int64_t>(m - 1, static_cast<int64_t>(random.uniform() * static_cast<double>(m)));
        }
        add_centre(c, pick);
    }

    // Lloyd's iterations on the sphere.
    std::vector<MatrixD> sums(to_size(pieces));
    std::vector<std::vector<int64_t>> counts(to_size(pieces));
    std::vector<double> piece_cos(to_size(pieces));
    for (int64_t it = 0; it < iterations; ++it) {
        over_pieces([&](int64_t p, int64_t i0, int64_t i1) {
            const MatrixF cos = unit.middleRows(i0, i1 - i0) * centres.transpose();
            MatrixD& sum = sums[to_size(p)];
            sum.setZero(k, d);
            counts[to_size(p)].assign(to_size(k), 0);
            double total = 0;
            for (int64_t i = i0; i < i1; ++i) {
                Eigen::Index c = 0;
                total += cos.row(i - i0).maxCoeff(&c);   // maxCoeff keeps the first of equal values
                sum.row(c) += unit.row(i).cast<double>();
                ++counts[to_size(p)][to_size(c)];
            }
            piece_cos[to_size(p)] = total;
        });
        MatrixD sum = MatrixD::Zero(k, d);
        double total = 0;
        std::vector<int64_t> count(to_size(k), 0);
        for (int64_t p = 0; p < pieces; ++p) {
            sum += sums[to_size(p)];
            total += piece_cos[to_size(p)];
            for (int64_t c = 0; c < k; ++c) count[to_size(c)] += counts[to_size(p)][to_size(c)];
        }
        for (int64_t c = 0; c < k; ++c) {
            const double norm = sum.row(c).norm();
            if (count[to_size(c)] > 0 && norm > 0) centres.row(c) = (sum.row(c) / norm).cast<float>();
        }
        if (progress) progress(it + 1, total / static_cast<double>(m));
    }
    return std::vector<float>(centres.data(), centres.data() + k * d);
}

// [SECTION] walk

void buckets_sort(const int32_t* bucket, int64_t n, int64_t buckets, int32_t* order) {
    std::vector<int64_t> start(to_size(buckets + 1), 0);
    for (int64_t t = 0; t < n; ++t) ++start[to_size(bucket[t]) + 1];
    for (int64_t b = 0; b < buckets; ++b) start[to_size(b + 1)] += start[to_size(b)];
    for (int64_t t = 0; t < n; ++t) order[start[to_size(bucket[t])]++] = static_cast<int32_t>(t);   // positions ascending
}

ContentWalk content_walk_hash(const ContentSpec& spec, const ContentArray* file, const float* q, const float* k,
                              int64_t n, int64_t d, int64_t layer, int64_t head, int64_t chunk,
                              const std::string& what) {
    const bool lsh = spec.kind == ContentKind::lsh;
    if (!lsh && spec.kind != ContentKind::anchors) throw Error(what + ": the head is not lsh or anchors");
    const std::string name = lsh ? "lsh" : "anchors";
    if (lsh && (spec.buckets < 2 || spec.buckets % 2 != 0)) {
        throw Error(what + ": lsh(" + std::to_string(spec.buckets) + ") needs an even number of buckets, 2 or more");
    }
    if (lsh && spec.buckets > n) {
        throw Error(what + ": lsh(" + std::to_string(spec.buckets) + ") has more buckets than the " + std::to_string(n) +
                    " tokens (n = " + std::to_string(n) + "; use at most n buckets)");
    }
    if (!lsh && spec.buckets < 1) throw Error(what + ": anchors(" + std::to_string(spec.buckets) + ") needs 1 or more anchors");
    if (spec.rounds < 1) throw Error(what + ": " + name + " with " + std::to_string(spec.rounds) + " rounds (give 1 or more)");
    if (chunk < 1) throw Error(what + ": " + name + " with chunk " + std::to_string(chunk) + " (give 1 or more)");
    if (n >= (int64_t{1} << 31)) throw Error(what + ": n = " + std::to_string(n) + " is beyond what " + name + " indexes (2^31 - 1)");
    if (!lsh && file == nullptr) {
        throw Error(what + ": anchors(" + std::to_string(spec.buckets) +
                    ") needs its fitted anchors (fit = \"FILE.npz\"; make one with sparsa anchors fit)");
    }
    if (lsh && file != nullptr) {
        content_array_check_shape(*file, {spec.rounds, d, spec.buckets / 2}, what + ": lsh rotations",
                                  "[rounds, d, buckets / 2]: rounds = " + std::to_string(spec.rounds) + ", d = " +
                                      std::to_string(d) + ", buckets = " + std::to_string(spec.buckets));
    }
    if (!lsh) {
        content_array_check_shape(*file, {spec.rounds, spec.buckets, d}, what + ": anchors",
                                  "[rounds, k, d]: rounds = " + std::to_string(spec.rounds) + ", k = " +
                                      std::to_string(spec.buckets) + ", d = " + std::to_string(d));
    }
    ContentWalk w;
    w.n = n;
    w.chunk = chunk;
    w.rounds = spec.rounds;
    w.buckets = spec.buckets;
    w.shared_qk = spec.shared_qk;
    w.q_bucket.resize(to_size(spec.rounds * n));
    if (!w.shared_qk) w.k_bucket.resize(to_size(spec.rounds * n));
    for (int64_t r = 0; r < spec.rounds; ++r) {
        if (lsh) {
            const std::vector<float> rotation = lsh_rotation(spec, file, layer, head, r, d);
            lsh_hash(q, n, d, rotation.data(), spec.buckets, w.q_bucket.data() + r * n);
            if (!w.shared_qk) lsh_hash(k, n, d, rotation.data(), spec.buckets, w.k_bucket.data() + r * n);
        } else {
            const float* anchors = file->values.data() + r * spec.buckets * d;
            anchors_assign(q, n, d, anchors, spec.buckets, w.q_bucket.data() + r * n);
            if (!w.shared_qk) anchors_assign(k, n, d, anchors, spec.buckets, w.k_bucket.data() + r * n);
        }
    }
    return w;
}

ContentWalk content_walk_given(const ContentSpec& spec, const std::vector<int32_t>& q_bucket, const std::vector<int32_t>& k_bucket,
                               int64_t n, int64_t chunk, const std::string& what) {
    ContentWalk w;
    w.n = n;
    w.chunk = chunk;
    w.rounds = spec.rounds;
    w.buckets = spec.buckets;
    w.shared_qk = spec.shared_qk;
    const size_t size = to_size(spec.rounds * n);
    for (const auto& [bucket, name] : {std::pair{&q_bucket, "queries'"}, std::pair{&k_bucket, "keys'"}}) {
        const bool wanted = bucket == &q_bucket || !spec.shared_qk;
        if (bucket->size() != (wanted ? size : 0)) {
            throw Error(what + ": given buckets: the " + name + " are " + std::to_string(bucket->size()) + " values, the spec needs " +
                        std::to_string(wanted ? size : 0) + " ([rounds, n] = [" + std::to_string(spec.rounds) + ", " + std::to_string(n) +
                        "]" + (wanted ? "" : ": shared_qk buckets keys as queries") + ")");
        }
        for (const int32_t b : *bucket) {
            if (b < 0 || b >= spec.buckets) {
                throw Error(what + ": given buckets: bucket " + std::to_string(b) + " is outside 0 to " + std::to_string(spec.buckets - 1));
            }
        }
    }
    w.q_bucket = q_bucket;
    w.k_bucket = k_bucket;
    return w;
}

void content_walk_sort(ContentWalk& w) {
    const int64_t n = w.n;
    auto sort_side = [&](const std::vector<int32_t>& bucket, std::vector<int32_t>& order, std::vector<int32_t>& chunk) {
        order.resize(to_size(w.rounds * n));
        chunk.resize(to_size(w.rounds * n));
        for (int64_t r = 0; r < w.rounds; ++r) {
            int32_t* o = order.data() + r * n;
            buckets_sort(bucket.data() + r * n, n, w.buckets, o);
            for (int64_t s = 0; s < n; ++s) chunk[to_size(r * n + o[s])] = static_cast<int32_t>(s / w.chunk);
        }
    };
    sort_side(w.q_bucket, w.q_order, w.q_chunk);
    if (!w.shared_qk) sort_side(w.k_bucket, w.k_order, w.k_chunk);
}

} // namespace sparsa
