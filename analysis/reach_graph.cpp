// Masks as graphs for the receptive-field analysis: bitsets and one hop over a mask, the union
// of a layer's heads, the transpose (64 x 64 bit tiles), the block graph, the causal check.
#include "analysis/reach_graph.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <bit>
#include <utility>

namespace sparsa {

namespace {

size_t to_size(int64_t i) { return static_cast<size_t>(i); }
// Tokens (or nodes) in block b of size `block` over n: `block`, or fewer for the last one.
int64_t extent(int64_t n, int64_t block, int64_t b) { return std::min(block, n - b * block); }

// Transposes a 64 x 64 bit matrix in place: bit j of a[i] <-> bit i of a[j]. Swaps the
// off-diagonal halves, then quarters, ... (six rounds of 32 word pairs).
void transpose64(uint64_t* a) {
    uint64_t m = 0x00000000FFFFFFFFULL;
    for (int j = 32; j != 0; j >>= 1, m ^= (m << j)) {
        for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
            const uint64_t t = ((a[k] >> j) ^ a[k | j]) & m;
            a[k] ^= t << j;
            a[k | j] ^= t;
        }
    }
}

// out = in transposed, both B x B bitmasks ([B * B / 64] words): bit j*B+i of out = bit i*B+j of in.
void bitmask_transpose(const uint64_t* in, uint64_t* out, int64_t block) {
    if (block < 64) {
        std::fill(out, out + block * block / 64, uint64_t{0});
        for (int64_t i = 0; i < block; ++i) {
            for (int64_t j = 0; j < block; ++j) {
                if (bits_test(in, i * block + j)) bits_set(out, j * block + i);
            }
        }
        return;
    }
    const int64_t w = block / 64;  // words per row; tile (ti, tj) is rows 64 ti.., word tj
    uint64_t tile[64];
    for (int64_t ti = 0; ti < w; ++ti) {
        for (int64_t tj = 0; tj < w; ++tj) {
            for (int64_t r = 0; r < 64; ++r) tile[r] = in[(ti * 64 + r) * w + tj];
            transpose64(tile);
            for (int64_t c = 0; c < 64; ++c) out[(tj * 64 + c) * w + ti] = tile[c];
        }
    }
}

// The bits of word `w` that fall in [begin, end).
uint64_t range_word_mask(int64_t w, int64_t begin, int64_t end) {
    const int64_t lo = std::max(begin, w * 64) - w * 64, hi = std::min(end, w * 64 + 64) - w * 64;
    const uint64_t upper = hi == 64 ? ~uint64_t{0} : (uint64_t{1} << hi) - 1;
    return upper & (~uint64_t{0} << lo);
}

} // namespace

// [SECTION] bitsets

void bits_set_range(uint64_t* w, int64_t begin, int64_t end) {
    if (begin >= end) return;
    for (int64_t i = begin / 64; i <= (end - 1) / 64; ++i) w[i] |= range_word_mask(i, begin, end);
}

bool bits_any_range(const uint64_t* w, int64_t begin, int64_t end) {
    if (begin >= end) return false;
    for (int64_t i = begin / 64; i <= (end - 1) / 64; ++i) {
        if ((w[i] & range_word_mask(i, begin, end)) != 0) return true;
    }
    return false;
}

int64_t bits_count(const std::vector<uint64_t>& w) {
    int64_t c = 0;
    for (uint64_t x : w) c += std::popcount(x);
    return c;
}

uint64_t bitmask_row_bits(const uint64_t* bits, int64_t block, int64_t i) {
    return (bits[i * block / 64] >> ((i * block) % 64)) & ((uint64_t{1} << block) - 1);
}

void bits_or_row(uint64_t* into, int64_t words, int64_t c0, const uint64_t* bits, int64_t block, int64_t i) {
    if (block >= 64) {
        const uint64_t* row = bits + i * (block / 64);
        const int64_t count = std::min(block / 64, words - c0 / 64);  // bits past n are zero
        for (int64_t t = 0; t < count; ++t) into[c0 / 64 + t] |= row[t];
    } else {
        into[c0 / 64] |= bitmask_row_bits(bits, block, i) << (c0 % 64);
    }
}

void bits_expand(const BlockMask& x, const uint64_t* from, uint64_t* into, int64_t words) {
    const int64_t n = x.n, block = x.block;
    for (int64_t rb = 0; rb < x.q_blocks(); ++rb) {
        const int64_t r0 = rb * block, r1 = std::min(n, r0 + block);
        if (!bits_any_range(from, r0, r1)) continue;
        for (int64_t e = x.row_ptr[to_size(rb)]; e < x.row_ptr[to_size(rb) + 1]; ++e) {
            const int64_t c0 = int64_t{x.col_idx[to_size(e)]} * block;
            const int32_t p = x.partial_idx[to_size(e)];
            if (p < 0) {
                bits_set_range(into, c0, std::min(n, c0 + block));  // full block: its whole key range
                continue;
            }
            for (int64_t i = 0; i < r1 - r0; ++i) {
                if (bits_test(from, r0 + i)) bits_or_row(into, words, c0, x.partial_bits(p), block, i);
            }
        }
    }
}

