// A lightning indexer after DeepSeek's sparse attention (DSA): per layer, a few low-width index heads
// score every (query, key) pair, I_ts = sum_j w_tj ReLU(a_tj . b_s), and are trained by KL against
// the layer's attention summed over its heads. Here the indexer reads the layer's own queries and
// keys (all heads concatenated, x_t = [q_t^0 .. q_t^(H-1)], y_s likewise from k): a_tj = Wq_j x_t
// ([width]), b_s = Wk y_s ([width], shared by the index heads, as DSA's), w_tj = ww_j . x_t.
// A query block keeps the key blocks of most predicted mass: each row's softmax of its index scores
// summed per key block, the largest over the block's rows (the block maximum of the raw scores was
// tried first: an indexer that learns to push scores down leaves ties at 0 that it cannot break).
// Cost per layer: n^2 x index_heads x width (all pairs, as DSA: cheap only when index_heads x width is
// well below the attention's heads x head_dim), n^2 exponentials (half when causal), plus
// n H head_dim (index_heads + 1) width for the projections.
//
// Index: [SECTION] the indexer, [SECTION] examples and loss, [SECTION] training and masks
#pragma once

#include "engine/block_mask.hpp"
#include "engine/tensor.hpp"

#include <cstdint>
#include <vector>

namespace sparsa::learn {

// [SECTION] the indexer

struct Indexer {
    int64_t layers = 0, heads = 0, head_dim = 0;   // the teacher's attention it reads
    int64_t index_heads = 2, width = 8;
    int32_t block = 16;
    bool causal = true;
    // Per layer: wq [index_heads * width, in], wk [width, in], ww [index_heads, in]; in = heads * head_dim.
    std::vector<double> params;

    int64_t in() const { return heads * head_dim; }
    int64_t per_layer() const { return (index_heads * width + width + index_heads) * in(); }
    double* at(int64_t l) { return params.data() + l * per_layer(); }
    const double* at(int64_t l) const { return params.data() + l * per_layer(); }
};

// Normal noise of standard deviation 0.1 / sqrt(in) from `seed` (at 1 / sqrt(in) the first index
// scores of the teacher's q, k made a softmax so sharp that the first KL was 24 nats).
Indexer indexer_init(int64_t layers, int64_t heads, int64_t head_dim, int64_t index_heads, int64_t width, int32_t block, bool causal,
                     uint64_t seed);

// The index scores of one layer: [n, n] (-infinity after the query when causal). q, k: [1, heads, n, head_dim].
std::vector<double> indexer_scores(const Indexer& indexer, int64_t layer, const Tensor& q, const Tensor& k);

// [SECTION] examples and loss

// One input's layer for training: x, y ([n, in]), the query rows trained on and each row's target,
// the attention summed over heads (divided by heads), and its weight 1 - (the row's share on its own
// block) (rows that look outside the block always kept count most, as distill.hpp's row targets).
struct IndexerExample {
    int64_t n = 0, in = 0;
    std::vector<double> x, y;          // [n, in]
    std::vector<int64_t> rows;         // the query rows trained on
    std::vector<double> target;        // [rows, n]
    std::vector<double> weight;        // [rows]
};

// `rows` query rows drawn without replacement from `seed` (all rows when rows >= n), their targets
// from the dense softmax of every head.
IndexerExample indexer_example(const Tensor& q, const Tensor& k, int32_t block, bool causal, int64_t rows, uint64_t seed);

// sum_rows weight KL(target || softmax of the row's index scores) / sum weight, of one layer; adds
// its gradient times `scale` to grad ([per_layer()]) when non-null.
double indexer_loss(const Indexer& indexer, int64_t layer, const IndexerExample& example, double* grad, double scale = 1.0);

// [SECTION] training and masks

struct IndexerTrainOptions {
    int64_t steps = 200;
    double lr = 1e-2;
    int64_t eval_every = 20;
    int64_t patience = 4;
};
struct IndexerTrainReport {
    double first_train = 0, last_train = 0, first_validation = 0, best_validation = 0;
    int64_t steps = 0;
};
// Adam on each layer (in parallel), full batch over `train` ([inputs][layers]), keeping the
// parameters of the best KL on `validation`.
IndexerTrainReport indexer_train(Indexer& indexer, const std::vector<std::vector<IndexerExample>>& train,
                                 const std::vector<std::vector<IndexerExample>>& validation, const IndexerTrainOptions& options);

// The top `keep` key blocks per query block by predicted mass (above), the diagonal always kept; causal: blocks c <= r only. The same mask for every head (one indexer per
// layer). A one-layer MaskSet [1, heads].
MaskSet indexer_masks(const Indexer& indexer, int64_t layer, const Tensor& q, const Tensor& k, int64_t keep);

} // namespace sparsa::learn
