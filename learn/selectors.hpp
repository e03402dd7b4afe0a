// Training-free block selectors: which key blocks each query block keeps, chosen from one layer's
// q and k of this very input at a small fraction of a dense attention's cost, after MoBA (mean
// keys), Quest (key bounds), MInference (vertical and slash lines) and DuoAttention (retrieval
// heads dense, streaming heads sink + window).
//
// Every selector keeps the diagonal (own) block of every row and counts it among `keep`, as the
// gates of distill.hpp do (a query always sees its neighbours); causal: only key blocks c <= r are
// candidates, so row r keeps min(keep, r + 1) blocks. Ties go to the lower key block, so the
// choice is a deterministic function of q and k.
//
// Also the exact-score selector, the trivial baseline every cheap one is measured against.
//
// Index: [SECTION] exact scores, [SECTION] MoBA, [SECTION] Quest, [SECTION] vertical and slash,
//        [SECTION] DuoAttention
#pragma once

#include "engine/block_mask.hpp"
#include "engine/tensor.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa::learn {

struct SelectorOptions {
    int32_t block = 16;
    int64_t keep = 4;      // key blocks per query block, the diagonal included (1 to blocks)
    bool causal = true;    // key blocks after the query block are never candidates
};

// [SECTION] exact scores

// The untrained identity gate's choice (distill.hpp: gate_identity, then gate_masks), computed with
// float products instead of its double loops: the same masks but for near-ties (tested). Each
// query row i's share of its softmax(q_i k^T / sqrt(d)) per key block (over every key, as the
// gate's row targets are: in a causal row the later keys count in the total but their blocks are
// never kept), a block row's score per key block the largest share among its rows, top `keep`.
// It costs a dense q k^T (n^2 d per head): the exact-score reference, not a cheap selector.
MaskSet select_exact(const Tensor& q, const Tensor& k, const SelectorOptions& options);

// [SECTION] MoBA

// Score of key block c for query block r: mean of r's queries . mean of c's keys, per head (MoBA
// gates each query by the mean key; pooling the queries too makes it one [blocks, blocks] product).
// q, k: [1, heads, n, d]. Returns [blocks, blocks] of head `head`. Cost: n d + blocks^2 d.
std::vector<double> moba_scores(const Tensor& q, const Tensor& k, int64_t head, int32_t block);

// The top `keep` blocks per row by moba_scores, every head: a one-layer MaskSet [1, heads].
MaskSet select_moba(const Tensor& q, const Tensor& k, const SelectorOptions& options);

// [SECTION] Quest

// Quest's bound: per key block c and channel e the smallest and largest key, lo_ce and hi_ce; for
// a query i, u_ic = sum_e max(q_ie lo_ce, q_ie hi_ce) >= q_i . k_j for every key j of c. A query
// block's score is the largest u_ic over its queries: still a bound of every (query, key) pair of
// the block, so a block holding one key that matches one query scores as high as that pair (the
// mean query's bound would bound nothing and dilute an answer row among fifteen that need
// nothing). Computed as two products, q+ hi^T + q- lo^T (q+ = max(q, 0), q- = min(q, 0)).
// Returns [blocks, blocks] of head `head`. Cost: n d + 2 n blocks d.
std::vector<double> quest_scores(const Tensor& q, const Tensor& k, int64_t head, int32_t block);

MaskSet select_quest(const Tensor& q, const Tensor& k, const SelectorOptions& options);

// [SECTION] vertical and slash

// MInference's estimate: the attention of the last `last_queries` queries to every key (softmax
// of q k^T / sqrt(d), keys after the query left out when causal), summed over those queries per key
// (vertical[j], a column every query reads) and per offset o = i - j (slash[o], a diagonal). For a
// bidirectional model slash is indexed by o + n - 1 (o from -(n - 1) to n - 1). Cost:
// last_queries x n x d per head.
struct VerticalSlash {
    std::vector<double> vertical;   // [n]
    std::vector<double> slash;      // [n] causal, [2 n - 1] bidirectional
};
VerticalSlash vertical_slash_estimate(const Tensor& q, const Tensor& k, int64_t head, int64_t last_queries, bool causal);

// Block scores from the estimate: column c scores the vertical mass of its keys, block diagonal
// D = r - c the slash mass of the offsets that cross it (offset o weighs (B - |o - D B|) / B in
// diagonal D). Each row keeps its diagonal block, then walks one ranking of columns and diagonals
// together (both are shares of the same queries' attention) and adds the block each names in that
// row (column c when c <= r, diagonal D when r - D >= 0) until it has `keep`. Every head its own.
MaskSet select_vertical_slash(const Tensor& q, const Tensor& k, const SelectorOptions& options, int64_t last_queries = 64);

// [SECTION] DuoAttention

// One streaming head's mask: the first `sink_blocks` key blocks and the `window_blocks` blocks
// ending at the diagonal (the diagonal counts in the window; window_blocks >= 1). Causal cut
// applied when causal.
BlockMask streaming_mask(int64_t n, int32_t block, int64_t sink_blocks, int64_t window_blocks, bool causal);

// The split at a density: `retrieval` heads out of `total_heads` dense (density 1 each), the rest
// streaming with one sink block and the widest window that keeps the mean density over all heads
// at or below `density`. Retrieval heads are as many as fit: the largest R with
// R + (total - R) * (density of sink + diagonal) <= density * total (R = 0 when even one dense head
// is over the budget: with 4 heads in all, below 25% plus). The window is then at least 1 (the
// diagonal) even when that is over the budget.
struct DuoBudget {
    int64_t retrieval = 0;        // dense heads
    int64_t sink_blocks = 1, window_blocks = 1;
    double density = 0;           // mean over all heads (of the causal mask's blocks when causal)
};
DuoBudget duo_budget(int64_t n, int32_t block, int64_t total_heads, double density, bool causal);

// The masks of one layer: head h dense (the causal mask when causal) where retrieval[h], else the
// budget's streaming mask. retrieval: [heads]. Returns a one-layer MaskSet [1, heads].
MaskSet duo_masks(int64_t n, int32_t block, const std::vector<bool>& retrieval, const DuoBudget& budget, bool causal);

} // namespace sparsa::learn
