// The hops matrix from the receptive-field analysis (token resolution) or a block graph.
#include "viz/hops.hpp"

#include "engine/error.hpp"
#include "analysis/reach_graph.hpp"
#include "analysis/receptive_field.hpp"

#include <algorithm>

namespace sparsa::viz {

HopsMatrix hops_compute(const MaskSet& set, int64_t max_nodes) {
    if (max_nodes < 1) throw Error("hops: max_nodes must be at least 1; got " + std::to_string(max_nodes));
    if (set.layers > 32767) throw Error("hops: " + std::to_string(set.layers) + " layers is more than the 32767 the hops view counts");
    HopsMatrix hops;
    hops.n = set.n;
    hops.layers = set.layers;

    if (set.n <= max_nodes) {
        // Token resolution: R_l rows from the analysis itself, the first l that sets each bit.
        hops.nodes = set.n;
        hops.first.assign(static_cast<size_t>(set.n * set.n), -1);
        for (int64_t q = 0; q < set.n; ++q) hops.first[q * set.n + q] = 0;
        ReachOptions options;
        options.resolution = ReachResolution::token;
        options.max_layers = set.layers;
        options.on_layer = [&](int64_t layer, const std::vector<uint64_t>& rows, int64_t words) {
            for (int64_t q = 0; q < set.n; ++q) {
                const uint64_t* row = rows.data() + q * words;
                int16_t* out = hops.first.data() + q * set.n;
                for (int64_t k = 0; k < set.n; ++k) {
                    if (out[k] < 0 && bits_test(row, k)) out[k] = static_cast<int16_t>(layer);
                }
            }
        };
        receptive_field_coverage(set, options);
        return hops;
    }

    // Block resolution: nodes of `group` blocks; R_l[a] = R_{l-1}[a] | OR of R_{l-1}[b] over
    // the nodes b that node a reads in layer l (block graph of the union of the layer's heads).
    const int64_t q_blocks = (set.n + set.block - 1) / set.block;
    const int64_t group = (q_blocks + max_nodes - 1) / max_nodes;
    const int64_t nodes = (q_blocks + group - 1) / group;
    hops.exact = false;
    hops.nodes = nodes;
    hops.node_tokens = group * set.block;
    hops.first.assign(static_cast<size_t>(nodes * nodes), -1);
    const int64_t words = (nodes + 63) / 64;
    std::vector<uint64_t> reach(static_cast<size_t>(nodes * words), 0), next;
    for (int64_t a = 0; a < nodes; ++a) {
        bits_set(reach.data() + a * words, a);
        hops.first[a * nodes + a] = 0;
    }
    std::vector<std::vector<const BlockMask*>> heads = mask_set_layer_heads(set);
    std::vector<uint8_t> row(static_cast<size_t>(nodes));
    for (int64_t l = 0; l < set.layers; ++l) {
        BlockMask graph = block_graph_make(heads[static_cast<size_t>(l)], group);
        next = reach;
        for (int64_t a = 0; a < nodes; ++a) {
            block_mask_dense_row(graph, a, row.data());
            uint64_t* into = next.data() + a * words;
            for (int64_t b = 0; b < nodes; ++b) {
                if (!row[static_cast<size_t>(b)]) continue;
                const uint64_t* from = reach.data() + b * words;
                for (int64_t w = 0; w < words; ++w) into[w] |= from[w];
            }
            int16_t* out = hops.first.data() + a * nodes;
            for (int64_t b = 0; b < nodes; ++b) {
                if (out[b] < 0 && bits_test(into, b)) out[b] = static_cast<int16_t>(l + 1);
            }
        }
        reach.swap(next);
    }
    return hops;
}

} // namespace sparsa::viz
