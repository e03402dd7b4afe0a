// The hops matrix: for every (query, key), the first layer after which the query has seen the
// key (receptive_field.hpp's R_l), at token resolution for small n and block resolution above.
#pragma once

#include "engine/block_mask.hpp"

#include <cstdint>
#include <vector>

namespace sparsa::viz {

struct HopsMatrix {
    int64_t n = 0;
    int64_t layers = 0;        // the set's layers
    int64_t nodes = 0;         // n (token resolution) or ceil(q_blocks / group)
    int64_t node_tokens = 1;   // 1, or group * B
    bool exact = true;         // token resolution; block resolution over-approximates as
                               // receptive_field.hpp's block graph does (a partial block
                               // counts as if all its pairs were kept)
    std::vector<int16_t> first;  // [nodes, nodes]: first[a * nodes + b] = first layer l in
                                 // 0..layers with query node a reaching key node b, -1 if none

    int64_t at(int64_t q_node, int64_t k_node) const { return first[q_node * nodes + k_node]; }
};

// Token resolution when n <= max_nodes, else block resolution with ceil(q_blocks / max_nodes)
// blocks per node. Work per layer: nodes^2 / 64 words plus the kept blocks (token resolution
// runs receptive_field_coverage and reads R_l after each layer). Throws sparsa::Error for
// max_nodes < 1 or more than 32767 layers.
HopsMatrix hops_compute(const MaskSet& set, int64_t max_nodes = 1024);

} // namespace sparsa::viz
