// The CPU engine: block-sparse attention in float32, one query block (forward, dQ) or one key
// block (dK, dV) per task, with Eigen products on block-sized row-major operands, except S.
//
// [SECTION] blocks: row-major block views, applying a partial block's bitmask, exp
// [SECTION] scores: S = Q K^T by one chain of operations per score, whatever the product's shape
// [SECTION] forward: S = Q K^T, online softmax, O += P V over the kept blocks of a query block
// [SECTION] backward: P from lse, dS = P * (dP - D); dK, dV per key block, dQ per query block
// [SECTION] entry points: checks, work items on threads
#include "engine/cpu_attention.hpp"

#include "engine/reference.hpp"
#include "engine/threads.hpp"

#include <Eigen/Core>
static_assert(EIGEN_VERSION_AT_LEAST(3, 4, 0), "the CPU engine needs Eigen 3.4 (exp_packet uses pldexp_fast_impl)");

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

namespace sparsa {

namespace {

// [SECTION] blocks

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Block = Eigen::Map<Matrix>;              // rows x cols of contiguous rows
using ConstBlock = Eigen::Map<const Matrix>;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) below x = -87 is subnormal in float, and subnormals cost ~100x on x86 (the masked pairs,
// at -inf, would hit it every time). Arguments are clamped here: exp(-80) = 1.8e-35 beside the
// row's largest term, exp(0) = 1, changes nothing; masked pairs are then set to exactly 0.
constexpr float kExpFloor = -80.0f;

size_t to_size(int64_t i) { return static_cast<size_t>(i); }

// Rows [b * B, b * B + extent) of one head's [n, d] array, as an extent x d block.
ConstBlock head_rows(const float* head, int64_t n, int64_t d, int64_t block, int64_t b) {
    const int64_t first = b * block;
    return ConstBlock(head + first * d, std::min(block, n - first), d);
}

// The first rows x cols of a scratch matrix (allocated once per thread at its largest size).
Block scratch_block(Matrix& m, int64_t rows, int64_t cols) { return Block(m.data(), rows, cols); }
ConstBlock scratch_view(const Matrix& m, int64_t rows, int64_t cols) { return ConstBlock(m.data(), rows, cols); }

// Writes `value` into every pair (i, j), i < rows, j < cols, that the bitmask of a partial block
// leaves out (bit i*B + j), at s(i, col0 + j), or at s(col0 + j, i) when `transposed` (s holds
// S^T). Walks the clear bits a word at a time.
void block_fill_masked(Block s, bool transposed, int64_t rows, int64_t col0, int64_t cols, const uint64_t* bits,
                       int64_t block, float value) {
    for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j0 = 0; j0 < cols; j0 += 64) {
            // For B >= 64 a row is whole words; for B < 64 it lies inside one word.
            const int64_t t = i * block + j0, width = std::min<int64_t>(64, cols - j0);
            const uint64_t valid = width == 64 ? ~uint64_t{0} : (uint64_t{1} << width) - 1;
            uint64_t clear = ~(bits[t / 64] >> (t % 64)) & valid;
            for (; clear != 0; clear &= clear - 1) {
                const int64_t j = col0 + j0 + std::countr_zero(clear);
                (transposed ? s(j, i) : s(i, j)) = value;
            }
        }
    }
}

// x[j] = exp(x[j] - shift) for j < count, shift finite: Eigen's own float exp (the Cephes
// polynomial, relative error < 1e-7), with arguments clamped to [kExpFloor, -kExpFloor], rounding
// by adding 1.5 * 2^23 and 2^k straight from the exponent bits. Why not Eigen's .exp(): on SSE2 it
// spends most of its time emulating floor and a general ldexp; measured here, 1.2 ns per element
// against 2.8, which took window(256) at d = 64 from 66% to 74% of the product rate. The tail goes
// through a padded packet, so every element gets the same formula.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"   // Packet is an __m128: Eigen's own idiom
using Packet = Eigen::internal::packet_traits<float>::type;
constexpr int64_t kLanes = Eigen::internal::packet_traits<float>::size;

Packet exp_packet(Packet x) {
    namespace ei = Eigen::internal;
    x = ei::pmin(ei::pmax(x, ei::pset1<Packet>(kExpFloor)), ei::pset1<Packet>(-kExpFloor));
    const Packet magic = ei::pset1<Packet>(12582912.0f);   // 1.5 * 2^23: x + magic - magic rounds x
    const Packet k = ei::psub(ei::padd(ei::pmul(x, ei::pset1<Packet>(1.44269504088896341f)), magic), magic);
    Packet r = ei::pmadd(k, ei::pset1<Packet>(-0.693359375f), x);   // r = x - k ln 2, in two parts
    r = ei::pmadd(k, ei::pset1<Packet>(2.12194440e-4f), r);
    Packet p = ei::pset1<Packet>(1.9875691500e-4f);
    p = ei::pmadd(p, r, ei::pset1<Packet>(1.3981999507e-3f));
    p = ei::pmadd(p, r, ei::pset1<Packet>(8.3334519073e-3f));
    p = ei::pmadd(p, r, ei::pset1<Packet>(4.1665795894e-2f));
    p = ei::pmadd(p, r, ei::pset1<Packet>(1.6666665459e-1f));
    p = ei::pmadd(p, r, ei::pset1<Packet>(5.0000001201e-1f));
    const Packet exp_r = ei::padd(ei::pmadd(p, ei::pmul(r, r), r), ei::pset1<Packet>(1.0f));
    return ei::pldexp_fast_impl<Packet>::run(exp_r, k);   // exp(r) * 2^k
}

