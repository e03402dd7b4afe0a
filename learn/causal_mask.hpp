// The causal mask as an ordinary MaskSet, and any mask cut to its causal part (key <= query): the
// causal teacher runs every attention, dense or sparse, through these, so a student stays causal
// whatever a selector keeps.
#pragma once

#include "engine/block_mask.hpp"

#include <cstdint>
#include <memory>

namespace sparsa::learn {

// Every pair (q, k) with k <= q: blocks below the diagonal full, diagonal blocks partial (lower
// triangle; full when the block holds one valid row). Canonical, so equal to
// block_mask_from_dense of the lower triangle (tested).
std::shared_ptr<const BlockMask> block_mask_causal(int64_t n, int32_t block);

// [layers, heads] copies of block_mask_causal (one mask shared).
MaskSet mask_set_causal(int64_t n, int32_t block, int64_t layers, int64_t heads);

// mask AND causal: blocks above the diagonal dropped, diagonal blocks intersected with the lower
// triangle (dropped when nothing is left), the rest kept as they are. Canonical.
BlockMask block_mask_restrict_causal(const BlockMask& mask);

// The same for every (layer, head) of a set (each distinct mask cut once); content-based heads
// are refused (their pairs are not a BlockMask).
MaskSet mask_set_restrict_causal(const MaskSet& set);

// The layout a causal top-k block selection fills in: [1, heads] masks, one distinct object per
// head (not shared, unlike mask_set_make's: each head gets its own column list on the device),
// whose query block r keeps min(keep, r + 1) key blocks, the last its diagonal (partial as in
// block_mask_causal). As built, row r keeps the blocks r - keep + 1 .. r (a causal window);
// CudaLayerMasks::forward with columns (engine/cuda/attention_cuda_device.hpp) replaces every
// row's blocks by a selection's, sorted, its diagonal last, so any selection of `keep` blocks a
// row that holds the diagonal runs on masks uploaded once. keep: 1 to ceil(n / block).
MaskSet mask_set_top_k_layout(int64_t n, int32_t block, int64_t heads, int64_t keep);

// Kept blocks of one head of that layout: sum over rows r of min(keep, r + 1).
int64_t top_k_layout_entries(int64_t n, int32_t block, int64_t keep);

// Kept blocks of the causal mask at (n, block): the work of dense causal attention in blocks,
// the denominator of a causal model's block density.
int64_t causal_block_count(int64_t n, int32_t block);

} // namespace sparsa::learn
