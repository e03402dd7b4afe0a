// The block-sparse mask format: queries on one mask (allowed, stats), the invariant checker every
// loader runs, dense conversion, and MaskSet's sharing of equal masks.
#include "engine/block_mask.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <bit>
#include <string>
#include <unordered_map>

namespace sparsa {

namespace {

size_t to_size(int64_t i) { return static_cast<size_t>(i); }

// Queries (or keys) in block b: B, or fewer for the short last block.
int64_t block_extent(int64_t n, int64_t block, int64_t b) { return std::min(block, n - b * block); }

bool bit_get(const uint64_t* words, int64_t t) { return (words[t / 64] >> (t % 64)) & 1U; }
void bit_set(uint64_t* words, int64_t t) { words[t / 64] |= uint64_t{1} << (t % 64); }

// The bits of the valid pairs of a block with `rows` queries and `cols` keys: [B * B / 64] words.
std::vector<uint64_t> valid_bits(int64_t block, int64_t rows, int64_t cols) {
    std::vector<uint64_t> words(to_size(block * block / 64), 0);
    for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) bit_set(words.data(), i * block + j);
    }
    return words;
}

// Valid-pair bitmasks for the (at most four) block shapes of a mask: full or short rows x cols.
class ValidBits {
public:
    ValidBits(int64_t n, int64_t block) : n_(n), block_(block) {}
    const std::vector<uint64_t>& get(int64_t qb, int64_t kb) {
        const int64_t rows = block_extent(n_, block_, qb), cols = block_extent(n_, block_, kb);
        const size_t slot = (rows == block_ ? 0U : 2U) + (cols == block_ ? 0U : 1U);
        if (cache_[slot].empty()) cache_[slot] = valid_bits(block_, rows, cols);
        return cache_[slot];
    }

private:
    int64_t n_, block_;
    std::vector<uint64_t> cache_[4];
};

// Whether query row i of a bitmask has any bit set.
bool bitmask_row_any(const uint64_t* words, int64_t block, int64_t i) {
    if (block >= 64) {
        for (int64_t w = i * block / 64; w < (i + 1) * block / 64; ++w) {
            if (words[w] != 0) return true;
        }
        return false;
    }
    const uint64_t row = words[i * block / 64] >> ((i * block) % 64);
    return (row & ((uint64_t{1} << block) - 1)) != 0;
}

std::string where(const std::string& what, int64_t qb) { return what + ": query block " + std::to_string(qb); }
std::string where(const std::string& what, int64_t qb, int64_t kb) {
    return where(what, qb) + ", key block " + std::to_string(kb);
}

} // namespace

bool block_size_valid(int64_t block) { return block >= kMinBlock && block <= kMaxBlock && std::has_single_bit(static_cast<uint64_t>(block)); }

// [SECTION] one mask

bool BlockMask::allowed(int64_t q, int64_t k) const {
    if (q < 0 || k < 0 || q >= n || k >= n) return false;
    const int64_t qb = q / block, kb = k / block;
    const auto first = col_idx.begin() + row_ptr[to_size(qb)], last = col_idx.begin() + row_ptr[to_size(qb) + 1];
    const auto it = std::lower_bound(first, last, static_cast<int32_t>(kb));
    if (it == last || *it != kb) return false;
    const int32_t p = partial_idx[to_size(it - col_idx.begin())];
    return p < 0 || bit_get(partial_bits(p), (q % block) * block + k % block);
}

int64_t block_valid_pairs(const BlockMask& mask, int64_t qb, int64_t kb) {
    return block_extent(mask.n, mask.block, qb) * block_extent(mask.n, mask.block, kb);
}