void exp_shifted(float* x, int64_t count, float shift) {
    namespace ei = Eigen::internal;
    const Packet m = ei::pset1<Packet>(shift);
    int64_t j = 0;
    for (; j + kLanes <= count; j += kLanes) ei::pstoreu(x + j, exp_packet(ei::psub(ei::ploadu<Packet>(x + j), m)));
    if (j < count) {
        alignas(64) float tail[kLanes] = {};
        std::copy(x + j, x + count, tail);
        ei::pstore(tail, exp_packet(ei::psub(ei::pload<Packet>(tail), m)));
        std::copy(tail, tail + (count - j), x + j);
    }
}

// x[j] = exp(x[j] - shift[j]) for j < count (a row of S^T: one shift per query), as exp_shifted.
void exp_shifted_each(float* x, int64_t count, const float* shift) {
    namespace ei = Eigen::internal;
    int64_t j = 0;
    for (; j + kLanes <= count; j += kLanes) {
        ei::pstoreu(x + j, exp_packet(ei::psub(ei::ploadu<Packet>(x + j), ei::ploadu<Packet>(shift + j))));
    }
    if (j < count) {
        alignas(64) float tail[kLanes] = {}, tail_shift[kLanes] = {};
        std::copy(x + j, x + count, tail);
        std::copy(shift + j, shift + count, tail_shift);
        ei::pstore(tail, exp_packet(ei::psub(ei::pload<Packet>(tail), ei::pload<Packet>(tail_shift))));
        std::copy(tail, tail + (count - j), x + j);
    }
}

// [SECTION] scores

// Every score, in every pass, is the same chain of float operations: acc = fma(q_t, k_t, acc)
// over t = 0 .. d - 1 from acc = 0 (a multiply, then an add, where the target has no FMA), with
// q = scale * Q rounded once. fma(a, b, c) = fma(b, a, c) exactly, so either operand may be the
// broadcast one: the forward and the dQ pass compute S^T = K (scale Q)^T, one query block against
// keys read in place; the dK, dV pass computes S = (scale Q) K^T, one key block against query
// blocks. Why not Eigen's product: at AVX-512 it rounds a score differently depending on the
// product's shape and where the key sits in it (its one-packet kernel sums even and odd t apart;
// tiny products and single rows take other paths), while the forward takes runs of up to
// kRunKeys keys per product and the backward one block; the backward must recompute the
// forward's S bit for bit, because at |S| ~ 1e30 one rounding step of S is ~1e23 and
// P = exp(S - lse) one step off is 0 or 5e34 (tests/engine/test_cpu_attention.cpp, "scores of ~1e30").

// dst[t * stride + i] = scale * src[i * d + t] for i < rows, 0 for rows <= i < stride: a block of
// rows x d transposed and padded for scores_product's packed operand (stride: rows rounded up to
// a multiple of kLanes; dst aligned to a packet).
void block_transpose_pad(float* dst, int64_t stride, const float* src, int64_t rows, int64_t d, float scale) {
    for (int64_t t = 0; t < d; ++t) {
        float* out = dst + t * stride;
        for (int64_t i = 0; i < rows; ++i) out[i] = scale * src[i * d + t];
        std::fill(out + rows, out + stride, 0.0f);
    }
}

int64_t lanes_round_up(int64_t count) { return (count + kLanes - 1) / kLanes * kLanes; }

