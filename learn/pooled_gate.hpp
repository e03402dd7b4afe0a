// A trained SeerAttention-style pooled gate: per (layer, head), the mean query and the mean key of
// each block through small linear maps (wq, wk: [head_dim, width]) score every (query block, key
// block) pair; a softmax over each row of block scores is trained with KL against the teacher's
// block-pooled attention on training-stream inputs, stopping early on validation-stream inputs.
// Selection scores blocks x blocks pairs only, never a (query, key) pair: cost n head_dim (pooling)
// + 2 blocks head_dim width (maps) + blocks^2 width (scores) per head.
//
// Index: [SECTION] the gate, [SECTION] examples and loss, [SECTION] training, [SECTION] masks and files
#pragma once

#include "engine/block_mask.hpp"
#include "engine/tensor.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa::learn {

// [SECTION] the gate

struct PooledGate {
    int64_t layers = 0, heads = 0, head_dim = 0, width = 32;
    int32_t block = 16;
    bool causal = true;           // rows score only key blocks c <= r (and the targets leave out keys after the query)
    std::vector<double> params;   // [layers, heads, wq [head_dim, width] then wk [head_dim, width]]

    int64_t per_head() const { return 2 * head_dim * width; }
    double* at(int64_t l, int64_t h) { return params.data() + (l * heads + h) * per_head(); }
    const double* at(int64_t l, int64_t h) const { return params.data() + (l * heads + h) * per_head(); }
};

// wq, wk: normal noise of standard deviation 1 / sqrt(head_dim) from `seed`.
PooledGate pooled_gate_init(int64_t layers, int64_t heads, int64_t head_dim, int64_t width, int32_t block, bool causal, uint64_t seed);

// [SECTION] examples and loss

// What the gate sees of one input's layer, every head: the block means of q and k, and (when the
// target was asked for) the teacher's attention pooled per block, each row normalised to 1.
struct PooledGateExample {
    int64_t heads = 0, blocks = 0, head_dim = 0;
    std::vector<double> q_mean, k_mean;   // [heads, blocks, head_dim]
    std::vector<double> target;           // [heads, blocks, blocks] or empty
};

// q, k: [1, heads, n, head_dim] (one input, one layer). with_target: the dense softmax(q k^T /
// sqrt(d)) pooled per block (keys after the query left out when causal): n^2 head_dim per head;
// max_target: each key block's largest row share (PooledAttention::row_max_share, the exact
// selector's rule) instead of its mass.
PooledGateExample pooled_gate_example(const Tensor& q, const Tensor& k, int32_t block, bool causal, bool with_target,
                                      bool max_target = false);

// The gate's block scores of one (layer, head): [blocks, blocks] logits a_r . b_c / sqrt(width)
// (a = mean(Q_r) wq, b = mean(K_c) wk); -infinity above the diagonal when causal.
std::vector<double> pooled_gate_scores(const PooledGate& gate, int64_t layer, int64_t head, const PooledGateExample& example);

// KL(target || softmax of the scores), summed over the block rows and divided by their count, of
// one (layer, head); adds its gradient times `scale` to grad ([per_head()]) when non-null.
double pooled_gate_loss(const PooledGate& gate, int64_t layer, int64_t head, const PooledGateExample& example, double* grad,
                        double scale = 1.0);

// The loss averaged over inputs, layers and heads. examples: [inputs][layers], with targets.
double pooled_gate_kl(const PooledGate& gate, const std::vector<std::vector<PooledGateExample>>& examples);

// [SECTION] training

struct PooledGateTrainOptions {
    int64_t steps = 400;        // Adam steps at most, each over every training input (full batch)
    double lr = 1e-2;
    int64_t eval_every = 20;    // validation KL every so many steps; the best parameters are kept
    int64_t patience = 5;       // stop after so many validation measurements without a better KL
};
struct PooledGateTrainReport {
    double first_train = 0, last_train = 0;        // training KL at the first and last step
    double first_validation = 0, best_validation = 0;
    int64_t steps = 0, best_step = 0;
};
// Each (layer, head) on its own (in parallel), on `train` with early stopping on `validation`
// (both [inputs][layers], with targets). Deterministic for any thread count.
PooledGateTrainReport pooled_gate_train(PooledGate& gate, const std::vector<std::vector<PooledGateExample>>& train,
                                        const std::vector<std::vector<PooledGateExample>>& validation, const PooledGateTrainOptions& options);

// [SECTION] masks and files

// The top `keep` key blocks per query block by the gate's scores, the diagonal always kept (and
// counted); causal: only blocks c <= r. q, k: [1, heads, n, head_dim]. A one-layer MaskSet.
MaskSet pooled_gate_masks(const PooledGate& gate, int64_t layer, const Tensor& q, const Tensor& k, int64_t keep);

// JSON, saved atomically; load refuses a file of another kind or inconsistent sizes, naming it.
void pooled_gate_save(const PooledGate& gate, const std::string& path);
PooledGate pooled_gate_load(const std::string& path);

} // namespace sparsa::learn
