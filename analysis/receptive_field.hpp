// Receptive fields across layers: which keys each query has seen after each layer (residual
// connections), computed exactly by frontier expansion over a MaskSet (DESIGN.md, "Receptive fields").
//
// Index
//   [SECTION] semantics     what "query q has seen key k after layer l" means, as matrix products
//   [SECTION] one token     the field of one query (in) or one key (out), layer by layer
//   [SECTION] all pairs     coverage per layer, layers needed, pairs out of reach, the warning
//   [SECTION] reference     brute-force boolean matrix products, for tests
#pragma once

#include "engine/block_mask.hpp"
#include "analysis/reach_graph.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace sparsa {

// [SECTION] semantics
//
// Layer l (1-based) lets query q read position j when some head of the layer allows (q, j):
// A_l = OR over the layer's heads of their masks, A_l[q][j] = 1 when q may attend j. With the
// residual connection, q also keeps its own state, so one layer is the relation M_l = I | A_l.
// After l layers, q has seen k when a chain q = x_l, x_{l-1}, ..., x_0 = k has M_i[x_i][x_{i-1}]
// for every i (x_i is the position whose state carried the information after layer i):
//
//     R_0 = I,    R_l = M_l * R_{l-1} = M_l * M_{l-1} * ... * M_1     (boolean products)
//
// R_l[q][k] = 1 when query q has seen key k after layer l. The newest layer multiplies on the
// LEFT: at layer l, q reads x_{l-1}, whose state already holds what x_{l-1} read below. (For
// n = 3, "1 attends 0" in layer 1 then "2 attends 1" in layer 2 lets 2 see 0; the other order
// does not. The tests check this case.)
//
//   direction in:  row q of R_l, the keys output q has seen. Row q of R_l is row q of M_l times
//                  R_{l-1}: a chain from layer l down to layer 1, so each l is its own chain
//                  (l steps; one step per layer when every layer is the same graph).
//   direction out: column k of R_l, the queries input k has spread to: column k of R_l is M_l
//                  times column k of R_{l-1}, one step per layer over the transpose A_l^T.
//
// The layers as graphs (A_l, A_l^T) and the bitsets of positions are in reach_graph.hpp.

enum class ReachDirection { in, out };
const char* reach_direction_name(ReachDirection direction);  // "in", "out"

// [SECTION] one token

struct TokenReach {
    int64_t token = 0;
    ReachDirection direction = ReachDirection::in;
    std::vector<int64_t> sizes;  // [layers + 1]: sizes[0] = 1, sizes[l] = field size after layer l
    int64_t layers_to_all = -1;  // first l with sizes[l] == n; -1 when not within the layers
    std::vector<std::vector<uint64_t>> sets;  // [layers + 1][ceil(n / 64)] bitsets, when kept
};

// The field of `token` after each layer of `graph`: direction in, the keys query `token` has
// seen (row of R_l); direction out, the queries that have seen key `token` (column of R_l).
// Work per step grows with the kept blocks the set touches, never with n^2. `keep_sets` keeps
// every set (n / 8 bytes each). Throws sparsa::Error for a token outside [0, n).
TokenReach receptive_field_token(const ReachGraph& graph, int64_t token, ReachDirection direction,
                                 bool keep_sets = false);

// [SECTION] all pairs
//
// Token resolution is exact: one node per token, rows of R_l as bitsets (n * n / 8 bytes, so it
// is meant for n up to about 8192). Block resolution works on the block graph: one node per
// group of g consecutive blocks (g = 1 unless that gives more than max_nodes nodes), node a
// linked to node b in layer l when ANY kept block of layer l joins them, and every token pair
// of linked nodes counted as connected. It OVER-approximates: a partial block counts as if
// all its pairs were allowed (a segment boundary inside a block joins the segments), and a
// node sees all of itself from layer 0. So it never reports
// fewer connected pairs, or more layers needed, than token resolution; "out of reach" at block
// resolution is certain, "connected" is not.
//
// Causal mask sets (every mask keeps only k <= q) can never connect k > q; for them "every
// pair" means every pair with k <= q, n (n + 1) / 2 of them.

