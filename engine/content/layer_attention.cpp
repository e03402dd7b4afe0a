// One layer whatever its heads are (layer_attention.hpp): the pair heads (fixed, lsh, anchors)
// go through content_attention (or the block-sparse engine when none is lsh or anchors) on the
// whole layer with the favor heads' specs dropped, so that those run as empty heads there and no
// head is renumbered; the favor heads run FAVOR+ one (batch, head) at a time, in parallel, so
// that each has its own report; the outputs are put back by head.
#include "engine/content/layer_attention.hpp"

#include "engine/reference.hpp"
#include "engine/threads.hpp"

#include <chrono>
#include <cmath>
#include <limits>
#include <memory>

namespace sparsa {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

size_t to_size(int64_t i) { return static_cast<size_t>(i); }

const ContentSpec* spec_of(const MaskSet& masks, int64_t layer, int64_t h) {
    if (masks.content.empty()) return nullptr;
    return masks.content[to_size(layer * masks.heads + h)].get();
}

// The set with the favor specs of `layer` dropped: those heads are then their fixed mask (empty
// for favor), so the pair engines give them o = 0, lse = -inf at no cost. Shares every mask.
MaskSet masks_without_favor(const MaskSet& masks, int64_t layer) {
    MaskSet out = masks;
    for (int64_t h = 0; h < masks.heads; ++h) {
        const ContentSpec* spec = spec_of(masks, layer, h);
        if (spec != nullptr && spec->kind == ContentKind::favor) out.content[to_size(layer * masks.heads + h)] = nullptr;
    }
    bool any = false;
    for (const auto& spec : out.content) any = any || spec != nullptr;
    if (!any) out.content.clear();
    return out;
}

// Head (b, h) of x as a tensor of one batch and one head: [1, 1, n, d].
Tensor head_take(const Tensor& x, int64_t b, int64_t h) {
    Tensor t = tensor_zeros<float>({1, 1, x.shape.n, x.shape.d});
    std::copy(x.row(b, h, 0), x.row(b, h, 0) + x.shape.n * x.shape.d, t.data.begin());
    return t;
}

void head_put(Tensor& x, int64_t b, int64_t h, const Tensor& from) {
    std::copy(from.data.begin(), from.data.end(), x.row(b, h, 0));
}

// The favor heads of the layer: (b, h) items, batch-major, and each head's features.
struct FavorHeads {
    std::vector<int64_t> heads;                // layer heads that are favor
    std::vector<FavorFeatures> features;       // [heads.size()]
    int64_t items() const { return static_cast<int64_t>(heads.size()); }
};

FavorHeads favor_heads(const MaskSet& masks, int64_t layer, int64_t d, const LayerOptions& options, const std::string& what) {
    FavorHeads f;
    for (int64_t h = 0; h < masks.heads; ++h) {
        const ContentSpec* spec = spec_of(masks, layer, h);
        if (spec == nullptr || spec->kind != ContentKind::favor) continue;
        f.heads.push_back(h);
        f.features.push_back(favor_features_for_head(*spec, layer, h, d, options.favor_draw, options.arrays,
                                                     what + ": layer " + std::to_string(layer) + ", head " +
                                                         std::to_string(h)));
    }
    return f;
}

FavorOptions favor_options(const MaskSet& masks, int64_t layer, int64_t h, const LayerOptions& options) {
    FavorOptions o;
    o.scale = options.scale;
    o.causal = spec_of(masks, layer, h)->causal;
    o.threads = 1;   // the (batch, head) items run in parallel
    return o;
}

// A favor report of one (batch, head) call, its indices made the layer's.
LayerHeadReport favor_head_report(int64_t layer, int64_t b, int64_t h, int64_t m, FavorReport report) {
    LayerHeadReport r;
    r.batch = b;
    r.head = h;
    r.kind = LayerHeadKind::favor;
    r.features = m;
    if (report.worst_i >= 0) {
        report.worst_b = b;
        report.worst_h = h;
    }
    r.favor = report;
    r.warning = favor_report_warning(report, "layer " + std::to_string(layer) + ", head " + std::to_string(h) +
                                                 " (batch " + std::to_string(b) + ")");
    r.pairs.batch = b;
    r.pairs.head = h;
    r.pairs.kind = ContentKind::favor;
    r.pairs.recall_mean = r.pairs.recall_min = std::numeric_limits<double>::quiet_NaN();
    return r;
}

LayerHeadReport fixed_head_report(const MaskSet& masks, int64_t layer, int64_t b, int64_t h) {
    const BlockMaskStats st = block_mask_stats(masks.at(layer, h));
    LayerHeadReport r;
    r.batch = b;
    r.head = h;
    r.kind = LayerHeadKind::fixed;
    r.pairs.batch = b;
    r.pairs.head = h;
    r.pairs.pairs = st.kept_pairs;
    r.pairs.density = st.density;
    r.pairs.empty_rows = st.empty_rows;
    r.pairs.recall_mean = r.pairs.recall_min = std::numeric_limits<double>::quiet_NaN();
    return r;
}

// Every (batch, head)'s report, batch-major: content reports (one per lsh / anchors (b, h),
// batch-major as content_attention gives them), the fixed heads' counts, favor's `favor` (one
// per favor (b, h), batch-major).
std::vector<LayerHeadReport> reports_assemble(const MaskSet& masks, int64_t layer, int64_t batch,
                                              const std::vector<ContentReport>& content,
                                              const std::vector<LayerHeadReport>& favor) {
    std::vector<LayerHeadReport> out;
    size_t ci = 0, fi = 0;
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t h = 0; h < masks.heads; ++h) {
            const LayerHeadKind kind = layer_head_kind(masks, layer, h);
            if (kind == LayerHeadKind::favor) {
                out.push_back(favor[fi++]);
            } else if (kind == LayerHeadKind::fixed) {
                out.push_back(fixed_head_report(masks, layer, b, h));
            } else {
                LayerHeadReport r;
                r.batch = b;
                r.head = h;
                r.kind = kind;
                r.pairs = content[ci++];
                out.push_back(r);
            }
        }
    }
    return out;
}