// R rows of a against P packets of b: out[r * ld + c] = sum_t a[r * d + t] b[t * stride + c] for
// c < count (<= P * kLanes), R * P accumulators in registers.
template <int R, int P>
void scores_tile(float* out, int64_t ld, const float* a, int64_t d, const float* b, int64_t stride, int64_t count) {
    namespace ei = Eigen::internal;
    Packet acc[R][P];
    for (auto& row : acc) {
        for (Packet& x : row) x = ei::pset1<Packet>(0.0f);
    }
    for (int64_t t = 0; t < d; ++t) {
        Packet bt[P];
        for (int p = 0; p < P; ++p) bt[p] = ei::pload<Packet>(b + t * stride + p * kLanes);
        for (int r = 0; r < R; ++r) {
            const Packet at = ei::pset1<Packet>(a[r * d + t]);
            for (int p = 0; p < P; ++p) acc[r][p] = ei::pmadd(at, bt[p], acc[r][p]);
        }
    }
    for (int r = 0; r < R; ++r) {
        for (int p = 0; p < P; ++p) {
            const int64_t c = p * kLanes;
            if (c + kLanes <= count) {
                ei::pstoreu(out + r * ld + c, acc[r][p]);
            } else if (c < count) {
                alignas(64) float tail[kLanes];
                ei::pstore(tail, acc[r][p]);
                std::copy(tail, tail + (count - c), out + r * ld + c);
            }
        }
    }
}

// Tiles of P packets of b: rows of a kTileAcc / P at a time (AVX-512: 24 of its 32 registers hold
// accumulators), then one at a time.
constexpr int kTileAcc = kLanes >= 16 ? 24 : 12, kTilePackets = kLanes >= 16 ? 4 : 3;

template <int P>
void scores_strip(float* out, int64_t ld, const float* a, int64_t a_rows, int64_t d, const float* b, int64_t stride,
                  int64_t count) {
    constexpr int R = kTileAcc / P;
    int64_t r = 0;
    for (; r + R <= a_rows; r += R) scores_tile<R, P>(out + r * ld, ld, a + r * d, d, b, stride, count);
    for (; r < a_rows; ++r) scores_tile<1, P>(out + r * ld, ld, a + r * d, d, b, stride, count);
}

// out = a b: a is a_rows x d (row-major, any alignment), b is d x count packed by
// block_transpose_pad (row stride `stride`), out is a_rows x count with row stride ld.
void scores_product(float* out, int64_t ld, const float* a, int64_t a_rows, int64_t d, const float* b, int64_t stride,
                    int64_t count) {
    static_assert(kTilePackets == 3 || kTilePackets == 4, "scores_product dispatches 1 to 4 packets");
    for (int64_t c = 0; c < count; c += kTilePackets * kLanes) {
        const int64_t strip = std::min(kTilePackets * kLanes, count - c), packets = (strip + kLanes - 1) / kLanes;
        float* o = out + c;
        const float* bc = b + c;
        if (packets == 4) scores_strip<kTilePackets == 4 ? 4 : 1>(o, ld, a, a_rows, d, bc, stride, strip);
        else if (packets == 3) scores_strip<3>(o, ld, a, a_rows, d, bc, stride, strip);
        else if (packets == 2) scores_strip<2>(o, ld, a, a_rows, d, bc, stride, strip);
        else scores_strip<1>(o, ld, a, a_rows, d, bc, stride, strip);
    }
}
#pragma GCC diagnostic pop

// The forward takes runs of kept blocks with consecutive key blocks together, up to this many
// keys: their keys are contiguous rows of K and V, so one wider product covers the run (fewer,
// more efficient products, and one softmax update per run instead of per block).
constexpr int64_t kRunKeys = 512;
int64_t run_blocks(int64_t block) { return std::max<int64_t>(1, kRunKeys / block); }

// Per-thread buffers, sized for the largest block once: no allocation inside the loops.
struct Scratch {
    Matrix q, t, s, p, acc_a, acc_b;    // [B, d], [d, B], [run_blocks * B, B], [B, B], [B, d], [B, d]
    Eigen::VectorXf m, l, alpha, shift; // [B]
    Eigen::VectorXd p_sum;              // [B]
    Scratch(int64_t block, int64_t d)
        : q(block, d), t(d, block), s(block * run_blocks(block), block), p(block, block), acc_a(block, d),
          acc_b(block, d), m(block), l(block), alpha(block), shift(block), p_sum(block) {}
};

// Runs body(item, scratch) for every item in [0, count) on `threads` threads. Items are taken
// one at a time from a shared counter (heavy rows, e.g. global tokens, do not stall a static
// split); each item writes only its own outputs, so results do not depend on who ran it.
template <typename Body> void items_run(int64_t count, int threads, int64_t block, int64_t d, const Body& body) {
    std::atomic<int64_t> next{0};
    const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, count));
    parallel_for(workers, static_cast<int>(workers), [&](int64_t, int64_t) {
        Scratch scratch(block, d);
        for (int64_t item; (item = next.fetch_add(1)) < count;) body(item, scratch);
    });
}

// The tensors of one (batch, head): n x d arrays.
struct Head {
    const float *q, *k, *v;
    int64_t n, d;
};

Head head_of(const Tensor& q, const Tensor& k, const Tensor& v, int64_t b, int64_t h) {
    return {q.row(b, h, 0), k.row(b, h, 0), v.row(b, h, 0), q.shape.n, q.shape.d};
}

