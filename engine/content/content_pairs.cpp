// The pairs of content heads' passes (content_pairs.hpp): buckets hashed and sorted per head,
// tilings of the passes, which queries attend to themselves, and each pair's pass membership
// and count, exactly as issue 14's spec states A.
#include "engine/content/content_pairs.hpp"

#include "engine/error.hpp"
#include "engine/threads.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

namespace sparsa::content_detail {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Fills the by-key-tile lists from the by-query-tile lists.
void tiling_transpose(Tiling& t) {
    const int64_t tiles = t.tiles();
    t.col_ptr.assign(to_size(tiles + 1), 0);
    for (int32_t kt : t.col_idx) ++t.col_ptr[to_size(kt) + 1];
    for (int64_t i = 0; i < tiles; ++i) t.col_ptr[to_size(i + 1)] += t.col_ptr[to_size(i)];
    t.row_idx.resize(t.col_idx.size());
    t.col_partial.resize(t.col_idx.size());
    std::vector<int64_t> fill(t.col_ptr.begin(), t.col_ptr.end() - 1);
    for (int64_t qt = 0; qt < tiles; ++qt) {   // query tiles in order: each column comes out ascending
        for (int64_t e = t.row_ptr[to_size(qt)]; e < t.row_ptr[to_size(qt + 1)]; ++e) {
            const size_t at = to_size(fill[to_size(t.col_idx[to_size(e)])]++);
            t.row_idx[at] = static_cast<int32_t>(qt);
            t.col_partial[at] = t.row_partial[to_size(e)];
        }
    }
}

// Whether query q of a fixed mask keeps some key (k <= q when causal; k = q counts).
bool fixed_row_has_key(const BlockMask& m, int64_t q, bool causal) {
    const int64_t qb = q / m.block, i = q % m.block;
    for (int64_t e = m.row_ptr[to_size(qb)]; e < m.row_ptr[to_size(qb + 1)]; ++e) {
        const int64_t k0 = int64_t{m.col_idx[to_size(e)]} * m.block;
        if (causal && k0 > q) return false;
        const int64_t k1 = std::min({m.n, k0 + m.block, causal ? q + 1 : m.n});
        const int32_t partial = m.partial_idx[to_size(e)];
        if (partial < 0) return true;
        const uint64_t* bits = m.partial_bits(partial);
        for (int64_t j = 0; j < k1 - k0; ++j) {
            const int64_t t = i * m.block + j;
            if ((bits[t / 64] >> (t % 64)) & 1) return true;
        }
    }
    return false;
}

// Fills h.self and h.empty_rows from the sorted walk: a query has another key when the fixed
// mask gives it one, or some round's window (its chunk and the one before, in key order) holds a
// key other than itself (k <= q when causal): the smallest two keys of the window tell.
void head_self(HeadState& h) {
    const ContentWalk& w = h.walk;
    const int64_t n = w.n;
    std::vector<uint8_t> other(to_size(n), 0), met(to_size(n), 0);
    if (h.has_fixed) {
        for (int64_t q = 0; q < n; ++q) other[to_size(q)] = fixed_row_has_key(*h.fixed, q, h.causal);
    }
    for (int64_t r = 0; r < w.rounds; ++r) {
        const int32_t *qo = w.query_order(r), *ko = w.key_order(r);
        for (int64_t c0 = 0; c0 < n; c0 += w.chunk) {
            const int64_t k0 = std::max<int64_t>(0, c0 - w.chunk), k1 = std::min(n, c0 + w.chunk);
            int64_t min1 = n, min2 = n;   // the two smallest key tokens of the window
            for (int64_t s = k0; s < k1; ++s) {
                const int64_t k = ko[s];
                if (k < min1) min2 = min1, min1 = k;
                else if (k < min2) min2 = k;
            }
            for (int64_t s = c0; s < k1; ++s) {
                const int64_t q = qo[s], candidate = min1 != q ? min1 : min2;
                if (candidate < n && (!h.causal || candidate <= q)) other[to_size(q)] = 1;
                if (w.in_round(r, q, q)) met[to_size(q)] = 1;
            }
        }
    }
    h.self.assign(to_size(n), 0);
    h.empty_rows = 0;
    for (int64_t q = 0; q < n; ++q) {
        h.self[to_size(q)] = !other[to_size(q)] && met[to_size(q)];
        h.empty_rows += !other[to_size(q)] && !met[to_size(q)];
    }
}

} // namespace

// [SECTION] tilings

