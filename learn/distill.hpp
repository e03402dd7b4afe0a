// Distillation: masks from a dense teacher's attention. The oracle (true top blocks per row),
// search (the cheapest pattern of the language's families per (layer, head), written as a .pat
// script), a learned block gate (SeerAttention-style), and the fixed Longformer / BigBird
// baselines of the prelude sized to a density.
//
// Index: [SECTION] block choices, [SECTION] oracle, [SECTION] recall through the engine,
//        [SECTION] search, [SECTION] gate, [SECTION] fixed baselines
#pragma once

#include "engine/block_mask.hpp"
#include "engine/tensor.hpp"
#include "learn/pool.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sparsa::learn {

// [SECTION] block choices

// Key blocks each query block keeps at a block density: round(density * blocks), 1 to blocks.
int64_t blocks_per_row(double density, int64_t blocks);

// The canonical mask keeping, for each query block r, the (all full) key blocks rows[r].
BlockMask block_mask_from_rows(int64_t n, int32_t block, const std::vector<std::vector<int32_t>>& rows);

// Each row's `keep` blocks of highest score (ties: the lower key block), plus the diagonal block
// when keep_diagonal (it then counts among the `keep`). scores: [blocks, blocks]. causal: only
// key blocks c <= r are candidates (row r keeps at most r + 1).
BlockMask block_mask_top_k(int64_t n, int32_t block, const std::vector<double>& scores, int64_t keep, bool keep_diagonal,
                           bool causal = false);

// Each row's fewest blocks of highest score whose share of the row's total reaches `share`
// (scores >= 0), plus the diagonal when keep_diagonal. scores: [blocks, blocks].
BlockMask block_mask_top_share(int64_t n, int32_t block, const std::vector<double>& scores, double share, bool keep_diagonal);

// Kept blocks / blocks^2 over a MaskSet's (layer, head) masks (the engine's work is proportional).
double mask_set_block_density(const MaskSet& set);

// [SECTION] oracle

// The oracle of one input: for every (layer, head), each query block keeps its `keep` key blocks
// of most attention mass in `pooled` (which holds that one input).
MaskSet oracle_masks(const PooledAttention& pooled, int64_t keep, bool causal = false);

// [SECTION] recall through the engine

// Exact share of attention mass each head keeps under `masks` (layer `layer`), averaged over
// the query rows: mean_i exp(lse_mask_i - lse_dense_i), from the engine's log-sum-exp (partial
// blocks count exactly). q, k: [1, heads, n, d]; dense_lse: [1, heads, n, 1]. Returns [heads].
std::vector<double> mask_recall(const Tensor& q, const Tensor& k, const Tensor& dense_lse, const MaskSet& masks, int64_t layer);

// The dense (or causal) log-sum-exp of q, k (the engine with a dense or causal mask): [1, heads, n, 1].
Tensor dense_lse(const Tensor& q, const Tensor& k, int32_t block, bool causal = false);

// Attention inputs of several inputs, one layer each: what search and the gate learn from.
struct AttentionSample {
    std::vector<std::vector<Tensor>> q, k, lse;   // [inputs][layers] of [1, heads, n, d] (lse: d = 1, dense)
    bool causal = false;                          // a causal teacher's: every key after its query is left out
    int64_t layers() const { return q.empty() ? 0 : static_cast<int64_t>(q[0].size()); }
    int64_t inputs() const { return static_cast<int64_t>(q.size()); }
};

// [SECTION] search

// The families searched, in block units b = B: window(w), sinks + window, dilated, strided,
// global + band, chunk, band, and dense, at a ladder of sizes.
struct SearchCandidate {
    std::string expression;                 // "columns(first(16)) | window(32)"
    std::shared_ptr<const BlockMask> mask;  // compiled at (n, block)
    double density = 0;                     // kept blocks / blocks^2
};
std::vector<SearchCandidate> search_candidates(int64_t n, int32_t block);

// recall[(c * layers + l) * heads + h]: candidate c's exact recall on (l, h), averaged over the
// sample's inputs.
struct SearchTable {
    std::vector<SearchCandidate> candidates;
    int64_t layers = 0, heads = 0, n = 0;
    int32_t block = 16;
    std::vector<double> recall;
    bool causal = false;   // recall of each candidate's causal part (the sample's)
    double at(int64_t c, int64_t l, int64_t h) const { return recall[(c * layers + l) * heads + h]; }
};
SearchTable search_table_build(const AttentionSample& sample, int32_t block, int threads = 0);
// The same table from recall measured elsewhere (sparsa.ruler measures it with the GPU engine):
// search_candidates(n, block) with recall [candidates * layers * heads] as SearchTable::recall.
// Throws Error when the count does not match.
SearchTable search_table_from_recall(int64_t n, int32_t block, int64_t layers, int64_t heads, bool causal, std::vector<double> recall);
// The masks candidate c is measured with: its mask in each of t.heads heads of one layer, cut to
// causal when t.causal.
MaskSet search_candidate_set(const SearchTable& t, int64_t c);