// w.t = (scale Q)^T of query block qb, padded for scores_product: [d, rows rounded up to kLanes].
void queries_transpose(const Head& x, int64_t block, int64_t qb, float scale, Scratch& w) {
    const int64_t rows = std::min(block, x.n - qb * block);
    block_transpose_pad(w.t.data(), lanes_round_up(rows), x.q + qb * block * x.d, rows, x.d, scale);
}

// [SECTION] forward

// Query block qb of one head: o rows and lse entries of its queries. o, lse point at row 0 of
// the head ([n, d] and [n]). Works on S^T ([keys, rows]): scores_product's layout for a query
// block against keys read in place; the softmax runs down its columns.
void forward_query_block(const Head& x, const BlockMask& mask, int64_t qb, float scale, Scratch& w, float* o,
                         float* lse) {
    const int64_t block = mask.block, rows = std::min(block, x.n - qb * block), d = x.d;
    queries_transpose(x, block, qb, scale, w);   // scaled once: S below is scale * Q K^T
    Block acc = scratch_block(w.acc_a, rows, d);
    acc.setZero();
    auto m = w.m.head(rows), l = w.l.head(rows), alpha = w.alpha.head(rows), shift = w.shift.head(rows);
    m.fill(kNegInf);
    l.setZero();

    const int64_t last = mask.row_ptr[to_size(qb) + 1], max_run = run_blocks(block);
    for (int64_t e = mask.row_ptr[to_size(qb)], run_end; e < last; e = run_end) {
        // A run: kept blocks e .. run_end - 1 with consecutive key blocks, keys [key0, key0 + keys).
        for (run_end = e + 1; run_end < last && run_end - e < max_run &&
                              mask.col_idx[to_size(run_end)] == mask.col_idx[to_size(run_end) - 1] + 1;) {
            ++run_end;
        }
        const int64_t kb0 = mask.col_idx[to_size(e)], key0 = kb0 * block;
        const int64_t keys = std::min(x.n, (mask.col_idx[to_size(run_end) - 1] + 1) * block) - key0;
        const ConstBlock v(x.v + key0 * d, keys, d);
        Block st = scratch_block(w.s, keys, rows);
        // The partial blocks of the run apply their bitmask: fill(value) writes it to their masked pairs.
        auto fill_masked = [&](float value) {
            for (int64_t r = e; r < run_end; ++r) {
                const int32_t partial = mask.partial_idx[to_size(r)];
                if (partial < 0) continue;
                const int64_t col0 = (mask.col_idx[to_size(r)] - kb0) * block;
                block_fill_masked(st, true, rows, col0, std::min(block, keys - col0), mask.partial_bits(partial), block,
                                  value);
            }
        };

        scores_product(st.data(), rows, x.k + key0 * d, keys, d, w.t.data(), lanes_round_up(rows), rows);   // S^T = K Q^T
        fill_masked(kNegInf);

        // online softmax per query (a column of S^T): m = running max, l = running sum of
        // exp(S - m), acc = running P V.
        shift = st.colwise().maxCoeff().transpose();   // the run's max per query, then the shift
        for (int64_t i = 0; i < rows; ++i) {
            const float m_new = std::max(m[i], shift[i]);
            if (m_new == kNegInf) {   // nothing allowed in this row yet: P = 0 (all masked), state unchanged
                alpha[i] = 1;
                shift[i] = 0;
                continue;
            }
            alpha[i] = std::exp(m[i] - m_new);   // std::exp(-inf) = 0 on the first key
            m[i] = shift[i] = m_new;
        }
        for (int64_t j = 0; j < keys; ++j) exp_shifted_each(&st(j, 0), rows, shift.data());   // P = exp(S - m)
        fill_masked(0.0f);   // exp(kExpFloor) is not 0: masked pairs get an exact 0
        l = alpha.cwiseProduct(l) + st.colwise().sum().transpose();
        acc = alpha.asDiagonal() * acc;
        acc.noalias() += st.transpose() * v;                                                // O += P V
    }

    for (int64_t i = 0; i < rows; ++i) {
        float* out = o + (qb * block + i) * d;
        if (m[i] == kNegInf) {   // no allowed key: zeros, and the log of an empty sum
            std::fill(out, out + d, 0.0f);
            lse[qb * block + i] = kNegInf;
            continue;
        }
        Eigen::Map<Eigen::RowVectorXf>(out, d) = acc.row(i) / l[i];
        lse[qb * block + i] = m[i] + std::log(l[i]);
    }
}

// [SECTION] backward

// The kept blocks of a mask by key block: for key block kb, the query blocks that keep it
// (ascending) and their partial_idx. The mask transposed, built once per call.
struct MaskColumns {
    std::vector<int64_t> col_ptr;     // [k_blocks + 1]
    std::vector<int32_t> row_idx;     // [kept_blocks]
    std::vector<int32_t> partial_idx; // [kept_blocks]
};