// The fixed mask's blocks.
Tiling tiling_fixed(const BlockMask& m) {
    Tiling t;
    for (int64_t b = 0; b <= m.q_blocks(); ++b) t.start.push_back(std::min(m.n, b * m.block));
    t.row_ptr = m.row_ptr;
    t.col_idx = m.col_idx;
    t.row_partial = m.partial_idx;
    t.max_tile = std::min<int64_t>(m.block, m.n);
    tiling_transpose(t);
    return t;
}

// A round in sorted order: chunk c (sorted indices [c chunk, (c + 1) chunk)) against chunks c - 1
// and c, each chunk cut into tiles of at most kMaxTile.
Tiling tiling_band(int64_t n, int64_t chunk) {
    Tiling t;
    std::vector<int64_t> chunk_first;   // [chunks + 1]: first tile of each chunk
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
        chunk_first.push_back(static_cast<int64_t>(t.start.size()));
        for (int64_t s = c0; s < std::min(n, c0 + chunk); s += kMaxTile) t.start.push_back(s);
    }
    chunk_first.push_back(static_cast<int64_t>(t.start.size()));
    t.start.push_back(n);
    t.row_ptr.push_back(0);
    for (size_t c = 0; c + 1 < chunk_first.size(); ++c) {
        const int64_t first = c > 0 ? chunk_first[c - 1] : chunk_first[c];
        for (int64_t qt = chunk_first[c]; qt < chunk_first[c + 1]; ++qt) {
            for (int64_t kt = first; kt < chunk_first[c + 1]; ++kt) {
                t.col_idx.push_back(static_cast<int32_t>(kt));
                t.row_partial.push_back(-1);
            }
            t.row_ptr.push_back(static_cast<int64_t>(t.col_idx.size()));
        }
    }
    t.max_tile = std::min(kMaxTile, std::min(chunk, n));
    tiling_transpose(t);
    return t;
}

// [SECTION] heads

const ContentSpec* content_spec_of(const MaskSet& masks, int64_t layer, int64_t h) {
    if (masks.content.empty()) return nullptr;
    return masks.content[to_size(layer * masks.heads + h)].get();
}

Setup content_setup(const std::string& what, const Tensor& q, const Tensor& k, const MaskSet& masks, int64_t layer,
                    const ContentOptions& options, int threads, ContentTimes& times, int64_t only_b, int64_t only_h) {
    const TensorShape s = q.shape;
    if (!masks.content.empty() && static_cast<int64_t>(masks.content.size()) != masks.layers * masks.heads) {
        throw Error(what + ": the mask set has " + std::to_string(masks.content.size()) + " content specs for " +
                    std::to_string(masks.layers * masks.heads) + " (layer, head) pairs (give none, or one per pair)");
    }
    Setup setup;
    for (int64_t h = 0; h < s.heads; ++h) {
        const ContentSpec* spec = content_spec_of(masks, layer, h);
        if (spec == nullptr) {
            setup.plain.push_back(h);
            continue;
        }
        if (spec->kind == ContentKind::favor) {
            throw Error(what + ": head " + std::to_string(h) + " of layer " + std::to_string(layer) +
                        " is favor (FAVOR+ runs in favor_attention_forward, engine/content/favor.hpp)");
        }
        setup.max_rounds = std::max(setup.max_rounds, spec->rounds);
    }
    for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t h = 0; h < s.heads; ++h) {
            const ContentSpec* spec = content_spec_of(masks, layer, h);
            if (spec == nullptr || (only_b >= 0 && (b != only_b || h != only_h))) continue;
            HeadState hs;
            hs.b = b;
            hs.h = h;
            hs.spec = spec;
            hs.fixed = &masks.at(layer, h);
            hs.has_fixed = hs.fixed->kept_blocks() > 0;
            hs.causal = spec->causal;
            setup.heads.push_back(std::move(hs));
        }
    }
    // Hashing, one item per head (its rounds in order); each fills only its own walk.
    auto t0 = std::chrono::steady_clock::now();
    parallel_for(static_cast<int64_t>(setup.heads.size()), threads, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            HeadState& hs = setup.heads[to_size(i)];
            const ContentSpec& spec = *hs.spec;
            const int64_t chunk = spec.chunk > 0 ? spec.chunk : masks.block;
            const std::string where = what + ": layer " + std::to_string(layer) + ", head " + std::to_string(hs.h);
            if (options.buckets != nullptr) {   // another engine's buckets (the GPU's): its walk, not a new hash
                const size_t item = to_size(hs.b * s.heads + hs.h);
                if (options.buckets->q.size() != to_size(s.batch * s.heads) || options.buckets->k.size() != to_size(s.batch * s.heads)) {
                    throw Error(what + ": given buckets for " + std::to_string(options.buckets->q.size()) + " (batch, head) pairs, the call has " +
                                std::to_string(s.batch * s.heads));
                }
                hs.walk = content_walk_given(spec, options.buckets->q[item], options.buckets->k[item], s.n, std::min(chunk, s.n), where);
                continue;
            }
            hs.walk = content_walk_hash(spec, content_array_find(options.arrays, spec, where), q.row(hs.b, hs.h, 0),
                                        k.row(hs.b, hs.h, 0), s.n, s.d, layer, hs.h, std::min(chunk, s.n), where);
        }
    });
    times.hashing += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    parallel_for(static_cast<int64_t>(setup.heads.size()), threads, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            HeadState& hs = setup.heads[to_size(i)];
            content_walk_sort(hs.walk);
            head_self(hs);
            if (hs.has_fixed) hs.fixed_tiles = tiling_fixed(*hs.fixed);
            hs.band = tiling_band(s.n, hs.walk.chunk);
        }
    });
    times.sorting += seconds_since(t0);
    return setup;
}