// [SECTION] masks as graphs

bool block_mask_causal(const BlockMask& m) {
    for (int64_t qb = 0; qb < m.q_blocks(); ++qb) {
        for (int64_t e = m.row_ptr[to_size(qb)]; e < m.row_ptr[to_size(qb) + 1]; ++e) {
            const int64_t kb = m.col_idx[to_size(e)];
            if (kb < qb) continue;
            if (kb > qb) return false;
            const int32_t p = m.partial_idx[to_size(e)];
            const int64_t size = extent(m.n, m.block, qb);
            if (p < 0) {
                if (size > 1) return false;
                continue;
            }
            for (int64_t i = 0; i < size; ++i) {
                for (int64_t j = i + 1; j < size; ++j) {
                    if (bits_test(m.partial_bits(p), i * m.block + j)) return false;
                }
            }
        }
    }
    return true;
}


BlockMask block_mask_union(const std::vector<const BlockMask*>& masks) {
    if (masks.empty()) throw Error("block_mask_union: no masks given (give at least one)");
    for (const BlockMask* m : masks) {
        if (m->n != masks[0]->n || m->block != masks[0]->block) {
            throw Error("block_mask_union: masks of n = " + std::to_string(m->n) + ", block " + std::to_string(m->block) +
                        " and n = " + std::to_string(masks[0]->n) + ", block " + std::to_string(masks[0]->block) +
                        " (all must match)");
        }
    }
    if (masks.size() == 1) return *masks[0];
    BlockMask out;
    out.n = masks[0]->n;
    out.block = masks[0]->block;
    out.row_ptr.assign(1, 0);
    const int64_t words = out.words_per_block();
    std::vector<uint64_t> acc(to_size(words));
    struct Entry {
        int32_t col;
        int32_t mask;
        int64_t index;
    };
    std::vector<Entry> entries;
    for (int64_t qb = 0; qb < out.q_blocks(); ++qb) {
        entries.clear();
        for (size_t m = 0; m < masks.size(); ++m) {
            for (int64_t e = masks[m]->row_ptr[to_size(qb)]; e < masks[m]->row_ptr[to_size(qb) + 1]; ++e) {
                entries.push_back({masks[m]->col_idx[to_size(e)], static_cast<int32_t>(m), e});
            }
        }
        std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.col < b.col; });
        for (size_t s = 0; s < entries.size();) {
            size_t t = s;
            bool full = false, any_partial = false;
            for (; t < entries.size() && entries[t].col == entries[s].col; ++t) {
                full = full || masks[to_size(entries[t].mask)]->partial_idx[to_size(entries[t].index)] < 0;
            }
            if (!full) {  // OR the bitmasks; a union that sets every valid pair is full
                for (size_t i = s; i < t; ++i) {
                    const uint64_t* bits = masks[to_size(entries[i].mask)]->partial_bits(masks[to_size(entries[i].mask)]->partial_idx[to_size(entries[i].index)]);
                    for (int64_t w = 0; w < words; ++w) acc[to_size(w)] = (any_partial ? acc[to_size(w)] : 0) | bits[w];
                    any_partial = true;
                }
                int64_t set = 0;
                for (uint64_t x : acc) set += std::popcount(x);
                full = set == block_valid_pairs(out, qb, entries[s].col);
            }
            out.col_idx.push_back(entries[s].col);
            out.partial_idx.push_back(full ? -1 : static_cast<int32_t>(out.partial_blocks()));
            if (!full) out.bits.insert(out.bits.end(), acc.begin(), acc.end());
            s = t;
        }
        out.row_ptr.push_back(out.kept_blocks());
    }
    return out;
}

BlockMask block_mask_transpose(const BlockMask& mask) {
    BlockMask t;
    t.n = mask.n;
    t.block = mask.block;
    const int64_t blocks = mask.q_blocks(), kept = mask.kept_blocks(), words = mask.words_per_block();
    t.row_ptr.assign(to_size(blocks + 1), 0);
    for (int32_t kb : mask.col_idx) ++t.row_ptr[to_size(kb) + 1];
    for (int64_t b = 0; b < blocks; ++b) t.row_ptr[to_size(b) + 1] += t.row_ptr[to_size(b)];
    t.col_idx.resize(to_size(kept));
    std::vector<int32_t> source(to_size(kept));  // the bitmask each entry of t transposes, or -1
    std::vector<int64_t> next(t.row_ptr.begin(), t.row_ptr.end() - 1);
    for (int64_t qb = 0; qb < blocks; ++qb) {  // ascending qb: each row of t comes out sorted
        for (int64_t e = mask.row_ptr[to_size(qb)]; e < mask.row_ptr[to_size(qb) + 1]; ++e) {
            const int64_t at = next[to_size(mask.col_idx[to_size(e)])]++;
            t.col_idx[to_size(at)] = static_cast<int32_t>(qb);
            source[to_size(at)] = mask.partial_idx[to_size(e)];
        }
    }
    // Canonical form numbers bitmasks in the order their blocks appear in t.
    t.partial_idx.resize(to_size(kept));
    t.bits.resize(mask.bits.size());
    int32_t partials = 0;
    for (int64_t e = 0; e < kept; ++e) {
        if (source[to_size(e)] < 0) {
            t.partial_idx[to_size(e)] = -1;
            continue;
        }
        bitmask_transpose(mask.partial_bits(source[to_size(e)]), t.bits.data() + partials * words, mask.block);
        t.partial_idx[to_size(e)] = partials++;
    }
    return t;
}

