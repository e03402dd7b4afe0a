// Teacher attention pooled per block, without n x n storage: for each (layer, head) the attention
// mass of every (query block, key block) and its largest single probability, on held-out inputs.
// Also reads Q and K dumped from any other model (.npy, [heads, n, d] per layer).
#pragma once

#include "engine/block_mask.hpp"
#include "engine/tensor.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa::learn {

// Block-pooled attention of one input or an average over inputs.
struct PooledAttention {
    int64_t layers = 0, heads = 0, n = 0;
    int32_t block = 16;
    int64_t inputs = 0;          // inputs averaged
    std::vector<double> sum;     // [layers, heads, blocks, blocks]: sum of P over the block's pairs
    std::vector<double> max;     // [layers, heads, blocks, blocks]: largest P in the block (mean over inputs)
    std::vector<double> row_max; // [layers, heads, blocks, blocks]: the largest share one query row of the
                                 //   block puts in the key block (mean over inputs): the exact-score
                                 //   selector's rule (select_exact)

    int64_t blocks() const { return (n + block - 1) / block; }
    int64_t index(int64_t l, int64_t h, int64_t qb, int64_t kb) const {
        return ((l * heads + h) * blocks() + qb) * blocks() + kb;
    }
    // Share of the attention of query block qb that falls in key block kb (rows of the block sum
    // to 1 over kb): the gate's target distribution.
    double row_share(int64_t l, int64_t h, int64_t qb, int64_t kb) const;
    // row_max of (qb, kb) over its sum for every kb of the block row: a distribution over kb in
    // which a key block that one row attends to weighs as much as one every row attends to.
    double row_max_share(int64_t l, int64_t h, int64_t qb, int64_t kb) const;
};

PooledAttention pooled_zeros(int64_t layers, int64_t heads, int64_t n, int32_t block);

// Adds one input's layer `layer` to `pooled` (sums; call pooled_finish after the last input).
// P = softmax(scale * q k^T) row by row in double (keys after the query are left out when
// `causal`). q, k: [1, heads, n, d]; scale 0: 1 / sqrt(d).
void pooled_add_layer(PooledAttention& pooled, int64_t layer, const Tensor& q, const Tensor& k, bool causal = false,
                      double scale = 0);

// Divides sums and maxima by the inputs added: pooled.inputs becomes `inputs`.
void pooled_finish(PooledAttention& pooled, int64_t inputs);

// Share of attention kept by a block-level choice, averaged over the query rows of one
// (layer, head): sum over kept (qb, kb) of pooled.sum / n. Exact for masks of full blocks.
double pooled_recall(const PooledAttention& pooled, int64_t layer, int64_t head, const BlockMask& mask);

// Q and K of another model: q_paths[l], k_paths[l] are .npy float32 (or float64) arrays
// [heads, n, d], one pair per layer, all with the same shape. Returns q and k per layer as
// [1, heads, n, d]. Throws sparsa::Error naming the file for a bad dtype or shape.
struct QkDump {
    std::vector<Tensor> q, k;   // [layers] of [1, heads, n, d]
};
QkDump qk_dump_load(const std::vector<std::string>& q_paths, const std::vector<std::string>& k_paths);

} // namespace sparsa::learn