void check_layer(const std::string& what, const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks,
                 int64_t layer) {
    attention_check_shapes(what, q.shape, k.shape, v.shape, masks, layer);
    if (!masks.content.empty() && masks.content.size() != to_size(masks.layers * masks.heads)) {
        throw Error(what + ": the mask set has " + std::to_string(masks.content.size()) + " content specs for " +
                    std::to_string(masks.layers * masks.heads) + " (layer, head)s (MaskSet::content is empty or one per "
                    "(layer, head): compile the script again)");
    }
}

} // namespace

const char* layer_head_kind_name(LayerHeadKind kind) {
    switch (kind) {
    case LayerHeadKind::fixed: return "fixed";
    case LayerHeadKind::lsh: return "lsh";
    case LayerHeadKind::anchors: return "anchors";
    case LayerHeadKind::favor: return "favor";
    }
    return "unknown";
}

LayerHeadKind layer_head_kind(const MaskSet& masks, int64_t layer, int64_t h) {
    const ContentSpec* spec = spec_of(masks, layer, h);
    if (spec == nullptr) return LayerHeadKind::fixed;
    switch (spec->kind) {
    case ContentKind::lsh: return LayerHeadKind::lsh;
    case ContentKind::anchors: return LayerHeadKind::anchors;
    case ContentKind::favor: return LayerHeadKind::favor;
    }
    throw Error("layer " + std::to_string(layer) + ", head " + std::to_string(h) + ": content kind " +
                std::to_string(static_cast<int32_t>(spec->kind)) + " is not lsh, anchors or favor (compile the script again)");
}

bool layer_has(const MaskSet& masks, int64_t layer, LayerHeadKind kind) {
    for (int64_t h = 0; h < masks.heads; ++h) {
        if (layer_head_kind(masks, layer, h) == kind) return true;
    }
    return false;
}

LayerForward layer_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const MaskSet& masks,
                                     int64_t layer, const LayerOptions& options) {
    const std::string what = "layer_attention_forward";
    check_layer(what, q, k, v, masks, layer);
    const int threads = attention_threads(what, options.threads);
    const TensorShape s = q.shape;
    LayerForward out;
    const bool buckets = layer_has(masks, layer, LayerHeadKind::lsh) || layer_has(masks, layer, LayerHeadKind::anchors);
    const FavorHeads favor = favor_heads(masks, layer, s.d, options, what);

    // The heads with pairs (and the favor heads as empty ones).
    std::vector<ContentReport> content_reports;
    if (buckets) {
        ContentOptions c;
        c.scale = options.scale;
        c.threads = threads;
        c.arrays = options.arrays;
        c.buckets = options.buckets;
        c.recall = options.recall;
        ContentForward f = content_attention_forward(q, k, v, masks_without_favor(masks, layer), layer, c);
        out.o = std::move(f.o);
        out.lse = std::move(f.lse);
        content_reports = std::move(f.reports);
        out.times.content = f.times;
    } else {
        const auto t0 = std::chrono::steady_clock::now();
        AttentionOptions a;
        a.scale = options.scale;
        a.threads = threads;
        // Favor heads keep an empty fixed mask: nothing to compute there.
        AttentionOutput f = attention_forward(q, k, v, masks, layer, a);
        out.o = std::move(f.o);
        out.lse = std::move(f.lse);
        out.times.content.attention = seconds_since(t0);
    }

    // The favor heads, one (batch, head) a task.
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t items = s.batch * favor.items();
    std::vector<LayerHeadReport> favor_reports(to_size(items));
    parallel_for(items, threads, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
            const int64_t b = item / favor.items(), fi = item % favor.items(), h = favor.heads[to_size(fi)];
            const FavorOutput f = favor_forward(head_take(q, b, h), head_take(k, b, h), head_take(v, b, h),
                                                {favor.features[to_size(fi)]}, favor_options(masks, layer, h, options));
            head_put(out.o, b, h, f.o);
            std::fill(out.lse.row(b, h, 0), out.lse.row(b, h, 0) + s.n, std::numeric_limits<float>::quiet_NaN());
            favor_reports[to_size(item)] = favor_head_report(layer, b, h, favor.features[to_size(fi)].m, f.report);
        }
    });
    out.times.favor = seconds_since(t0);
    out.reports = reports_assemble(masks, layer, s.batch, content_reports, favor_reports);
    return out;
}