// A choice of one candidate per (layer, head).
struct SearchResult {
    std::vector<int64_t> choice;     // [layers * heads] candidate index
    std::vector<double> recall;      // [layers * heads]
    std::string script;              // the .pat text
    MaskSet masks;
};
// Per head the cheapest candidate (fewest blocks, then highest recall) whose recall reaches
// `share` (dense when none does).
SearchResult search_by_share(const SearchTable& table, double share);
// Per head the candidate of highest recall whose density is at most `density` (the cheapest
// when none is).
SearchResult search_by_density(const SearchTable& table, double density);

// Compiles an expression of the language for one (layer, head) shape: `attend = EXPR`.
std::shared_ptr<const BlockMask> expression_compile(const std::string& expression, int64_t n, int32_t block);

// Compiles a whole script text (e.g. SearchResult::script) to masks at (n, block).
MaskSet script_text_compile(const std::string& text, const std::string& name, int64_t n, int32_t block);

// [SECTION] gate

// A block gate per (layer, head), after SeerAttention: learned projections of the queries and the
// keys give block scores, and a softmax over each row of block scores predicts the teacher's
// attention per key block. Each side comes in several kinds.
// Query side (GateQuery):
// - block (SeerAttention's): each query block's features, the mean and max of its queries
//   ([2 * head_dim]), through wq: [2 * head_dim, hidden]: one vector a_I per query block, and
//   S_IJ = score(a_I, J);
// - rows: each query row through wq: [head_dim, hidden], scored against every key block,
//   t_iJ = score(a_i, J), pooled over the query block's rows by log-sum-exp:
//   S_IJ = log sum_{i in I} exp t_iJ. One row that needs a far block (an answer row among rows
//   that need nothing) then raises that block's score as much as it would alone, instead of a
//   sixteenth of it.
// Key side (GateKey):
// - pooled (SeerAttention's): each key block's mean and max of its keys through wk:
//   [2 * head_dim, hidden], b_J; score(a, J) = a . b_J / sqrt(hidden);
// - bounds (as Quest bounds q . k): each key through wk: [head_dim, hidden], and per key block
//   and unit the largest and smallest, hi_J and lo_J; score(a, J) = sum_u max(a_u hi_Ju, a_u lo_Ju)
//   / sqrt(hidden), an upper bound of max_{j in J} a . b_j / sqrt(hidden): a block holding one key
//   that matches scores as high as that key.
// - keys (a low-rank indexer, as DeepSeek's sparse attention scores tokens): each key through wk:
//   [head_dim, hidden], s_j = a . b_j / sqrt(hidden), and score(a, J) = log sum_{j in J} exp s_j,
//   so a softmax over the key blocks is the sum of a softmax over the keys: the block's predicted
//   share. Exact where the others summarise, at n x n x hidden per head: as much as q k^T when
//   hidden = head_dim (the default teacher's 16), a quarter of it at hidden 4.
// Cost per head: blocks^2 x hidden (block, pooled), n x blocks x hidden (rows with pooled or
// bounds), n x n x hidden (keys).
enum class GateQuery { block, rows };
enum class GateKey { pooled, bounds, keys };

struct BlockGate {
    int64_t layers = 0, heads = 0, head_dim = 0, hidden = 16;
    int32_t block = 16;
    GateQuery query = GateQuery::block;
    GateKey key = GateKey::pooled;
    // false: trained on block targets (KL between the block row's predicted and pooled teacher
    // distributions). true (query side rows only): each query row gets its own predicted
    // distribution over key blocks, softmax_J t_iJ, trained with KL against that row's own share
    // of attention per key block (the answer row's sharp target is no longer averaged away with
    // 15 others). A block row's prediction is then, per key block, the largest of its rows'
    // predicted shares, normalised over the row: top-k keeps the blocks some row needs most.
    bool row_targets = false;
    // Trained on a causal teacher (gate_train sets it from the sample): rows keep only key blocks
    // at or before their own, and the targets leave out every key after the query.
    bool causal = false;
    std::vector<double> params;   // [layers, heads, wq then wk]: wq [q_in(), hidden], wk [k_in(), hidden]