MaskColumns mask_columns(const BlockMask& mask) {
    MaskColumns c;
    c.col_ptr.assign(to_size(mask.k_blocks() + 1), 0);
    for (int32_t kb : mask.col_idx) ++c.col_ptr[to_size(kb) + 1];
    for (size_t kb = 0; kb + 1 < c.col_ptr.size(); ++kb) c.col_ptr[kb + 1] += c.col_ptr[kb];
    c.row_idx.resize(mask.col_idx.size());
    c.partial_idx.resize(mask.col_idx.size());
    std::vector<int64_t> fill(c.col_ptr.begin(), c.col_ptr.end() - 1);
    for (int64_t qb = 0; qb < mask.q_blocks(); ++qb) {   // rows in order: each column comes out sorted
        for (int64_t e = mask.row_ptr[to_size(qb)]; e < mask.row_ptr[to_size(qb) + 1]; ++e) {
            const size_t at = to_size(fill[to_size(mask.col_idx[to_size(e)])]++);
            c.row_idx[at] = static_cast<int32_t>(qb);
            c.partial_idx[at] = mask.partial_idx[to_size(e)];
        }
    }
    return c;
}

// What both backward passes need of one head, beyond q, k, v: rows of dO, lse and D.
struct HeadGrad {
    const float *d_o, *lse, *delta;   // [n, d], [n], [n]
};

// P and dS of block (qb, kb) for the dK, dV pass, into w.p and w.s ([rows, cols]); w.q holds
// scale * Q of query block qb, w.t the key block's K^T (block_transpose_pad).
//   S = (scale Q) K^T, P = exp(S - lse) (0 for masked pairs and empty rows),
//   dP = dO V^T, dS = P * (dP - D).
void block_grads(const Head& x, const HeadGrad& g, const BlockMask& mask, int64_t qb, int64_t kb, int32_t partial,
                 Scratch& w) {
    const int64_t block = mask.block, rows = std::min(block, x.n - qb * block), d = x.d;
    const ConstBlock v = head_rows(x.v, x.n, d, block, kb), d_o = head_rows(g.d_o, x.n, d, block, qb);
    const int64_t cols = v.rows();
    Block p = scratch_block(w.p, rows, cols), ds = scratch_block(w.s, rows, cols);
    const float* lse = g.lse + qb * block;
    const float* delta = g.delta + qb * block;

    scores_product(p.data(), cols, w.q.data(), rows, d, w.t.data(), lanes_round_up(cols), cols);   // S = Q K^T
    for (int64_t i = 0; i < rows; ++i) {
        if (lse[i] == kNegInf) p.row(i).setZero();                                    // empty row
        else exp_shifted(&p(i, 0), cols, lse[i]);                                    // P = exp(S - lse)
    }
    if (partial >= 0) block_fill_masked(p, false, rows, 0, cols, mask.partial_bits(partial), block, 0.0f);
    ds.noalias() = d_o * v.transpose();                                               // dP = dO V^T
    for (int64_t i = 0; i < rows; ++i) {
        ds.row(i).array() = p.row(i).array() * (ds.row(i).array() - delta[i]);        // dS = P (dP - D)
    }
}

// dK and dV of key block kb (rows of the head's [n, d] arrays dk and dv), summed over the query
// blocks that keep it, in ascending order.
void backward_key_block(const Head& x, const HeadGrad& g, const BlockMask& mask, const MaskColumns& columns,
                        int64_t kb, float scale, Scratch& w, float* dk, float* dv) {
    const int64_t block = mask.block, cols = std::min(block, x.n - kb * block), d = x.d;
    block_transpose_pad(w.t.data(), lanes_round_up(cols), x.k + kb * block * d, cols, d, 1.0f);   // K^T, once
    Block dk_acc = scratch_block(w.acc_a, cols, d), dv_acc = scratch_block(w.acc_b, cols, d);
    dk_acc.setZero();
    dv_acc.setZero();
    for (int64_t t = columns.col_ptr[to_size(kb)]; t < columns.col_ptr[to_size(kb) + 1]; ++t) {
        const int64_t qb = columns.row_idx[to_size(t)];
        const int64_t rows = std::min(block, x.n - qb * block);
        Block q = scratch_block(w.q, rows, d);
        q.noalias() = scale * head_rows(x.q, x.n, d, block, qb);
        block_grads(x, g, mask, qb, kb, columns.partial_idx[to_size(t)], w);
        const ConstBlock p = scratch_view(w.p, rows, cols), ds = scratch_view(w.s, rows, cols);
        dv_acc.noalias() += p.transpose() * head_rows(g.d_o, x.n, d, block, qb);      // dV += P^T dO
        dk_acc.noalias() += ds.transpose() * q;                                       // dK += dS^T (scale Q)
    }
    Block(dk + kb * block * d, cols, d) = dk_acc;
    Block(dv + kb * block * d, cols, d) = dv_acc;
}

