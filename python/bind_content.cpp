// The Python side of content-based heads (lsh, anchors, favor) beyond attention itself: what each
// head did on an input, the pairs it attended to, FAVOR+'s error as features grow, FAVOR+'s
// features themselves (for sparsa.selectors.favor_attention, which must use the engine's), and
// an anchors file fitted from calibration rows (as `sparsa anchors fit`, for sparsa.ruler).
#include "python/module.hpp"

#include "engine/content/buckets.hpp"
#include "engine/content/favor.hpp"
#include "engine/content/layer_attention.hpp"
#include "engine/error.hpp"
#include "engine/tensor.hpp"
#include "io/content_files.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace sparsa::python {

namespace {

// NaN (not measured) as None.
py::object number_or_none(double x) { return std::isnan(x) ? py::object(py::none()) : py::object(py::float_(x)); }

// One (batch, head)'s report as a dict: what its family did on this input.
py::dict head_report_dict(const LayerHeadReport& r) {
    py::dict d;
    d["batch"] = r.batch;
    d["head"] = r.head;
    d["kind"] = std::string(layer_head_kind_name(r.kind));
    if (r.kind == LayerHeadKind::lsh || r.kind == LayerHeadKind::anchors) {
        d["buckets"] = r.pairs.buckets;
        d["rounds"] = r.pairs.rounds;
        d["chunk"] = r.pairs.chunk;
        d["bucket_min"] = r.pairs.bucket_min;
        d["bucket_max"] = r.pairs.bucket_max;
        d["imbalance"] = r.pairs.imbalance;
    }
    if (r.kind == LayerHeadKind::favor) {
        d["features"] = r.features;
        d["rows"] = r.favor.rows;
        d["degraded_rows"] = r.favor.degraded_rows;
        d["zero_rows"] = r.favor.zero_rows;
        d["large_norm_queries"] = r.favor.large_norm_queries;
        d["large_norm_keys"] = r.favor.large_norm_keys;
        d["predicted_error"] = r.favor.predicted_error;
        d["warning"] = r.warning;
    } else {
        d["pairs"] = r.pairs.pairs;
        d["density"] = r.pairs.density;
        d["empty_rows"] = r.pairs.empty_rows;
        d["recall_mean"] = number_or_none(r.pairs.recall_mean);
        d["recall_min"] = number_or_none(r.pairs.recall_min);
    }
    return d;
}

py::list content_report_py(const py::handle& q_obj, const py::handle& k_obj, const PyMaskSet& m, int64_t layer, bool recall,
                           float scale, int threads) {
    auto args = std::vector{named("q", q_obj), named("k", k_obj)};
    attention_args_check(args, m.set, layer);
    Tensor q = tensor_from<float>(args[0].second), k = tensor_from<float>(args[1].second);
    std::vector<LayerHeadReport> reports;
    {
        const ContentArrays arrays = content_arrays_of(m.set);
        LayerOptions options;
        options.scale = scale;
        options.threads = threads;
        options.arrays = &arrays;
        options.recall = recall;
        py::gil_scoped_release release;
        reports = layer_report(q, k, m.set, layer, options);
    }
    py::list out;
    for (const LayerHeadReport& r : reports) out.append(head_report_dict(r));
    return out;
}

// A of (batch, head) as a bool matrix [n, n].
py::array content_allowed_py(const py::handle& q_obj, const py::handle& k_obj, const PyMaskSet& m, int64_t layer, int64_t batch,
                             int64_t head, int threads) {
    auto args = std::vector{named("q", q_obj), named("k", k_obj)};
    attention_args_check(args, m.set, layer);
    mask_index_check(m.set, layer, head);
    const int64_t n = m.set.n;
    if (batch < 0 || batch >= args[0].second.shape(0)) {
        value_error("batch " + std::to_string(batch) + " is out of range: q has " + std::to_string(args[0].second.shape(0)) +
                    " (0.." + std::to_string(args[0].second.shape(0) - 1) + ")");
    }
    if (n > kMaxDenseN) {
        value_error("content_allowed: n = " + std::to_string(n) + " is above " + std::to_string(kMaxDenseN) +
                    " (an [n, n] matrix would take " + std::to_string(n * n >> 20) + " MiB); use content_report for the counts");
    }
    Tensor q = tensor_from<float>(args[0].second), k = tensor_from<float>(args[1].second);
    py::array_t<bool> dense({n, n});
    const ContentArrays arrays = content_arrays_of(m.set);
    std::vector<uint8_t> allowed;
    {
        LayerOptions options;
        options.threads = threads;
        options.arrays = &arrays;
        py::gil_scoped_release release;
        allowed = layer_allowed_dense(q, k, m.set, layer, batch, head, options);
    }
    std::copy(allowed.begin(), allowed.end(), reinterpret_cast<uint8_t*>(dense.mutable_data()));
    return dense;
}

py::list favor_error_curve_py(const py::handle& q_obj, const py::handle& k_obj, const py::handle& v_obj,
                              const std::optional<std::vector<int64_t>>& features, uint64_t seed, int64_t layer, int64_t draw,
                              bool causal, double scale, int threads) {
    auto args = std::vector{named("q", q_obj), named("k", k_obj), named("v", v_obj)};
    for (size_t i = 1; i < args.size(); ++i) {
        if (!args[i].second.attr("shape").equal(args[0].second.attr("shape"))) {
            value_error(args[i].first + ": shape " + shape_text(args[i].second) + " differs from q's " + shape_text(args[0].second) +
                        " (q, k and v are all [batch, heads, n, d])");
        }
    }
    Tensor q = tensor_from<float>(args[0].second), k = tensor_from<float>(args[1].second), v = tensor_from<float>(args[2].second);
    FavorOptions options;
    options.scale = scale;
    options.causal = causal;
    options.threads = threads;
    std::vector<FavorErrorPoint> points;
    {
        py::gil_scoped_release release;
        points = favor_error_curve(q, k, v, features ? *features : favor_feature_counts(), seed, layer, draw, options);
    }
    py::list out;
    for (const FavorErrorPoint& p : points) {
        py::dict d;
        d["features"] = p.features;
        d["error"] = p.error;
        d["predicted_error"] = p.report.predicted_error;
        d["degraded_rows"] = p.report.degraded_rows;
        d["warning"] = favor_report_warning(p.report, "favor_error_curve (" + std::to_string(p.features) + " features)");
        out.append(d);
    }
    return out;
}

// omega [m, d] of favor_features_draw as float32 numpy. The engine's own checks name
// favor_features_draw; these name the Python argument.
py::array favor_features_py(int64_t seed, int64_t layer, int64_t head, int64_t m, int64_t d, int64_t draw) {
    if (seed < 0) value_error("favor_features: seed = " + std::to_string(seed) + " (give seed >= 0, as favor(seed = ...) takes)");
    if (m < 1) value_error("favor_features: m = " + std::to_string(m) + " (give m >= 1 features)");
    if (d < 1) value_error("favor_features: d = " + std::to_string(d) + " (give the head width d >= 1)");
    if (draw < 0) value_error("favor_features: draw = " + std::to_string(draw) + " (give draw >= 0: 0 is the first draw)");
    FavorFeatures f;
    {
        py::gil_scoped_release release;
        f = favor_features_draw(static_cast<uint64_t>(seed), layer, head, draw, m, d);
    }
    py::array_t<float> out({m, d});
    std::copy(f.omega.begin(), f.omega.end(), out.mutable_data());
    return out;
}

// One round of anchors fitted on the nonzero rows of q then k (spherical k-means, anchors_fit)
// and written to `path` with its header, as `sparsa anchors fit --rounds 1 --restarts 1` does.
double anchors_fit_py(const py::handle& q_obj, const py::handle& k_obj, int64_t k, const std::string& path, int64_t seed,
                      int64_t iterations, int threads) {
    const py::array qa = array_checked(q_obj, "q", 2, "[rows, d]"), ka = array_checked(k_obj, "k", 2, "[rows, d]");
    if (qa.shape(1) != ka.shape(1)) {
        value_error("anchors_fit: q rows have d = " + std::to_string(qa.shape(1)) + " but k rows d = " + std::to_string(ka.shape(1)) +
                    " (give queries and keys of the same heads)");
    }
    if (k < 1) value_error("anchors_fit: k must be >= 1, got " + std::to_string(k));
    if (seed < 0 || iterations < 0) value_error("anchors_fit: seed and iterations must be >= 0");
    const auto as_float = [](const py::array& a) { return py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a); };
    const auto q = as_float(qa), kr = as_float(ka);
    const int64_t d = qa.shape(1), rows = qa.shape(0) + ka.shape(0);
    std::vector<float> pooled(q.data(), q.data() + q.size());
    pooled.insert(pooled.end(), kr.data(), kr.data() + kr.size());
    ContentArray anchors;
    anchors.path = path;
    anchors.shape = {1, k, d};
    AnchorsInfo info;
    info.q_shape = {qa.shape(0), d};
    info.k_shape = {ka.shape(0), d};
    for (int64_t i = 0; i < rows; ++i)
        info.rows += std::any_of(pooled.begin() + i * d, pooled.begin() + (i + 1) * d, [](float x) { return x != 0; });
    info.seed = static_cast<uint64_t>(seed);
    info.iterations = iterations;
    info.start_seed = {info.seed};
    double mean_cosine = std::numeric_limits<double>::quiet_NaN();
    {
        py::gil_scoped_release release;
        anchors.values = anchors_fit(pooled.data(), rows, d, k, info.seed, iterations, threads,
                                     [&](int64_t, double cosine) { mean_cosine = cosine; });
        info.mean_cosine = {mean_cosine};
        anchors_save(path, anchors, info);
    }
    return mean_cosine;
}

} // namespace

