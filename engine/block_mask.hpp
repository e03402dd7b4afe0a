// The block-sparse mask format: one BlockMask per (layer, head), a MaskSet per model.
// Every other part of sparsa (engines, analysis, viewer, files) reads only this format.
#pragma once

#include "engine/content/content_spec.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace sparsa {

// Block sizes a mask may use: powers of two from 16 to 256.
constexpr int32_t kMinBlock = 16;
constexpr int32_t kMaxBlock = 256;
bool block_size_valid(int64_t block);

// A block-sparse mask over an n x n attention matrix (queries x keys), in blocks of B x B.
//
// Query block r covers queries [r*B, min((r+1)*B, n)); the last block of a row or column is
// short when B does not divide n. Row r keeps the key blocks col_idx[row_ptr[r] .. row_ptr[r+1]),
// sorted ascending. A kept block is *full* (every valid pair allowed; partial_idx == -1) or
// *partial* (partial_idx = p >= 0): then bit (i*B + j) of bitmask p says whether query
// r*B + i may attend to key c*B + j. Bits of pairs beyond n are zero. Bit t of a bitmask is bit
// t % 64 of its word t / 64, so a bitmask is B * B / 64 words (4 for B = 16, 1024 for B = 256);
// for B >= 64 that is [B, B / 64] words, one row of keys per query.
//
// The form is canonical: no kept block is empty, no partial block has all its valid pairs set,
// and partial blocks use bitmasks 0, 1, 2, ... in the order they appear, each once.
// So two masks allow the same pairs exactly when their arrays are equal.
struct BlockMask {
    int64_t n = 0;                    // sequence length (queries and keys)
    int32_t block = 64;               // B
    std::vector<int64_t> row_ptr;     // [q_blocks + 1]
    std::vector<int32_t> col_idx;     // [kept_blocks] key block of each kept block
    std::vector<int32_t> partial_idx; // [kept_blocks] -1 when full, else index of its bitmask
    std::vector<uint64_t> bits;       // [partial_blocks, B * B / 64] bitmasks, bit i*B+j as above

    int64_t q_blocks() const { return (n + block - 1) / block; }
    int64_t k_blocks() const { return q_blocks(); }
    int64_t kept_blocks() const { return static_cast<int64_t>(col_idx.size()); }
    int64_t words_per_block() const { return int64_t{block} * block / 64; }
    int64_t partial_blocks() const { return static_cast<int64_t>(bits.size()) / words_per_block(); }

    // The bitmask of partial block p: [B * B / 64] words.
    const uint64_t* partial_bits(int64_t p) const { return bits.data() + p * words_per_block(); }

    // Whether query q may attend to key k (0 <= q, k < n). O(log kept blocks of the row).
    bool allowed(int64_t q, int64_t k) const;

    friend bool operator==(const BlockMask&, const BlockMask&) = default;
};

// Counts over one mask. Pairs count only positions below n.
struct BlockMaskStats {
    int64_t kept_blocks = 0;
    int64_t full_blocks = 0;
    int64_t partial_blocks = 0;
    int64_t kept_pairs = 0;    // allowed (query, key) pairs
    int64_t empty_rows = 0;    // queries with no allowed key
    int64_t first_empty_row = -1;
    double density = 0.0;      // kept_pairs / n^2
    int64_t mask_bytes = 0;    // memory of the CSR arrays and bitmasks
};
BlockMaskStats block_mask_stats(const BlockMask& mask);

// Checks every invariant of the format (shapes, sorted rows, ranges, canonical form); throws
// sparsa::Error naming `what` and the first broken rule. Loaders call it on everything they read.
void block_mask_validate(const BlockMask& mask, const std::string& what);

// Number of valid pairs in block (qb, kb): the short last block has fewer.
int64_t block_valid_pairs(const BlockMask& mask, int64_t qb, int64_t kb);

// A mask of the stated size that keeps nothing.
BlockMask block_mask_empty(int64_t n, int32_t block);

// The canonical mask of a dense matrix. dense: [n, n] bytes, dense[q * n + k] != 0 when query q
// may attend to key k. Throws sparsa::Error for n < 1 or a block size that is not valid.
BlockMask block_mask_from_dense(int64_t n, int32_t block, const uint8_t* dense);

// One query row of the mask as 0/1 bytes. row: [n], row[k] = allowed(q, k).
void block_mask_dense_row(const BlockMask& mask, int64_t q, uint8_t* row);

// Hash of every field of the mask: equal masks hash equal (used to share equal masks).
uint64_t block_mask_hash(const BlockMask& mask);

// One BlockMask per (layer, head); identical masks are stored once and shared.
struct MaskSet {
    int64_t n = 0;
    int32_t block = 64;
    int64_t layers = 1;
    int64_t heads = 1;
    std::vector<std::shared_ptr<const BlockMask>> masks; // [layers * heads], index l * heads + h
    // Content-based heads (engine/content/content_spec.hpp): empty when the set has none, else
    // [layers * heads] with nullptr for a head that is its fixed mask alone. A head with a spec
    // attends to its fixed mask's pairs | the spec's pairs (lsh, anchors; exact softmax over the
    // union), or is FAVOR+ (its fixed mask then empty).
    std::vector<std::shared_ptr<const ContentSpec>> content;

    // Where the masks came from, saved in the file's JSON header.
    std::string script_name;    // file name of the script, or "" (e.g. "bigbird.pat")
    std::string script_text;    // the script's source text
    std::vector<std::pair<std::string, std::string>> params; // extra key/value pairs

    const BlockMask& at(int64_t layer, int64_t head) const { return *masks[layer * heads + head]; }

    // Distinct masks (equal by content) in first-use order, and for each (layer, head) its index
    // among them.
    std::vector<std::shared_ptr<const BlockMask>> unique_masks() const;
    std::vector<int32_t> unique_index() const; // [layers * heads]
};

// Builds a MaskSet from one mask per (layer, head), sharing equal masks (by content, so two
// pointers to equal masks end up as one). masks: [layers * heads], index l * heads + h; all must
// have the same n and block.
MaskSet mask_set_make(int64_t layers, int64_t heads,
                      std::vector<std::shared_ptr<const BlockMask>> masks);

} // namespace sparsa