enum class ReachResolution { token, block };
const char* reach_resolution_name(ReachResolution resolution);  // "token", "block"

// Above this n, the automatic choice is block resolution.
constexpr int64_t kReachTokenMaxN = 8192;
ReachResolution reach_resolution_auto(int64_t n);

struct ReachOptions {
    ReachResolution resolution = ReachResolution::token;
    int64_t max_nodes = 8192;   // block resolution: at most this many nodes (R takes nodes^2 / 8 bytes)
    int threads = 0;            // 0: thread_count()
    // Stop after this many layers (at least the set's) even if pairs still connect; 0: run until
    // every pair connects or nothing more ever does (at most layers + nodes layers).
    int64_t max_layers = 0;
    // Token resolution only: called after each of the set's layers l = 1..layers with R_l.
    // rows: [n, words] bitsets, words = ceil(n / 64); bit k of row q set when q has seen k.
    std::function<void(int64_t layer, const std::vector<uint64_t>& rows, int64_t words)> on_layer;
};

struct ReachCoverage {
    ReachResolution resolution = ReachResolution::token;
    int64_t n = 0;
    int64_t layers = 0;         // the set's layers; past them the last layer repeats
    int64_t nodes = 0;          // n, or the block graph's nodes
    int64_t node_tokens = 1;    // tokens per node: 1, or g * B (the last node may be shorter)
    bool causal = false;        // every mask keeps only k <= q
    int64_t target_pairs = 0;   // n * n, or n (n + 1) / 2 when causal
    // [computed + 1]: pairs connected after layer l (l = 0: before any layer). Runs at least to
    // `layers`, and on (repeating the last layer) until every pair is connected or nothing more
    // ever is: the last entry is what any depth connects (unless `stopped`).
    std::vector<int64_t> connected;
    int64_t layers_needed = -1; // first l with connected[l] == target_pairs; -1: never (or stopped)
    int64_t saturation_layers = 0;  // first l with connected[l] == connected.back(): deeper adds nothing
    bool stopped = false;       // max_layers ended the run while pairs still connected: the
                                // layers needed are more than connected.size() - 1
    int64_t out_of_reach = 0;   // target_pairs - connected[layers]
    int64_t never_pairs = 0;    // pairs no depth connects (0 when layers_needed >= 0)
    std::string never_reason;   // why, when layers_needed < 0: a pair no chain links (an
                                // example), queries that attend nobody else, keys nobody attends
    double fraction(int64_t layer) const;  // connected[min(layer, last)] / target_pairs
};

// Coverage of all pairs after each layer (see ReachCoverage). Time per layer grows with the
// pairs kept times the new pairs they carry (semi-naive: a layer that repeats the previous one
// only forwards what the previous one added). Throws sparsa::Error for n > 2^31.
ReachCoverage receptive_field_coverage(const MaskSet& set, const ReachOptions& options = {});

// The compiler's warning "some query cannot reach some key within `layers` layers". It fires
// when more layers would connect pairs still out of reach after the set's layers (the layers
// are too few), not for pairs that no depth connects (separate documents, a prefix LM's
// causal part): `sparsa reach` reports those, and the message names them when it fires.
struct ReachWarning {
    bool warn = false;          // connected[layers] < connected.back()
    std::string message;        // "some query cannot reach some key within 24 layers: ..."
    std::string hint;           // what to change
    ReachCoverage coverage;
};
// Token resolution when n <= kReachTokenMaxN, block resolution above (the message says which;
// the pairs it says are out of reach after `layers` are so at token resolution too, and the
// layers it says are needed are a lower bound). To stay quick it runs at most layers +
// max(layers, 512) layers, and past that says "more than ... layers would be needed".
ReachWarning receptive_field_unreached(const MaskSet& set, int threads = 0);

// [SECTION] reference

// Brute force: R_0 = I, R_l = (I | A_l) * R_{l-1} as dense boolean matrix products, with
// the last layer repeating past the set's layers. Returns [layers + 1][n * n] bytes,
// ref[l][q * n + k] = 1 when q has seen k after layer l. For tests: O(layers * n^3).
std::vector<std::vector<uint8_t>> receptive_field_reference(const MaskSet& set, int64_t layers);

} // namespace sparsa