std::vector<std::vector<const BlockMask*>> mask_set_layer_heads(const MaskSet& set) {
    if (set.layers < 1 || set.heads < 1 || static_cast<int64_t>(set.masks.size()) != set.layers * set.heads) {
        throw Error("receptive field: the mask set has " + std::to_string(set.masks.size()) + " masks for " +
                    std::to_string(set.layers) + " layers x " + std::to_string(set.heads) +
                    " heads (expected layers * heads, at least one)");
    }
    std::vector<std::vector<const BlockMask*>> out(to_size(set.layers));
    for (int64_t l = 0; l < set.layers; ++l) {
        for (int64_t h = 0; h < set.heads; ++h) {
            const BlockMask* m = &set.at(l, h);
            if (std::find(out[to_size(l)].begin(), out[to_size(l)].end(), m) == out[to_size(l)].end()) out[to_size(l)].push_back(m);
        }
    }
    return out;
}

ReachGraph reach_graph_make(const MaskSet& set, bool with_transpose) {
    const auto layer_heads = mask_set_layer_heads(set);
    ReachGraph g;
    g.n = set.n;
    g.block = set.block;
    std::vector<std::shared_ptr<const BlockMask>> distinct, distinct_t;
    for (int64_t l = 0; l < set.layers; ++l) {
        const auto& heads = layer_heads[to_size(l)];
        std::shared_ptr<const BlockMask> layer;
        if (heads.size() == 1) {  // one distinct mask: share it rather than copy it
            for (int64_t h = 0; h < set.heads && !layer; ++h) {
                if (set.masks[to_size(l * set.heads + h)].get() == heads[0]) layer = set.masks[to_size(l * set.heads + h)];
            }
        } else {
            layer = std::make_shared<const BlockMask>(block_mask_union(heads));
        }
        size_t i = 0;
        while (i < distinct.size() && distinct[i] != layer && !(*distinct[i] == *layer)) ++i;
        if (i == distinct.size()) {
            distinct.push_back(layer);
            if (with_transpose) distinct_t.push_back(std::make_shared<const BlockMask>(block_mask_transpose(*layer)));
        }
        g.layers.push_back(distinct[i]);
        if (with_transpose) g.transposed.push_back(distinct_t[i]);
    }
    return g;
}

BlockMask block_graph_make(const std::vector<const BlockMask*>& masks, int64_t group) {
    if (masks.empty() || group < 1) throw Error("block_graph_make: give at least one mask and a group of at least 1");
    const int64_t blocks = masks[0]->q_blocks(), nodes = (blocks + group - 1) / group, words = (nodes + 63) / 64;
    BlockMask g;
    g.n = nodes;
    g.block = 64;
    g.row_ptr.assign(1, 0);
    std::vector<uint64_t> rows(to_size(64 * words));  // [64, words] the links of 64 nodes, dense
    for (int64_t s = 0; s < g.q_blocks(); ++s) {
        std::fill(rows.begin(), rows.end(), uint64_t{0});
        for (int64_t a = s * 64; a < std::min(nodes, s * 64 + 64); ++a) {
            uint64_t* row = rows.data() + (a % 64) * words;
            for (const BlockMask* mask : masks) {
                for (int64_t qb = a * group; qb < std::min(blocks, (a + 1) * group); ++qb) {
                    for (int64_t e = mask->row_ptr[to_size(qb)]; e < mask->row_ptr[to_size(qb) + 1]; ++e) {
                        bits_set(row, mask->col_idx[to_size(e)] / group);
                    }
                }
            }
        }
        // Node block (s, cb) holds word cb of the 64 rows: bit (a % 64) * 64 + b % 64 is word a % 64.
        for (int64_t cb = 0; cb < words; ++cb) {
            int64_t set = 0;
            for (int64_t i = 0; i < 64; ++i) set += std::popcount(rows[to_size(i * words + cb)]);
            if (set == 0) continue;
            const bool full = set == block_valid_pairs(g, s, cb);
            g.col_idx.push_back(static_cast<int32_t>(cb));
            g.partial_idx.push_back(full ? -1 : static_cast<int32_t>(g.partial_blocks()));
            if (!full) {
                for (int64_t i = 0; i < 64; ++i) g.bits.push_back(rows[to_size(i * words + cb)]);
            }
        }
        g.row_ptr.push_back(g.kept_blocks());
    }
    return g;
}

} // namespace sparsa