LayerGrads layer_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                    const Tensor& lse, const Tensor& d_o, const MaskSet& masks, int64_t layer,
                                    const LayerOptions& options) {
    const std::string what = "layer_attention_backward";
    check_layer(what, q, k, v, masks, layer);
    const int threads = attention_threads(what, options.threads);
    const TensorShape s = q.shape;
    const TensorShape lse_shape{s.batch, s.heads, s.n, 1};
    if (!(o.shape == s) || !(d_o.shape == s) || !(lse.shape == lse_shape)) {
        throw Error(what + ": O, dO and lse are " + tensor_shape_text(o.shape) + ", " + tensor_shape_text(d_o.shape) +
                    " and " + tensor_shape_text(lse.shape) + " but should be " + tensor_shape_text(s) + ", " +
                    tensor_shape_text(s) + " and " + tensor_shape_text(lse_shape) + " (pass the forward's o and lse)");
    }
    LayerGrads g;
    const bool buckets = layer_has(masks, layer, LayerHeadKind::lsh) || layer_has(masks, layer, LayerHeadKind::anchors);
    const FavorHeads favor = favor_heads(masks, layer, s.d, options, what);

    // The heads with pairs: the favor heads' o and lse replaced by an empty row's (0, -inf), which
    // their empty fixed masks give, so that nothing of theirs is read there.
    const Tensor* o_pairs = &o;
    const Tensor* lse_pairs = &lse;
    Tensor o_copy, lse_copy;
    if (favor.items() > 0) {
        o_copy = o;
        lse_copy = lse;
        for (int64_t b = 0; b < s.batch; ++b) {
            for (int64_t h : favor.heads) {
                std::fill(o_copy.row(b, h, 0), o_copy.row(b, h, 0) + s.n * s.d, 0.0f);
                std::fill(lse_copy.row(b, h, 0), lse_copy.row(b, h, 0) + s.n, kNegInf);
            }
        }
        o_pairs = &o_copy;
        lse_pairs = &lse_copy;
    }
    auto t0 = std::chrono::steady_clock::now();
    AttentionGrads pairs;
    if (buckets) {
        ContentOptions c;
        c.scale = options.scale;
        c.threads = threads;
        c.arrays = options.arrays;
        c.buckets = options.buckets;
        pairs = content_attention_backward(q, k, v, *o_pairs, *lse_pairs, d_o, masks_without_favor(masks, layer), layer, c);
    } else {
        AttentionOptions a;
        a.scale = options.scale;
        a.threads = threads;
        pairs = attention_backward(q, k, v, *o_pairs, *lse_pairs, d_o, masks, layer, a);
    }
    g.dq = std::move(pairs.dq);
    g.dk = std::move(pairs.dk);
    g.dv = std::move(pairs.dv);
    g.times.content.attention = seconds_since(t0);

    t0 = std::chrono::steady_clock::now();
    const int64_t items = s.batch * favor.items();
    g.favor.resize(to_size(items));
    parallel_for(items, threads, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
            const int64_t b = item / favor.items(), fi = item % favor.items(), h = favor.heads[to_size(fi)];
            const FavorGrads f = favor_backward(head_take(q, b, h), head_take(k, b, h), head_take(v, b, h),
                                                head_take(d_o, b, h), {favor.features[to_size(fi)]},
                                                favor_options(masks, layer, h, options));
            head_put(g.dq, b, h, f.dq);
            head_put(g.dk, b, h, f.dk);
            head_put(g.dv, b, h, f.dv);
            g.favor[to_size(item)] = favor_head_report(layer, b, h, favor.features[to_size(fi)].m, f.report);
        }
    });
    g.times.favor = seconds_since(t0);
    return g;
}