BlockMaskStats block_mask_stats(const BlockMask& mask) {
    BlockMaskStats s;
    const int64_t words = mask.words_per_block();
    for (int64_t qb = 0; qb < mask.q_blocks(); ++qb) {
        bool any_full = false;
        for (int64_t e = mask.row_ptr[to_size(qb)]; e < mask.row_ptr[to_size(qb) + 1]; ++e) {
            const int32_t p = mask.partial_idx[to_size(e)];
            ++s.kept_blocks;
            if (p < 0) {
                ++s.full_blocks;
                any_full = true;
                s.kept_pairs += block_valid_pairs(mask, qb, mask.col_idx[to_size(e)]);
            } else {
                ++s.partial_blocks;
                for (int64_t w = 0; w < words; ++w) s.kept_pairs += std::popcount(mask.partial_bits(p)[w]);
            }
        }
        if (any_full) continue; // a full block gives every query of the row some key
        for (int64_t i = 0; i < block_extent(mask.n, mask.block, qb); ++i) {
            bool any = false;
            for (int64_t e = mask.row_ptr[to_size(qb)]; e < mask.row_ptr[to_size(qb) + 1] && !any; ++e) {
                any = bitmask_row_any(mask.partial_bits(mask.partial_idx[to_size(e)]), mask.block, i);
            }
            if (!any) {
                if (s.empty_rows == 0) s.first_empty_row = qb * mask.block + i;
                ++s.empty_rows;
            }
        }
    }
    s.density = mask.n > 0 ? static_cast<double>(s.kept_pairs) / (static_cast<double>(mask.n) * static_cast<double>(mask.n)) : 0.0;
    s.mask_bytes = static_cast<int64_t>(mask.row_ptr.size() * sizeof(int64_t) + mask.col_idx.size() * sizeof(int32_t) +
                                        mask.partial_idx.size() * sizeof(int32_t) + mask.bits.size() * sizeof(uint64_t));
    return s;
}

void block_mask_validate(const BlockMask& mask, const std::string& what) {
    if (mask.n < 1) throw Error(what + ": n = " + std::to_string(mask.n) + " (a mask needs n >= 1)");
    if (!block_size_valid(mask.block)) {
        throw Error(what + ": block size " + std::to_string(mask.block) +
                    " is not valid (use 16, 32, 64, 128 or 256)");
    }
    const int64_t q_blocks = mask.q_blocks(), kept = mask.kept_blocks(), words = mask.words_per_block();
    if (static_cast<int64_t>(mask.row_ptr.size()) != q_blocks + 1) {
        throw Error(what + ": row_ptr has " + std::to_string(mask.row_ptr.size()) + " entries, expected q_blocks + 1 = " +
                    std::to_string(q_blocks + 1) + " (n = " + std::to_string(mask.n) + ", block " +
                    std::to_string(mask.block) + ")");
    }
    if (mask.partial_idx.size() != mask.col_idx.size()) {
        throw Error(what + ": partial_idx has " + std::to_string(mask.partial_idx.size()) + " entries but col_idx has " +
                    std::to_string(mask.col_idx.size()) + " (one per kept block in both)");
    }
    if (mask.bits.size() % to_size(words) != 0) {
        throw Error(what + ": bits has " + std::to_string(mask.bits.size()) + " words, not a multiple of B * B / 64 = " +
                    std::to_string(words) + " (one whole bitmask per partial block)");
    }
    if (mask.row_ptr[0] != 0) throw Error(what + ": row_ptr[0] = " + std::to_string(mask.row_ptr[0]) + " (must be 0)");
    for (int64_t qb = 0; qb < q_blocks; ++qb) {
        if (mask.row_ptr[to_size(qb) + 1] < mask.row_ptr[to_size(qb)]) {
            throw Error(where(what, qb) + ": row_ptr decreases (" + std::to_string(mask.row_ptr[to_size(qb)]) + " then " +
                        std::to_string(mask.row_ptr[to_size(qb) + 1]) + ")");
        }
        if (mask.row_ptr[to_size(qb) + 1] > kept) {
            throw Error(where(what, qb) + ": row_ptr " + std::to_string(mask.row_ptr[to_size(qb) + 1]) +
                        " is beyond the " + std::to_string(kept) + " kept blocks");
        }
    }
    if (mask.row_ptr.back() != kept) {
        throw Error(what + ": row_ptr ends at " + std::to_string(mask.row_ptr.back()) + " but there are " +
                    std::to_string(kept) + " kept blocks (col_idx entries)");
    }
    const int64_t partials = mask.partial_blocks();
    int64_t next_partial = 0;
    ValidBits valid(mask.n, mask.block);
    for (int64_t qb = 0; qb < q_blocks; ++qb) {
        for (int64_t e = mask.row_ptr[to_size(qb)]; e < mask.row_ptr[to_size(qb) + 1]; ++e) {
            const int64_t kb = mask.col_idx[to_size(e)];
            if (kb < 0 || kb >= q_blocks) {
                throw Error(where(what, qb) + ": key block " + std::to_string(kb) + " is out of range [0, " +
                            std::to_string(q_blocks) + ")");
            }
            if (e > mask.row_ptr[to_size(qb)] && kb <= mask.col_idx[to_size(e) - 1]) {
                throw Error(where(what, qb) + ": key blocks not strictly ascending (" +
                            std::to_string(mask.col_idx[to_size(e) - 1]) + " then " + std::to_string(kb) +
                            "; each kept block once, sorted)");
            }
            const int64_t p = mask.partial_idx[to_size(e)];
            if (p == -1) continue;
            if (p < -1 || p >= partials) {
                throw Error(where(what, qb, kb) + ": partial_idx " + std::to_string(p) + " is neither -1 (full) nor one of the " +
                            std::to_string(partials) + " bitmasks");
            }
            if (p != next_partial) {
                throw Error(where(what, qb, kb) + ": partial_idx " + std::to_string(p) + " where " +
                            std::to_string(next_partial) +
                            " was expected (bitmasks are used once each, in the order partial blocks appear)");
            }
            ++next_partial;
            const std::vector<uint64_t>& ok = valid.get(qb, kb);
            const uint64_t* bits = mask.partial_bits(p);
            int64_t set = 0;
            for (int64_t w = 0; w < words; ++w) {
                if ((bits[w] & ~ok[to_size(w)]) != 0) {
                    throw Error(where(what, qb, kb) + ": bitmask " + std::to_string(p) +
                                " has bits set for pairs beyond n = " + std::to_string(mask.n) + " (they must be 0)");
                }
                set += std::popcount(bits[w]);
            }
            if (set == 0) {
                throw Error(where(what, qb, kb) + ": partial block allows no pair (canonical form: drop empty blocks)");
            }
            if (set == block_valid_pairs(mask, qb, kb)) {
                throw Error(where(what, qb, kb) +
                            ": partial block allows every valid pair (canonical form: mark it full, partial_idx -1)");
            }
        }
    }
    if (next_partial != partials) {
        throw Error(what + ": " + std::to_string(partials) + " bitmasks but only " + std::to_string(next_partial) +
                    " partial blocks use them (each bitmask is used exactly once)");
    }
}