// dQ of query block qb (rows of the head's [n, d] array dq), summed over its kept key blocks;
// and each row's sum of P into p_sum (the head's [n]): 1 when lse is the forward's, which
// attention_backward checks (rows x B additions per block beside the three B x B x d products).
// Works on P^T and dS^T ([cols, rows]), as the forward on S^T:
//   S^T = K (scale Q)^T, P^T = exp(S^T - lse), dP^T = V dO^T, dS^T = P^T * (dP^T - D), dQ += dS K.
void backward_query_block(const Head& x, const HeadGrad& g, const BlockMask& mask, int64_t qb, float scale,
                          Scratch& w, float* dq, double* p_sum) {
    const int64_t block = mask.block, rows = std::min(block, x.n - qb * block), d = x.d;
    queries_transpose(x, block, qb, scale, w);
    const ConstBlock d_o = head_rows(g.d_o, x.n, d, block, qb);
    const float* lse = g.lse + qb * block;
    const Eigen::Map<const Eigen::RowVectorXf> delta(g.delta + qb * block, rows);
    auto shift = w.shift.head(rows);
    for (int64_t i = 0; i < rows; ++i) shift[i] = lse[i] == kNegInf ? 0.0f : lse[i];
    Block dq_acc = scratch_block(w.acc_a, rows, d);
    dq_acc.setZero();
    auto sums = w.p_sum.head(rows);
    sums.setZero();
    for (int64_t e = mask.row_ptr[to_size(qb)]; e < mask.row_ptr[to_size(qb) + 1]; ++e) {
        const int64_t kb = mask.col_idx[to_size(e)], cols = std::min(block, x.n - kb * block);
        const ConstBlock k = head_rows(x.k, x.n, d, block, kb), v = head_rows(x.v, x.n, d, block, kb);
        Block pt = scratch_block(w.p, cols, rows), dst = scratch_block(w.s, cols, rows);
        scores_product(pt.data(), rows, k.data(), cols, d, w.t.data(), lanes_round_up(rows), rows);   // S^T = K Q^T
        for (int64_t j = 0; j < cols; ++j) exp_shifted_each(&pt(j, 0), rows, shift.data());        // P^T = exp(S^T - lse)
        for (int64_t i = 0; i < rows; ++i) {
            if (lse[i] == kNegInf) pt.col(i).setZero();                                           // empty row
        }
        const int32_t partial = mask.partial_idx[to_size(e)];
        if (partial >= 0) block_fill_masked(pt, true, rows, 0, cols, mask.partial_bits(partial), block, 0.0f);
        sums += pt.colwise().sum().transpose().cast<double>();
        dst.noalias() = v * d_o.transpose();                                                        // dP^T = V dO^T
        dst.array() = pt.array() * (dst.array().rowwise() - delta.array());                          // dS^T = P^T (dP^T - D)
        dq_acc.noalias() += dst.transpose() * k;                                                    // dQ += dS K
    }
    Block(dq + qb * block * d, rows, d) = scale * dq_acc;
    Eigen::Map<Eigen::VectorXd>(p_sum + qb * block, rows) = sums;
}

// Whether query q may attend to some key: its block row keeps a full block, or a partial one
// with a set bit in q's row of the bitmask. O(kept blocks of the row * B / 64).
bool row_has_key(const BlockMask& mask, int64_t q) {
    const int64_t qb = q / mask.block, t0 = q % mask.block * mask.block;   // q's first bit in a bitmask
    for (int64_t e = mask.row_ptr[to_size(qb)]; e < mask.row_ptr[to_size(qb) + 1]; ++e) {
        const int32_t partial = mask.partial_idx[to_size(e)];
        if (partial < 0) return true;
        const uint64_t* bits = mask.partial_bits(partial);
        // For B >= 64 a row is whole words; for B < 64 it lies inside one word.
        for (int64_t t = t0; t < t0 + mask.block; t += 64) {
            const int64_t width = std::min<int64_t>(64, mask.block);
            const uint64_t valid = width == 64 ? ~uint64_t{0} : (uint64_t{1} << width) - 1;
            if (((bits[t / 64] >> (t % 64)) & valid) != 0) return true;
        }
    }
    return false;
}

// [SECTION] entry points

// "103.2": enough digits to tell two lse values apart.
std::string number_text(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.7g", v);
    return buf;
}

// Throws when an output (O, or a gradient) holds an overflow: every input was finite and every
// score in range, so a non-finite output means one of its sums left float32. Each output is
// linear in V (O) or in dO (the gradients), so scaling that input down is the fix.
void output_check_finite(const std::string& what, const Tensor& t, const char* name, const char* linear_in) {
    for (size_t e = 0; e < t.data.size(); ++e) {
        if (std::isfinite(t.data[e])) continue;
        throw Error(what + ": " + name + " at " + tensor_index_text(t.shape, e) +
                    " overflows float32 (its sums leave float32's range; " + name + " is linear in " + linear_in +
                    ": scale " + linear_in + " down, and " + name + " back up by the same factor)");
    }
}