int64_t tile_bias(const PassView& p, int64_t qt, int64_t kt, int32_t partial, bool correction, float* bias,
                  BiasScratch& x) {
    const HeadState& h = *p.head;
    const ContentWalk& w = h.walk;
    const Tiling& t = *p.tiling;
    const int64_t q0 = t.start[to_size(qt)], rows = t.size(qt), k0 = t.start[to_size(kt)], cols = t.size(kt);
    const int64_t block = h.fixed->block, rounds = w.rounds, n = w.n;
    const uint64_t* bits = partial >= 0 ? h.fixed->partial_bits(partial) : nullptr;
    // -log(count) for counts 1 .. 7 (more only with 7 or more rounds: computed when met)
    float neg_log[8] = {};
    for (int c = 1; c < 8; ++c) neg_log[c] = correction ? -static_cast<float>(std::log(static_cast<double>(c))) : 0.0f;
    const bool counted = rounds > 1 || h.has_fixed;   // else every count is 1
    if (static_cast<int64_t>(x.key_token.size()) < cols) x.key_token.resize(to_size(cols));
    if (static_cast<int64_t>(x.key_chunk.size()) < rounds * cols) x.key_chunk.resize(to_size(rounds * cols));
    if (static_cast<int64_t>(x.query_chunk.size()) < rounds) x.query_chunk.resize(to_size(rounds));
    const std::vector<int32_t>& kc_all = w.shared_qk ? w.q_chunk : w.k_chunk;
    for (int64_t j = 0; j < cols; ++j) {
        const int64_t k = p.k_token ? p.k_token[k0 + j] : k0 + j;
        x.key_token[to_size(j)] = static_cast<int32_t>(k);
        for (int64_t r = 0; r < rounds && counted; ++r) x.key_chunk[to_size(r * cols + j)] = kc_all[to_size(r * n + k)];
    }
    int64_t first = 0;
    if (p.round >= 0 && !h.has_fixed) {
        // A round pass with no fixed mask (lsh or anchors alone): the same rule with the rounds
        // outside the columns, so the loops over columns vectorise (the general loop below took
        // twice the time of the products).
        if (static_cast<int64_t>(x.count.size()) < cols) x.count.resize(to_size(cols)), x.earlier.resize(to_size(cols));
        int32_t* count = x.count.data();
        int32_t* earlier = x.earlier.data();
        const int32_t* key_token = x.key_token.data();
        for (int64_t i = 0; i < rows; ++i) {
            const int32_t q = p.q_token[q0 + i];
            const bool self_ok = h.self[to_size(q)] != 0;
            std::fill(count, count + cols, 1);
            std::fill(earlier, earlier + cols, 0);
            for (int64_t r = 0; r < rounds && counted; ++r) {
                if (r == p.round) continue;
                const int32_t qc = w.q_chunk[to_size(r * n + q)];
                const int32_t* kc = x.key_chunk.data() + r * cols;
                for (int64_t j = 0; j < cols; ++j) {
                    const int32_t met = static_cast<uint32_t>(qc - kc[j]) <= 1;   // k's chunk is q's or the one before
                    count[j] += met;
                    if (r < p.round) earlier[j] |= met;
                }
            }
            float* out = bias + i * cols;
            for (int64_t j = 0; j < cols; ++j) {
                const int32_t k = key_token[j];
                const bool off = (k == q && !self_ok) || (h.causal && k > q);
                const int32_t c = count[j];
                out[j] = off ? kNegInf : c < 8 ? neg_log[c] : correction ? -static_cast<float>(std::log(static_cast<double>(c))) : 0.0f;
                first += !off && !earlier[j];
            }
        }
        return first;
    }
    for (int64_t i = 0; i < rows; ++i) {
        const int64_t qs = q0 + i, q = p.q_token ? p.q_token[qs] : qs;
        const bool self_ok = h.self[to_size(q)] != 0;
        for (int64_t r = 0; r < rounds && counted; ++r) x.query_chunk[to_size(r)] = w.q_chunk[to_size(r * n + q)];
        float* out = bias + i * cols;
        for (int64_t j = 0; j < cols; ++j) {
            const int64_t k = x.key_token[to_size(j)];
            bool member = !(h.causal && k > q);
            if (p.round < 0) {
                if (bits != nullptr) {
                    const int64_t bit = i * block + j;
                    member = member && ((bits[bit / 64] >> (bit % 64)) & 1);
                }
            } else {
                member = member && (k != q || self_ok);
            }
            if (!member) {
                out[j] = kNegInf;
                continue;
            }
            int count = 1;
            bool is_first = true;
            if (counted) {
                if (p.round >= 0 && h.has_fixed && h.fixed->allowed(q, k)) ++count, is_first = false;
                if (k != q || self_ok) {   // a round holds (q, q) only for a query that attends to itself
                    for (int64_t r = 0; r < rounds; ++r) {
                        // in round r: the key's chunk is the query's or the one before
                        const uint32_t gap = static_cast<uint32_t>(x.query_chunk[to_size(r)] - x.key_chunk[to_size(r * cols + j)]);
                        if (r == p.round || gap > 1) continue;
                        ++count;
                        if (r < p.round) is_first = false;
                    }
                }
            }
            out[j] = count < 8 ? neg_log[count] : correction ? -static_cast<float>(std::log(static_cast<double>(count))) : 0.0f;
            first += is_first;
        }
    }
    return first;
}