BlockMask block_mask_empty(int64_t n, int32_t block) {
    if (n < 1) throw Error("empty mask: n = " + std::to_string(n) + " (a mask needs n >= 1)");
    if (!block_size_valid(block)) {
        throw Error("empty mask: block size " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
    }
    BlockMask mask;
    mask.n = n;
    mask.block = block;
    mask.row_ptr.assign(to_size(mask.q_blocks() + 1), 0);
    return mask;
}

// [SECTION] dense conversion

BlockMask block_mask_from_dense(int64_t n, int32_t block, const uint8_t* dense) {
    BlockMask mask = block_mask_empty(n, block);
    const int64_t words = mask.words_per_block();
    std::vector<uint64_t> bits(to_size(words));
    for (int64_t qb = 0; qb < mask.q_blocks(); ++qb) {
        const int64_t rows = block_extent(n, block, qb);
        for (int64_t kb = 0; kb < mask.k_blocks(); ++kb) {
            const int64_t cols = block_extent(n, block, kb);
            std::fill(bits.begin(), bits.end(), 0);
            int64_t set = 0;
            for (int64_t i = 0; i < rows; ++i) {
                const uint8_t* row = dense + (qb * block + i) * n + kb * block;
                for (int64_t j = 0; j < cols; ++j) {
                    if (row[j] != 0) {
                        bit_set(bits.data(), i * block + j);
                        ++set;
                    }
                }
            }
            if (set == 0) continue;
            mask.col_idx.push_back(static_cast<int32_t>(kb));
            if (set == rows * cols) {
                mask.partial_idx.push_back(-1);
            } else {
                mask.partial_idx.push_back(static_cast<int32_t>(mask.partial_blocks()));
                mask.bits.insert(mask.bits.end(), bits.begin(), bits.end());
            }
        }
        mask.row_ptr[to_size(qb) + 1] = mask.kept_blocks();
    }
    return mask;
}

void block_mask_dense_row(const BlockMask& mask, int64_t q, uint8_t* row) {
    std::fill(row, row + mask.n, uint8_t{0});
    const int64_t qb = q / mask.block, i = q % mask.block;
    for (int64_t e = mask.row_ptr[to_size(qb)]; e < mask.row_ptr[to_size(qb) + 1]; ++e) {
        const int64_t k0 = int64_t{mask.col_idx[to_size(e)]} * mask.block, k1 = std::min(mask.n, k0 + mask.block);
        const int32_t p = mask.partial_idx[to_size(e)];
        for (int64_t k = k0; k < k1; ++k) {
            row[k] = p < 0 ? 1 : static_cast<uint8_t>(bit_get(mask.partial_bits(p), i * mask.block + (k - k0)));
        }
    }
}

// [SECTION] sharing

uint64_t block_mask_hash(const BlockMask& mask) {
    // FNV-1a over 64-bit values, then a final mix; arrays are length-prefixed.
    uint64_t h = 0xcbf29ce484222325ULL;
    auto mix = [&h](uint64_t v) { h = (h ^ v) * 0x100000001b3ULL; };
    mix(static_cast<uint64_t>(mask.n));
    mix(static_cast<uint64_t>(mask.block));
    mix(mask.row_ptr.size());
    for (int64_t v : mask.row_ptr) mix(static_cast<uint64_t>(v));
    mix(mask.col_idx.size());
    for (size_t i = 0; i < mask.col_idx.size(); ++i) {
        mix((static_cast<uint64_t>(static_cast<uint32_t>(mask.col_idx[i])) << 32) |
            static_cast<uint32_t>(mask.partial_idx.size() > i ? mask.partial_idx[i] : 0));
    }
    mix(mask.partial_idx.size());
    mix(mask.bits.size());
    for (uint64_t v : mask.bits) mix(v);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

namespace {

// Groups masks by content: index of each mask among the distinct ones, in first-use order.
std::vector<int32_t> masks_group(const std::vector<std::shared_ptr<const BlockMask>>& masks,
                                 std::vector<std::shared_ptr<const BlockMask>>* unique) {
    std::vector<int32_t> index(masks.size());
    std::unordered_map<const BlockMask*, int32_t> by_pointer;
    std::unordered_multimap<uint64_t, int32_t> by_hash;
    std::vector<std::shared_ptr<const BlockMask>> distinct;
    for (size_t i = 0; i < masks.size(); ++i) {
        const BlockMask* m = masks[i].get();
        if (auto it = by_pointer.find(m); it != by_pointer.end()) {
            index[i] = it->second;
            continue;
        }
        const uint64_t h = block_mask_hash(*m);
        int32_t found = -1;
        for (auto [it, end] = by_hash.equal_range(h); it != end && found < 0; ++it) {
            if (*distinct[to_size(it->second)] == *m) found = it->second;
        }
        if (found < 0) {
            found = static_cast<int32_t>(distinct.size());
            distinct.push_back(masks[i]);
            by_hash.emplace(h, found);
        }
        by_pointer.emplace(m, found);
        index[i] = found;
    }
    if (unique != nullptr) *unique = std::move(distinct);
    return index;
}

} // namespace

std::vector<std::shared_ptr<const BlockMask>> MaskSet::unique_masks() const {
    std::vector<std::shared_ptr<const BlockMask>> unique;
    masks_group(masks, &unique);
    return unique;
}

std::vector<int32_t> MaskSet::unique_index() const { return masks_group(masks, nullptr); }

MaskSet mask_set_make(int64_t layers, int64_t heads, std::vector<std::shared_ptr<const BlockMask>> masks) {
    if (layers < 1 || heads < 1) {
        throw Error("mask set: " + std::to_string(layers) + " layers x " + std::to_string(heads) +
                    " heads (need at least one of each)");
    }
    if (static_cast<int64_t>(masks.size()) % heads != 0 || static_cast<int64_t>(masks.size()) / heads != layers) {
        throw Error("mask set: " + std::to_string(masks.size()) + " masks given for " + std::to_string(layers) +
                    " layers x " + std::to_string(heads) + " heads (need one per layer and head)");
    }
    for (size_t i = 0; i < masks.size(); ++i) {
        if (!masks[i]) throw Error("mask set: mask " + std::to_string(i) + " is missing (null)");
        if (masks[i]->n != masks[0]->n || masks[i]->block != masks[0]->block) {
            throw Error("mask set: mask " + std::to_string(i) + " has n = " + std::to_string(masks[i]->n) + ", block " +
                        std::to_string(masks[i]->block) + " but mask 0 has n = " + std::to_string(masks[0]->n) +
                        ", block " + std::to_string(masks[0]->block) + " (all masks of a set share both)");
        }
    }
    MaskSet set;
    set.n = masks[0]->n;
    set.block = masks[0]->block;
    set.layers = layers;
    set.heads = heads;
    std::vector<std::shared_ptr<const BlockMask>> unique;
    std::vector<int32_t> index = masks_group(masks, &unique);
    set.masks.resize(masks.size());
    for (size_t i = 0; i < masks.size(); ++i) set.masks[i] = unique[to_size(index[i])];
    return set;
}

} // namespace sparsa
