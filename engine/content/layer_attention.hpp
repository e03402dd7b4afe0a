// One layer of attention whatever its heads are: the one entry point `sparsa run` and Python
// call. Heads without a content spec run the block-sparse engine (cpu_attention.hpp), lsh and
// anchors heads the exact softmax over their allowed set A (content_attention.hpp), favor heads
// FAVOR+ (favor.hpp); a layer that mixes them is split by head and reassembled, and each
// (batch, head) gets one report of what its family did on this input.
//
// Head indices stay the layer's own: lsh rotations and FAVOR+ features are drawn from
// (seed, layer, head, ...), so a head is never renumbered when the layer is split. A layer with
// no content head runs exactly attention_forward / attention_backward.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/content/content_arrays.hpp"
#include "engine/content/content_attention.hpp"
#include "engine/content/favor.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/tensor.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

struct LayerOptions {
    float scale = 0;                        // softmax scale, any finite value; 0: 1 / sqrt(d)
    int threads = 0;                        // 0: thread_count(); negative throws
    const ContentArrays* arrays = nullptr;  // the files the specs name (io/content_files.hpp content_files_load)
    bool recall = false;                    // forward and layer_report: recall of lsh and anchors heads (O(n^2 d) a head)
    int64_t favor_draw = 0;                 // favor heads: the caller's count of feature redraws (0 when redraw is 0)
    const ContentBuckets* buckets = nullptr;  // lsh, anchors heads: buckets another engine drew (ContentOptions::buckets)
};

// Which family ran a head.
enum class LayerHeadKind : int32_t { fixed = 0, lsh = 1, anchors = 2, favor = 3 };

// "fixed", "lsh", "anchors", "favor".
const char* layer_head_kind_name(LayerHeadKind kind);

// What one (batch, head) did on this input.
struct LayerHeadReport {
    int64_t batch = 0, head = 0;
    LayerHeadKind kind = LayerHeadKind::fixed;
    // fixed, lsh, anchors: pairs, density, empty rows (fixed: its mask's counts); lsh and
    // anchors: bucket sizes and, with LayerOptions::recall, recall (content_attention.hpp's
    // ContentReport; recall NaN when not computed, and for fixed heads). favor: unused.
    ContentReport pairs;
    // favor: the feature count and this (batch, head)'s degraded rows, large norms and predicted
    // error (favor.hpp), and favor_report_warning's line ("" when nothing degraded).
    int64_t features = 0;
    FavorReport favor;
    std::string warning;
};

// Wall-clock seconds of each phase over the whole call.
struct LayerTimes {
    ContentTimes content;   // lsh and anchors: hashing, sorting, gathering; attention (fixed heads too)
    double favor = 0;       // favor heads: features and FAVOR+ (forward or backward)
};

struct LayerForward {
    Tensor o;     // [batch, heads, n, d]
    // [batch, heads, n, 1]: log sum exp of the allowed scores (-inf for a row with no key); NaN
    // on favor heads (FAVOR+ estimates O without the softmax's normaliser; the backward does not read it).
    Tensor lse;
    std::vector<LayerHeadReport> reports;   // one per (batch, head), batch-major
    LayerTimes times;
};

// Attention of layer `layer` of `masks` over every head. Results are the same for any thread
// count. q, k, v: [batch, heads, n, d]. Throws sparsa::Error as attention_forward,
// content_attention_forward and favor_forward do (shapes, NaN or Inf, scores beyond float32, a
// bad spec naming n, a spec file missing from options.arrays or of the wrong shape).
LayerForward layer_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks,
                                     int64_t layer, const LayerOptions& options = {});

struct LayerGrads {
    Tensor dq, dk, dv;                       // each [batch, heads, n, d]
    std::vector<LayerHeadReport> favor;      // the favor heads' recomputed forward reports, batch-major
    LayerTimes times;
};

// The gradients of sum(d_o * o) for o = layer_attention_forward(...).o: content_attention_backward
// or attention_backward for the heads with pairs (from the forward's o and lse), favor_backward
// for favor heads (which recomputes its forward and reads neither o nor lse there).
// q, k, v, o, d_o: [batch, heads, n, d]; lse: [batch, heads, n, 1]. Throws as those do.
LayerGrads layer_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                    const Tensor& lse, const Tensor& d_o, const MaskSet& masks, int64_t layer,
                                    const LayerOptions& options = {});

// The reports alone, without attention: bucket sizes, pairs, density (recall with
// options.recall) of lsh and anchors heads, the fixed heads' mask counts, and favor heads'
// reports from a FAVOR+ forward with V = 0 (its denominators, what degrades, do not depend on V).
// q, k: [batch, heads, n, d]. One per (batch, head), batch-major.
std::vector<LayerHeadReport> layer_report(const Tensor& q, const Tensor& k, const MaskSet& masks, int64_t layer,
                                          const LayerOptions& options = {});

// Whether layer `layer` has a head of `kind` (fixed: a head without a spec).
bool layer_has(const MaskSet& masks, int64_t layer, LayerHeadKind kind);

// The kind of head (layer, h).
LayerHeadKind layer_head_kind(const MaskSet& masks, int64_t layer, int64_t h);

// The pairs (batch b, head h) of layer `layer` attends to on this input, as content_allowed_dense
// gives them ([n, n] bytes, [q * n + k] = 1 when query q attends to key k; n up to 32768), in a
// layer that may have favor heads too. Throws sparsa::Error for a favor head (it has no pairs).
std::vector<uint8_t> layer_allowed_dense(const Tensor& q, const Tensor& k, const MaskSet& masks, int64_t layer, int64_t b,
                                         int64_t h, const LayerOptions& options = {});

// The masks of the dense reference that checks batch b of this input, one layer of `heads`
// heads of blocks of masks.block: the token-level allowed set (content_allowed_dense) of lsh and anchors heads, the fixed mask of fixed heads,
// and every pair (k <= q when the spec is causal) for favor heads: exact attention, what FAVOR+
// approximates. For `sparsa run --check` and tests; n up to 8192 (throws beyond, saying so).
MaskSet layer_reference_masks(const Tensor& q, const Tensor& k, const MaskSet& masks, int64_t layer, int64_t b,
                              const LayerOptions& options = {});

// layer_reference_masks' limit on n: the allowed sets are [n, n] bytes a head.
constexpr int64_t kLayerReferenceMaxN = 8192;

} // namespace sparsa
