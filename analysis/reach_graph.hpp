// Masks as graphs for the receptive-field analysis (receptive_field.hpp): sets of positions as
// bitsets, one hop of a set over a mask, the union of a layer's heads, the transpose, the block graph.
#pragma once

#include "engine/block_mask.hpp"

#include <cstdint>
#include <memory>
#include <vector>

namespace sparsa {

// [SECTION] bitsets
//
// A set of positions 0..n-1 is [ceil(n / 64)] words: position t is bit t % 64 of word t / 64
// (128 KiB at n = 1,048,576). Bits past n stay zero.

inline bool bits_test(const uint64_t* w, int64_t t) { return (w[t / 64] >> (t % 64)) & 1U; }
inline void bits_set(uint64_t* w, int64_t t) { w[t / 64] |= uint64_t{1} << (t % 64); }
void bits_set_range(uint64_t* w, int64_t begin, int64_t end);          // positions [begin, end)
bool bits_any_range(const uint64_t* w, int64_t begin, int64_t end);    // any of [begin, end) set
int64_t bits_count(const std::vector<uint64_t>& w);

// Row i of a partial block's B x B bitmask when B < 64: its B bits (B divides 64, so one word).
uint64_t bitmask_row_bits(const uint64_t* bits, int64_t block, int64_t i);

// into[c0, c0 + B) |= row i of a partial block's bitmask `bits`; c0 is a multiple of B.
// into: [words].
void bits_or_row(uint64_t* into, int64_t words, int64_t c0, const uint64_t* bits, int64_t block, int64_t i);

// One hop of a set over mask x: into |= x's row j for every j in `from` (a full block adds its
// whole key range, a partial block the bits of the rows in `from`). from, into: [words] over
// x.n positions, distinct arrays (a hop must not see its own output). Work: a skip test per
// query block of x, then the kept blocks of the rows `from` touches; never n^2.
void bits_expand(const BlockMask& x, const uint64_t* from, uint64_t* into, int64_t words);

// [SECTION] masks as graphs

// The union of masks of one n and block: keeps (q, k) when any of them does. Canonical (a
// partial block whose union sets every valid pair becomes full). masks: [count], non-empty.
BlockMask block_mask_union(const std::vector<const BlockMask*>& masks);

// The transpose: T.allowed(k, q) == mask.allowed(q, k). Rows of T are keys, columns queries.
// Partial blocks transpose in 64 x 64 bit tiles.
BlockMask block_mask_transpose(const BlockMask& mask);

// Whether the mask keeps only pairs with k <= q.
bool block_mask_causal(const BlockMask& mask);

// The block graph of the union of `masks` (one n and block), `group` blocks per node: a mask
// over ceil(q_blocks / group) nodes (block 64) linking node a to node b when some kept block
// (qb, kb) of some mask has qb / group == a and kb / group == b. Counting every token pair of
// linked nodes as allowed over-approximates. Work: the kept blocks, plus nodes^2 / 64 words.
BlockMask block_graph_make(const std::vector<const BlockMask*>& masks, int64_t group);

// The distinct masks of each layer (heads sharing a mask give it once): [layers][distinct].
// Throws sparsa::Error for a set whose mask count is not layers * heads.
std::vector<std::vector<const BlockMask*>> mask_set_layer_heads(const MaskSet& set);

// The layers of a MaskSet as graphs. Equal layers (by content) share one graph, so a pointer
// compare says whether two layers are the same relation.
struct ReachGraph {
    int64_t n = 0;
    int32_t block = 64;
    std::vector<std::shared_ptr<const BlockMask>> layers;      // [layers] A_l: union of heads
    std::vector<std::shared_ptr<const BlockMask>> transposed;  // [layers] A_l^T, or empty
};
// Builds A_l for every layer (a layer of one distinct mask shares it), and A_l^T when
// `with_transpose` (direction out needs it).
ReachGraph reach_graph_make(const MaskSet& set, bool with_transpose = true);

} // namespace sparsa