void bind_content(py::module_& m) {
    m.def("content_report", &content_report_py, py::arg("q"), py::arg("k"), py::arg("masks"), py::arg("layer") = 0,
          py::arg("recall") = false, py::arg("scale") = 0.0F, py::arg("threads") = 0,
          R"(What the heads of layer `layer` do on this input, without running attention: a list of dicts, one per
(batch, head), batch-major.

Every dict has batch, head, kind ('fixed', 'lsh', 'anchors' or 'favor'). fixed, lsh, anchors: pairs,
density (pairs / n^2), empty_rows, recall_mean and recall_min (the share of the exact softmax's mass
the allowed pairs hold, mean over rows and worst row; with recall=True, O(n^2 d) a head, else None;
None for fixed heads). lsh, anchors: buckets, rounds, chunk, bucket_min, bucket_max, imbalance
(largest bucket / mean). favor: features, rows, degraded_rows, zero_rows, large_norm_queries,
large_norm_keys, predicted_error (Performer's sqrt((exp(|q'|^2 + |k'|^2) - 1) / m)) and warning
('' when the estimate is fine). q, k: [batch, heads, n, d]. Files the specs name are read here.)");
    m.def("content_allowed", &content_allowed_py, py::arg("q"), py::arg("k"), py::arg("masks"), py::arg("layer") = 0,
          py::arg("batch") = 0, py::arg("head") = 0, py::arg("threads") = 0,
          "The pairs (batch, head) of layer `layer` attends to on this input, as a bool array [n, n] ([q, k] true when "
          "query q attends to key k): the fixed mask | the buckets' pairs for lsh and anchors, the mask for a fixed head. "
          "n up to 8192; favor heads have no pairs (ValueError).");
    m.def("favor_error_curve", &favor_error_curve_py, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("features") = py::none(),
          py::arg("seed") = 0, py::arg("layer") = 0, py::arg("draw") = 0, py::arg("causal") = false, py::arg("scale") = 0.0,
          py::arg("threads") = 0,
          R"(FAVOR+'s error against exact attention as the feature count grows: a list of dicts, one per count, with
features, error (||O - O_exact|| / ||O_exact|| over every element), predicted_error, degraded_rows and
warning. features: the counts (default 16, 32, ..., 1024); each head h draws them from (seed, layer, h,
draw) as favor(features, seed) does in a script. Exact attention is computed once, O(n^2 d) a head.
q, k, v: [batch, heads, n, d].)");
    m.def("anchors_fit", &anchors_fit_py, py::arg("q"), py::arg("k"), py::arg("anchors"), py::arg("path"), py::arg("seed") = 0,
          py::arg("iterations") = 20, py::arg("threads") = 0,
          R"(Fits one round of `anchors` anchor vectors by spherical k-means on the nonzero rows of q and then k
(float arrays [rows, d] of one head: the calibration queries and keys) and writes them to `path`, an
anchors file that anchors(anchors, fit = "path") reads (`anchors` float32 [1, anchors, d] and its header),
as `sparsa anchors fit --q Q.npy --k K.npy --anchors K -o path` does with one round and one start.
Returns the rows' mean cosine to their anchor after the last iteration (NaN with iterations 0). Raises
ValueError for mismatched widths, anchors < 1, seed or iterations < 0; sparsa.Error when fewer rows than
anchors are nonzero, or the file cannot be written.)");
    m.def("favor_features", &favor_features_py, py::arg("seed"), py::arg("layer"), py::arg("head"), py::arg("m"), py::arg("d"),
          py::arg("draw") = 0,
          R"(FAVOR+'s random features omega of one head, float32 [m, d]: the ones favor(features = m, seed = seed)
draws for (layer, head) on its draw `draw` (0 unless redraw), in the engine's order (Performer's positive
orthogonal features: blocks of d orthonormal rows, each row scaled to the norm of a Gaussian row;
engine/content/favor.hpp, favor_features_draw). Identical on every machine. For
sparsa.selectors.favor_attention, which then matches the engine's favor heads. Raises ValueError for
seed < 0, m < 1, d < 1 or draw < 0.)");
}

} // namespace sparsa::python