void check_same_shape(const std::string& what, const char* name, const TensorShape& got, const TensorShape& want,
                      const char* why) {
    if (!(got == want)) {
        throw Error(what + ": " + name + " is " + tensor_shape_text(got) + " but should be " + tensor_shape_text(want) +
                    " (" + why + ")");
    }
}

// Throws unless P = exp(S - lse), as the backward recomputes it, sums to 1 in every row within
// float32's error. A row's sum (p_sum, from the dQ pass) is exp(lse_true - lse) up to the
// rounding of lse itself and of S. The backward recomputes the forward's S bit for bit (see
// [SECTION] scores), but an lse from elsewhere (the reference, another engine) comes from S
// rounded otherwise, by at most 2 (d + 1) 2^-24 |scale| |q_i| max_j |k_j| (the row's
// Cauchy-Schwarz bound); so |log p_sum| may be 1e-3 plus those, and never more than 0.1 (P off
// by 10%: the gradients would be wrong). A row
// whose lse is -inf must keep no key. When a row fails, the exact lse (the reference) tells
// which message fits: an lse that is not the forward's, or scores too large for float32.
void lse_check_rows(const std::string& what, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lse,
                    const MaskSet& masks, int64_t layer, float scale, const TensorD& q_norms, const TensorD& k_norms,
                    const std::vector<double>& p_sum) {
    const TensorShape s = q.shape;
    const double unit = std::ldexp(1.0, -24);
    for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t h = 0; h < s.heads; ++h) {
            const BlockMask& mask = masks.at(layer, h);
            const double* kn = k_norms.row(b, h, 0);
            const double k_max = *std::max_element(kn, kn + s.n);
            for (int64_t i = 0; i < s.n; ++i) {
                const double given = lse.at(b, h, i, 0), sum = p_sum[to_size((b * s.heads + h) * s.n + i)];
                const double bound = std::abs(double{scale}) * q_norms.at(b, h, i, 0) * k_max;
                const double tolerance = 1e-3 + 2.0 * static_cast<double>(s.d + 1) * unit * bound + 4 * unit * std::abs(given);
                // log(0) = -inf: a finite lse for a row that keeps no key
                const bool bad = given == kNegInf ? row_has_key(mask, i) : !(std::abs(std::log(sum)) <= std::min(tolerance, 0.1));
                if (!bad) continue;
                ReferenceOptions one_row;
                one_row.scale = scale;
                one_row.row_begin = i;
                one_row.row_end = i + 1;
                one_row.threads = 1;
                const double exact = reference_forward(q, k, v, masks, layer, one_row).lse.at(b, h, 0, 0);
                const std::string row = "row [" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(i) + "]";
                if (std::isfinite(given) && std::abs(given - exact) <= tolerance) {
                    throw Error(what + ": at " + row + " the scores, up to " + number_text(bound) +
                                ", are too large for float32: P = exp(S - lse) recomputed in float32 sums to " +
                                number_text(sum) + " instead of 1 (scale Q or K down, or lower `scale`)");
                }
                throw Error(what + ": lse does not match Q, K, the scale and the mask at " + row + ": given " +
                            number_text(given) + ", recomputed " + number_text(exact) +
                            " (pass the lse the forward returned for these inputs)");
            }
        }
    }
}

} // namespace

void attention_check_p_sums(const std::string& what, const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& lse, const MaskSet& masks, int64_t layer, float scale,
                            const std::vector<double>& p_sum) {
    lse_check_rows(what, q, k, v, lse, masks, layer, scale, tensor_row_norms(q), tensor_row_norms(k), p_sum);
}

AttentionOutput attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks,
                                  int64_t layer, const AttentionOptions& options) {
    const std::string what = "attention_forward";
    attention_check_shapes(what, q.shape, k.shape, v.shape, masks, layer);
    const TensorShape s = q.shape;
    const int threads = attention_threads(what, options.threads);
    const float scale = static_cast<float>(attention_scale(what, options.scale, s.d));
    tensor_check_finite(q, "Q");
    tensor_check_finite(k, "K");
    tensor_check_finite(v, "V");
    attention_check_score_range(what, tensor_row_norms(q, threads), tensor_row_norms(k, threads), scale, ScoreEngine::cpu);
    const int64_t q_blocks = (s.n + masks.block - 1) / masks.block;

    AttentionOutput out;
    out.o = tensor_zeros<float>(s);
    out.lse = tensor_zeros<float>({s.batch, s.heads, s.n, 1});
    // One item per (b, h, query block).
    items_run(s.batch * s.heads * q_blocks, threads, masks.block, s.d, [&](int64_t item, Scratch& w) {
        const int64_t qb = item % q_blocks, b = item / q_blocks / s.heads, h = item / q_blocks % s.heads;
        forward_query_block(head_of(q, k, v, b, h), masks.at(layer, h), qb, scale, w, out.o.row(b, h, 0),
                            out.lse.row(b, h, 0));
    });
    output_check_finite(what, out.o, "O", "V");
    return out;
}

AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                  const Tensor& lse, const Tensor& d_o, const MaskSet& masks, int64_t layer,
                                  const AttentionOptions& options) {
    const std::string what = "attention_backward";
    attention_check_shapes(what, q.shape, k.shape, v.shape, masks, layer);
    const TensorShape s = q.shape;
    check_same_shape(what, "O", o.shape, s, "the forward's output has Q's shape");
    check_same_shape(what, "dO", d_o.shape, s, "the gradient of O has O's shape");
    check_same_shape(what, "lse", lse.shape, {s.batch, s.heads, s.n, 1}, "one value per query, from the forward");
    const int threads = attention_threads(what, options.threads);
    const float scale = static_cast<float>(attention_scale(what, options.scale, s.d));
    tensor_check_finite(q, "Q");
    tensor_check_finite(k, "K");
    tensor_check_finite(v, "V");
    tensor_check_finite(o, "O");
    tensor_check_finite(d_o, "dO");
    for (size_t e = 0; e < lse.data.size(); ++e) {
        if (std::isnan(lse.data[e]) || lse.data[e] == -kNegInf) {
            throw Error(what + ": lse[" + std::to_string(e) + "] is " + std::to_string(lse.data[e]) +
                        " (lse is finite, or -inf for an empty row: pass the forward's lse)");
        }
    }
    const TensorD q_norms = tensor_row_norms(q, threads), k_norms = tensor_row_norms(k, threads);
    attention_check_score_range(what, q_norms, k_norms, scale, ScoreEngine::cpu);
    const int64_t blocks = (s.n + masks.block - 1) / masks.block;

    // D = rowsum(dO * O), one per query (accumulated in double: n * d work, negligible).
    std::vector<float> delta(to_size(s.batch * s.heads * s.n));
    parallel_for(s.batch * s.heads * s.n, threads, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            double sum = 0;
            for (int64_t j = 0; j < s.d; ++j) sum += double{o.data[to_size(r * s.d + j)]} * d_o.data[to_size(r * s.d + j)];
            delta[to_size(r)] = static_cast<float>(sum);
        }
    });
    // The transposed mask of each distinct head mask of the layer.
    std::unordered_map<const BlockMask*, MaskColumns> columns;
    for (int64_t h = 0; h < s.heads; ++h) {
        const BlockMask& m = masks.at(layer, h);
        if (columns.count(&m) == 0) columns.emplace(&m, mask_columns(m));
    }

    AttentionGrads g;
    g.dq = tensor_zeros<float>(s);
    g.dk = tensor_zeros<float>(s);
    g.dv = tensor_zeros<float>(s);
    auto head_grad = [&](int64_t b, int64_t h) {
        const int64_t row0 = (b * s.heads + h) * s.n;
        return HeadGrad{d_o.row(b, h, 0), lse.data.data() + row0, delta.data() + row0};
    };
    // dQ first: one item per (b, h, query block), with each row's sum of P, which checks lse
    // before the dK, dV pass is spent on a wrong one.
    std::vector<double> p_sum(to_size(s.batch * s.heads * s.n));
    items_run(s.batch * s.heads * blocks, threads, masks.block, s.d, [&](int64_t item, Scratch& w) {
        const int64_t qb = item % blocks, b = item / blocks / s.heads, h = item / blocks % s.heads;
        backward_query_block(head_of(q, k, v, b, h), head_grad(b, h), masks.at(layer, h), qb, scale, w,
                             g.dq.row(b, h, 0), p_sum.data() + (b * s.heads + h) * s.n);
    });
    lse_check_rows(what, q, k, v, lse, masks, layer, scale, q_norms, k_norms, p_sum);
    // dK, dV: one item per (b, h, key block).
    items_run(s.batch * s.heads * blocks, threads, masks.block, s.d, [&](int64_t item, Scratch& w) {
        const int64_t kb = item % blocks, b = item / blocks / s.heads, h = item / blocks % s.heads;
        const BlockMask& mask = masks.at(layer, h);
        backward_key_block(head_of(q, k, v, b, h), head_grad(b, h), mask, columns.at(&mask), kb, scale, w,
                           g.dk.row(b, h, 0), g.dv.row(b, h, 0));
    });
    output_check_finite(what, g.dq, "dQ", "dO");
    output_check_finite(what, g.dk, "dK", "dO");
    output_check_finite(what, g.dv, "dV", "dO");
    return g;
}

} // namespace sparsa