    int64_t q_in() const { return query == GateQuery::rows ? head_dim : 2 * head_dim; }
    int64_t k_in() const { return key == GateKey::pooled ? 2 * head_dim : head_dim; }
    int64_t per_head() const { return (q_in() + k_in()) * hidden; }
    double* at(int64_t l, int64_t h) { return params.data() + (l * heads + h) * per_head(); }
    const double* at(int64_t l, int64_t h) const { return params.data() + (l * heads + h) * per_head(); }
};

// "block" or "rows"; "pooled", "bounds" or "keys"; the parsers throw naming the accepted words.
std::string gate_query_name(GateQuery query);
GateQuery gate_query_parse(const std::string& text);
std::string gate_key_name(GateKey key);
GateKey gate_key_parse(const std::string& text);

BlockGate gate_init(int64_t layers, int64_t heads, int64_t head_dim, int64_t hidden, int32_t block, uint64_t seed,
                    GateQuery query = GateQuery::block, GateKey key = GateKey::pooled);

// Block features of one head: [blocks, 2 * head_dim] (mean, then max over the block's rows).
// x: [1, heads, n, head_dim].
std::vector<double> gate_features(const Tensor& x, int64_t head, int32_t block);

// The gate's predicted distribution of one (layer, head): [blocks, blocks], rows sum to 1.
std::vector<double> gate_predict(const BlockGate& gate, int64_t layer, int64_t head, const Tensor& q, const Tensor& k);

// KL(target || predicted), summed over rows and divided by the rows, for one (layer, head) of
// one input; adds its gradient (times `scale`) to grad ([per_head()]) when non-null.
// target: [blocks, blocks], rows summing to 1.
double gate_loss(const BlockGate& gate, int64_t layer, int64_t head, const Tensor& q, const Tensor& k,
                 const std::vector<double>& target, double* grad, double scale = 1.0);

// Each query row's share of attention per key block, one head: [n, blocks] (rows sum to 1);
// causal: keys after the query left out.
std::vector<double> row_block_shares(const Tensor& q, const Tensor& k, int64_t head, int32_t block, bool causal = false);

// The untrained identity gate (the exact-score selector): rows / keys / row targets with
// hidden = head_dim and wq = wk = I, so each key block's score is log sum_j exp(q_i . k_j / sqrt(d))
// over its keys, the teacher's own attention per block: it costs a dense q k^T.
BlockGate gate_identity(int64_t layers, int64_t heads, int64_t head_dim, int32_t block, bool causal);

// For a gate with row_targets: sum_i w_i KL(target_i || predicted_i) / sum_i w_i over the query
// rows i, w_i = max(1e-3, 1 - target_i(own block)): the rows looking outside the block the gate
// always keeps weigh most. target: [n, blocks] (row_block_shares). Gradient as gate_loss.
double gate_loss_rows(const BlockGate& gate, int64_t layer, int64_t head, const Tensor& q, const Tensor& k,
                      const std::vector<double>& target, double* grad, double scale = 1.0);

// Trains every (layer, head) with Adam on the sample (targets from its dense attention: block
// targets, or each row's own with BlockGate::row_targets).
struct GateTrainOptions {
    // For gates of block targets (BlockGate::row_targets false; a gate of row targets learns each
    // row's own shares and ignores this): the target of each block row is the block-pooled
    // teacher attention normalised over the row, pooled by sum (the share of attention mass) or by
    // max (the largest P of the block, as SeerAttention pools; it favours the one sharp row of a
    // block over many spread-out ones).
    bool max_pooled = false;
    int64_t steps = 300;
    double lr = 1e-2;
    bool progress = false;
};
struct GateTrainReport {
    double first_loss = 0, last_loss = 0;   // mean KL over all heads, first and last step
};
GateTrainReport gate_train(BlockGate& gate, const AttentionSample& sample, const GateTrainOptions& options);

// The gate's masks of one layer for this very input: top `keep` blocks per row, or, when
// share > 0, the fewest blocks whose predicted share reaches `share`; the diagonal block is
// always kept. q, k: [1, heads, n, head_dim]. Returns a one-layer MaskSet.
MaskSet gate_masks(const BlockGate& gate, int64_t layer, const Tensor& q, const Tensor& k, int64_t keep, double share = 0);

// Saves (atomically) and loads a gate as JSON; load refuses a foreign or inconsistent file.
void gate_save(const BlockGate& gate, const std::string& path);
BlockGate gate_load(const std::string& path);

// [SECTION] fixed baselines

// The prelude's longformer(w, g) or bigbird(r, g, blocks), with g = 0 or B global tokens, sized so
// that its block density is the largest at most `density` (the smallest size when none fits). name: "longformer" or
// "bigbird". Returns the expression.
std::string baseline_expression(const std::string& name, double density, int64_t n, int32_t block);

} // namespace sparsa::learn