std::vector<LayerHeadReport> layer_report(const Tensor& q, const Tensor& k, const MaskSet& masks, int64_t layer,
                                          const LayerOptions& options) {
    const std::string what = "layer_report";
    check_layer(what, q, k, k, masks, layer);
    const int threads = attention_threads(what, options.threads);
    const TensorShape s = q.shape;
    std::vector<ContentReport> content_reports;
    if (layer_has(masks, layer, LayerHeadKind::lsh) || layer_has(masks, layer, LayerHeadKind::anchors)) {
        ContentOptions c;
        c.scale = options.scale;
        c.threads = threads;
        c.arrays = options.arrays;
        c.buckets = options.buckets;
        c.recall = options.recall;
        content_reports = content_report(q, k, masks_without_favor(masks, layer), layer, c);
    }
    const FavorHeads favor = favor_heads(masks, layer, s.d, options, what);
    const int64_t items = s.batch * favor.items();
    std::vector<LayerHeadReport> favor_reports(to_size(items));
    parallel_for(items, threads, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
            const int64_t b = item / favor.items(), fi = item % favor.items(), h = favor.heads[to_size(fi)];
            const Tensor zeros = tensor_zeros<float>({1, 1, s.n, s.d});
            const FavorOutput f = favor_forward(head_take(q, b, h), head_take(k, b, h), zeros, {favor.features[to_size(fi)]},
                                                favor_options(masks, layer, h, options));
            favor_reports[to_size(item)] = favor_head_report(layer, b, h, favor.features[to_size(fi)].m, f.report);
        }
    });
    return reports_assemble(masks, layer, s.batch, content_reports, favor_reports);
}

std::vector<uint8_t> layer_allowed_dense(const Tensor& q, const Tensor& k, const MaskSet& masks, int64_t layer, int64_t b,
                                         int64_t h, const LayerOptions& options) {
    const std::string what = "layer_allowed_dense";
    check_layer(what, q, k, k, masks, layer);
    if (h >= 0 && h < masks.heads && layer_head_kind(masks, layer, h) == LayerHeadKind::favor) {
        throw Error(what + ": layer " + std::to_string(layer) + ", head " + std::to_string(h) +
                    " is favor, which has no allowed pairs (FAVOR+ estimates attention over every key)");
    }
    ContentOptions c;
    c.scale = options.scale;
    c.threads = options.threads;
    c.arrays = options.arrays;
    c.buckets = options.buckets;
    return content_allowed_dense(q, k, masks_without_favor(masks, layer), layer, b, h, c);
}

MaskSet layer_reference_masks(const Tensor& q, const Tensor& k, const MaskSet& masks, int64_t layer, int64_t b,
                              const LayerOptions& options) {
    const std::string what = "layer_reference_masks";
    check_layer(what, q, k, k, masks, layer);
    const int64_t n = q.shape.n;
    if (n > kLayerReferenceMaxN) {
        throw Error(what + ": n = " + std::to_string(n) + " is above " + std::to_string(kLayerReferenceMaxN) +
                    " (the allowed sets of content-based heads are checked as [n, n] matrices; check at a smaller n)");
    }
    if (b < 0 || b >= q.shape.batch) {
        throw Error(what + ": batch " + std::to_string(b) + " is outside 0.." + std::to_string(q.shape.batch - 1));
    }
    std::vector<std::shared_ptr<const BlockMask>> heads;
    std::vector<uint8_t> dense;
    for (int64_t h = 0; h < masks.heads; ++h) {
        const LayerHeadKind kind = layer_head_kind(masks, layer, h);
        if (kind == LayerHeadKind::fixed) {
            heads.push_back(masks.masks[to_size(layer * masks.heads + h)]);
            continue;
        }
        if (kind == LayerHeadKind::favor) {
            const bool causal = spec_of(masks, layer, h)->causal;
            dense.assign(to_size(n * n), 1);
            for (int64_t i = 0; i < n && causal; ++i) std::fill(dense.begin() + i * n + i + 1, dense.begin() + (i + 1) * n, 0);
        } else {
            dense = layer_allowed_dense(q, k, masks, layer, b, h, options);
        }
        heads.push_back(std::make_shared<BlockMask>(block_mask_from_dense(n, masks.block, dense.data())));
    }
    return mask_set_make(1, masks.heads, std::move(heads));
}

} // namespace sparsa
