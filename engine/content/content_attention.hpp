// Attention for a layer whose heads may be content-based (lsh, anchors) on the CPU: the exact
// softmax over each head's allowed set A = its fixed mask's pairs | the pairs its buckets give,
// computed as passes (the fixed mask in token order, then one banded pass per round in sorted
// order) merged by log-sum-exp with Reformer's duplicate correction. Issue 14's spec and
// docs/pattern-language.md define A; this file computes it forward and backward, and reports
// per input what the buckets did (sizes, pairs, density, recall).
//
// Pass and merge. For query q and key k, count(q, k) = the passes that hold the pair (the fixed
// pass counts once, each round once). Each pass runs the block-sparse softmax over its own pairs
// with every logit s(q, k) - log count(q, k), giving (o_p, lse_p); the merged
//     lse = log sum_p exp(lse_p),   o = sum_p exp(lse_p - lse) o_p
// is then the exact softmax over the union, each pair's exp(s) counted count times with weight
// 1 / count. The backward runs each pass with P_p = exp(s - log count - lse) (the merged lse),
// dS_p = P_p (dP - D), D = rowsum(dO * o) of the merged o; the passes' gradients add up to the
// exact gradient. Heads without a spec run the block-sparse engine (cpu_attention.hpp) as before.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/content/content_arrays.hpp"
#include "engine/content/buckets.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/tensor.hpp"

#include <cstdint>
#include <vector>

namespace sparsa {

struct ContentOptions {
    float scale = 0;                        // softmax scale, any finite value; 0: 1 / sqrt(d)
    int threads = 0;                        // 0: thread_count(); negative throws
    const ContentArrays* arrays = nullptr;  // the files the specs name (io/content_files.hpp)
    bool recall = false;                    // forward: also compute each report's recall (slow: O(n^2 d) a head)
    // Buckets another engine drew for this layer (the GPU's, buckets.hpp ContentBuckets), used
    // instead of hashing: reports, allowed sets and the reference then follow that engine's walk.
    const ContentBuckets* buckets = nullptr;
    // Tests only: false drops the -log(count) correction, so that a pair met in several passes
    // counts several times (what the correction is for; the result is then not attention over A).
    bool duplicate_correction = true;
};

// What the buckets of one (batch, head) did on this input. Heads without a content spec are
// not reported.
struct ContentReport {
    int64_t batch = 0, head = 0;
    ContentKind kind = ContentKind::lsh;
    int64_t buckets = 0, rounds = 0, chunk = 0;
    // Tokens per bucket over every round (and the keys' buckets too when shared_qk is false):
    // smallest, largest, and imbalance = largest / mean (mean = n / buckets).
    int64_t bucket_min = 0, bucket_max = 0;
    double imbalance = 0;
    int64_t pairs = 0;        // |A|: allowed (query, key) pairs, the fixed mask's included
    double density = 0;       // pairs / n^2
    int64_t empty_rows = 0;   // queries with no key at all (o = 0, lse = -inf)
    // With ContentOptions::recall: the share of the exact softmax's mass (dense, or causal dense
    // under `causal`) that A holds, per row in double: mean over rows and the smallest row. NaN
    // when not computed.
    double recall_mean = 0, recall_min = 0;
};

// Wall-clock seconds of each phase, over all heads of the call.
struct ContentTimes {
    double hashing = 0;    // x R and argmax (lsh), cosines and balanced assignment (anchors)
    double sorting = 0;    // counting sorts, chunks, which queries fall back to themselves
    double gathering = 0;  // Q, K, V into sorted order, and the merge scattered back
    double attention = 0;  // the passes' block-sparse attention, and the heads without a spec
};

struct ContentForward {
    Tensor o;     // [batch, heads, n, d]
    Tensor lse;   // [batch, heads, n, 1]; -inf for a query with no key
    std::vector<ContentReport> reports;   // one per (batch, content head), batch-major
    ContentTimes times;
};

// Attention of layer `layer` of `masks`; heads whose masks.content spec is lsh or anchors
// attend to A (above), the others to their mask. Results are the same for any thread count.
// Memory: the outputs plus about four times q's size (the sorted copies of one round).
// q, k, v: [batch, heads, n, d]. Throws sparsa::Error as attention_forward does (shapes, NaN or
// Inf, scores beyond float32), and for a favor head (favor.hpp runs those), a bad spec (odd or
// too many buckets, naming n), a spec file missing from options.arrays or of the wrong shape.
ContentForward content_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks,
                                         int64_t layer, const ContentOptions& options = {});

// The gradients of sum(d_o * o), from the forward's o and lse (buckets recomputed from q and k,
// the same as the forward's). Throws as attention_backward does, including when P summed over
// the passes is not 1 in some row (an lse that is not the forward's).
AttentionGrads content_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                          const Tensor& lse, const Tensor& d_o, const MaskSet& masks, int64_t layer,
                                          const ContentOptions& options = {});

// The allowed set A of (batch b, head h) at token level: [n, n] bytes, [q * n + k] = 1 when
// query q attends to key k (a head without a spec: its fixed mask). For tests and `--check`
// (the dense reference over A); n up to 32768 (n^2 bytes). q, k: [batch, heads, n, d].
std::vector<uint8_t> content_allowed_dense(const Tensor& q, const Tensor& k, const MaskSet& masks, int64_t layer,
                                           int64_t b, int64_t h, const ContentOptions& options = {});

// The reports alone (no attention): bucket sizes, pairs, density, and recall when
// options.recall. One per (batch, content head), batch-major.
std::vector<ContentReport> content_report(const Tensor& q, const Tensor& k, const MaskSet& masks, int64_t layer,
                                          const ContentOptions& options = {});

} // namespace sparsa
