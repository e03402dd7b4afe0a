// Internal to engine/content (content_attention.cpp and its tests of nothing else): the content
// heads of one call hashed and sorted, the tilings of their passes (the fixed mask's blocks, the
// rounds' bands in sorted order), and the rule that decides each pair of a pass and its count
// (issue 14's spec: A, the self fallback, the duplicate correction). Not a public interface.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/content/buckets.hpp"
#include "engine/content/content_attention.hpp"
#include "engine/tensor.hpp"

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace sparsa::content_detail {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Rows and columns of a tile of a banded pass: a chunk longer than this is split.
constexpr int64_t kMaxTile = 128;

inline size_t to_size(int64_t i) { return static_cast<size_t>(i); }

// [SECTION] tilings, heads, passes

// A partition of [0, n) into tiles, and the (query tile, key tile) pairs a pass computes, by
// query tile and (transposed) by key tile, each list ascending.
struct Tiling {
    std::vector<int64_t> start;                  // [tiles + 1]
    std::vector<int64_t> row_ptr, col_ptr;       // [tiles + 1]
    std::vector<int32_t> col_idx, row_partial;   // by query tile: key tile, fixed mask's partial_idx (-1 full)
    std::vector<int32_t> row_idx, col_partial;   // by key tile: query tile, partial_idx
    int64_t max_tile = 0;
    int64_t tiles() const { return static_cast<int64_t>(start.size()) - 1; }
    int64_t size(int64_t t) const { return start[to_size(t + 1)] - start[to_size(t)]; }
};

// One (batch, head) with an lsh or anchors spec.
struct HeadState {
    int64_t b = 0, h = 0;
    const ContentSpec* spec = nullptr;
    const BlockMask* fixed = nullptr;
    bool has_fixed = false;   // the fixed mask keeps a block
    bool causal = false;
    ContentWalk walk;
    // [n]: 1 when query q attends to itself through the rounds: nothing else is allowed to it
    // and (q, q) is a pair of some round.
    std::vector<uint8_t> self;
    int64_t empty_rows = 0;
    Tiling fixed_tiles, band;
};

// The content heads of one call, hashed and sorted; the times go to `times`.
struct Setup {
    std::vector<HeadState> heads;   // (batch, head) with an lsh or anchors spec, batch-major
    std::vector<int64_t> plain;     // heads of the layer without a spec
    int64_t max_rounds = 0;
};

// One pass of one head: its tiles, its rows (in the pass's order) and their tokens.
struct PassView {
    const HeadState* head = nullptr;
    int64_t round = -1;                  // -1: the fixed pass
    const Tiling* tiling = nullptr;
    const float *q = nullptr, *k = nullptr, *v = nullptr;   // [n, d] in the pass's order
    const int32_t *q_token = nullptr, *k_token = nullptr;   // pass index -> token; nullptr: the same
    int64_t n = 0, d = 0;
};

// What tile_bias looks up once per tile instead of once per pair: each key column's token and
// its chunk in every round, each row's chunks. Grown once per thread.
struct BiasScratch {
    std::vector<int32_t> key_token, key_chunk, query_chunk;   // [cols], [rounds, cols], [rounds]
    std::vector<int32_t> count, earlier;                      // [cols]: passes holding the pair; an earlier one does
};

// The fixed mask's blocks; a round in sorted order: chunk c against chunks c - 1 and c, each
// chunk cut into tiles of at most kMaxTile.
Tiling tiling_fixed(const BlockMask& m);
Tiling tiling_band(int64_t n, int64_t chunk);

// The spec of (layer, h), or nullptr for a plain head.
const ContentSpec* content_spec_of(const MaskSet& masks, int64_t layer, int64_t h);

// Hashes and sorts every content head of the call (only_b, only_h >= 0: that (batch, head)
// alone), timing both into `times`. Throws sparsa::Error naming `what` for a favor head, a bad
// spec or a missing or misshapen file.
Setup content_setup(const std::string& what, const Tensor& q, const Tensor& k, const MaskSet& masks, int64_t layer,
                    const ContentOptions& options, int threads, ContentTimes& times, int64_t only_b = -1,
                    int64_t only_h = -1);

// bias [rows, cols] of tile pair (qt, kt) of a pass: -log count(q, k) for the pass's pairs (0
// for a pair no other pass holds, or with the correction off), -inf for the rest. Returns how
// many of the pairs no earlier pass holds (fixed first, then rounds in order): |A| over a head.
int64_t tile_bias(const PassView& p, int64_t qt, int64_t kt, int32_t partial, bool correction, float* bias,
                  BiasScratch& x);

// Query q's allowed keys as bytes: row [n], row[k] = 1 when k is in A(q).
void allowed_row(const HeadState& h, int64_t q, uint8_t* row);

// The report of one head (recall NaN); pairs from the passes' first-pair counts.
ContentReport head_report(const HeadState& h, int64_t pairs);

} // namespace sparsa::content_detail