void allowed_row(const HeadState& h, int64_t q, uint8_t* row) {
    const ContentWalk& w = h.walk;
    const int64_t n = w.n;
    block_mask_dense_row(*h.fixed, q, row);
    if (h.causal) std::fill(row + q + 1, row + n, uint8_t{0});
    const bool self_ok = h.self[to_size(q)] != 0;
    for (int64_t r = 0; r < w.rounds; ++r) {
        const int64_t c = w.q_chunk[to_size(r * n + q)];
        const int32_t* ko = w.key_order(r);
        for (int64_t s = std::max<int64_t>(0, (c - 1) * w.chunk); s < std::min(n, (c + 1) * w.chunk); ++s) {
            const int64_t k = ko[s];
            if ((k != q || self_ok) && !(h.causal && k > q)) row[k] = 1;
        }
    }
}

// The report of one head; pairs from the passes' first-pair counts.
ContentReport head_report(const HeadState& h, int64_t pairs) {
    const ContentWalk& w = h.walk;
    ContentReport r;
    r.batch = h.b;
    r.head = h.h;
    r.kind = h.spec->kind;
    r.buckets = w.buckets;
    r.rounds = w.rounds;
    r.chunk = w.chunk;
    std::vector<int64_t> sizes(to_size(w.buckets));
    r.bucket_min = w.n;
    for (int64_t round = 0; round < w.rounds; ++round) {
        for (int side = 0; side < (w.shared_qk ? 1 : 2); ++side) {
            std::fill(sizes.begin(), sizes.end(), 0);
            const int32_t* bucket = side == 0 ? w.query_bucket(round) : w.key_bucket(round);
            for (int64_t t = 0; t < w.n; ++t) ++sizes[to_size(bucket[t])];
            for (int64_t c : sizes) r.bucket_min = std::min(r.bucket_min, c), r.bucket_max = std::max(r.bucket_max, c);
        }
    }
    r.imbalance = static_cast<double>(r.bucket_max) * static_cast<double>(w.buckets) / static_cast<double>(w.n);
    r.pairs = pairs;
    r.density = static_cast<double>(pairs) / (static_cast<double>(w.n) * static_cast<double>(w.n));
    r.empty_rows = h.empty_rows;
    r.recall_mean = r.recall_min = std::numeric_limits<double>::quiet_NaN();
    return r;
}

} // namespace sparsa::content_detail
