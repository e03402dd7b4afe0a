// A per-input block selection in one kernel (sparsa.torch.select_top_k's GPU path): from a grid of
// block scores to the key blocks of a causal top-k layout (learn::mask_set_top_k_layout), written
// as the columns CudaLayerMasks::forward takes. In PyTorch the same selection was a masked fill, a
// stable sort of every row, a slice, a second sort and a gather (sparsa.selectors.top_k_blocks and
// sparsa.torch's _top_k_columns): at 16 heads x 256 blocks a dozen launches, a third of the
// selection's time. Plain C++: no CUDA header is needed to use it.
#pragma once

#include <cstdint>

namespace sparsa {

// The most blocks a row this kernel ranks (a key of 8 bytes a block in shared memory): n = 262,144
// at 64-token blocks. Longer rows are the caller's to rank another way.
inline constexpr int64_t kTopKColumnsMaxBlocks = 4096;

// Entries of one head's causal top-`keep` layout over `blocks` block rows: row r keeps
// min(keep, r + 1) blocks.
inline int64_t top_k_columns_per_head(int64_t blocks, int64_t keep) {
    if (blocks <= keep) return blocks * (blocks + 1) / 2;
    return keep * (keep + 1) / 2 + (blocks - keep) * keep;
}

// scores: device float32 [grids, blocks, blocks], row-major and contiguous (a grid per head of
// every input: batch x heads), only entries c <= r read. Row r of each grid keeps its own block r
// and the min(keep, r + 1) - 1 highest-scoring blocks c < r: by score, a NaN above every number
// (as torch.sort ranks it), equal scores to the lower block (a stable sort's order), so the kept
// set is sparsa.selectors.top_k_blocks's wherever a row has fewer NaNs than `keep` (with more, that
// one drops the row's own block; this kernel never does). Written to `columns` (device int32,
// grids x top_k_columns_per_head(blocks, keep)): grid by grid, row by row, each row's blocks
// ascending (its own block last), the layout's col_idx. Launched on `stream` (a cudaStream_t;
// nullptr: the legacy default stream) without waiting; no host step, so it can be captured in a
// CUDA graph. Throws sparsa::Error for grids < 1, blocks outside 1 to kTopKColumnsMaxBlocks, keep
// outside 1 to blocks, a null pointer, or a failed launch.
void cuda_top_k_columns(const float* scores, int64_t grids, int64_t blocks, int64_t keep, int32_t* columns, void* stream);

// The most floats of one query block's rows the rows entry holds in shared memory (block x width).
inline constexpr int64_t kTopKRowsMaxFloats = 8192;

// The same from the pooled gate's two sides with row queries instead of a score grid: a is
// [grids, n, width], b [grids, blocks, width] (device float32, contiguous), the rows of query block
// r are r row_block .. (the last block's fewer), and the score of (r, c) is the log-sum-exp over
// those rows of a[grid, i] . b[grid, c] / divisor (the products summed in float32 in order, an
// online log-sum-exp in float32, as torch.logsumexp up to rounding), computed where it is ranked,
// so no [grids, n, blocks] grid is written or read. blocks = ceil(n / row_block). Throws as above,
// and for width outside 1 to 1,024, a divisor that is not finite and positive, or row_block x width
// above kTopKRowsMaxFloats.
void cuda_top_k_columns_rows(const float* a, const float* b, int64_t width, float divisor, int64_t grids, int64_t n,
                             int64_t row_block, int64_t keep, int32_t* columns, void* stream);

} // namespace sparsa
