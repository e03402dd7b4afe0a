// _sparsa: the pybind11 module behind `import sparsa` (python/sparsa/__init__.py re-exports it).
// Scripts compile to MaskSets, attention runs on numpy arrays, receptive fields are queried, and
// errors arrive as sparsa.Error (a ValueError) or sparsa.ScriptError with the CLI's diagnostic.
//
// Index
//   [SECTION] errors          sparsa.Error, sparsa.ScriptError and the Diagnostic object
//   [SECTION] arrays          numpy <-> engine tensors: checks that name the argument, outputs without copies
//   [SECTION] scripts         parse, load, compile
//   [SECTION] mask sets       statistics, dense and block pictures, files
//   [SECTION] pictures        PNG figures of one mask or of every (layer, head): MaskSet.png, _repr_png_
//                             (bind_pictures.cpp)
//   [SECTION] attention       CPU engine forward and backward (any heads: layer_attention.hpp), the dense reference
//   [SECTION] content         per-input reports of content-based heads, their allowed pairs, FAVOR+'s error
//                             curve: bound in bind_content.cpp
//   [SECTION] receptive       coverage per layer, one token's field, the warning, dense R_l
//   [SECTION] cuda            the CUDA engine where it is built and a GPU is present
//   [SECTION] learn           sparsa.learn, bound in bind_learn.cpp (when learn/ is built)
#include "python/module.hpp"

#include "dsl/diagnostics.hpp"
#include "dsl/script.hpp"
#include "engine/block_mask.hpp"
#include "engine/content/layer_attention.hpp"
#include "engine/cpu_attention.hpp"
#include "engine/error.hpp"
#include "io/atomic_file.hpp"
#include "io/content_files.hpp"
#include "io/mask_io.hpp"
#include "analysis/reach_graph.hpp"
#include "analysis/receptive_field.hpp"
#include "engine/reference.hpp"
#include "engine/tensor.hpp"
#include "engine/threads.hpp"
#ifdef SPARSA_HAVE_CUDA
#include "engine/cuda/attention_cuda.hpp"
#endif

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace sparsa::python {

// [SECTION] errors


DiagnosticView diagnostic_view(const dsl::Diagnostic& d) {
    DiagnosticView v;
    v.severity = d.severity == dsl::Severity::error ? "error" : "warning";
    if (d.source) {
        v.file = d.source->name;
        v.line = d.line();
        v.column = d.column();
    }
    v.message = d.message;
    v.hint = d.hint;
    v.text = dsl::diagnostic_format(d);
    return v;
}

std::vector<DiagnosticView> diagnostic_views(const std::vector<dsl::Diagnostic>& diagnostics) {
    std::vector<DiagnosticView> views;
    for (const auto& d : diagnostics) views.push_back(diagnostic_view(d));
    return views;
}

// Our own argument checks raise a plain ValueError naming the argument.
[[noreturn]] void value_error(const std::string& message) { throw py::value_error(message); }

// [SECTION] arrays

std::string shape_text(const py::array& a) {
    std::string out = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) out += (i ? ", " : "") + std::to_string(a.shape(i));
    return out + (a.ndim() == 1 ? ",)" : ")");
}

// The numpy array behind `obj`, checked to be a real floating array of `ndim` dimensions.
py::array array_checked(const py::handle& obj, const std::string& name, py::ssize_t ndim, const char* layout) {
    if (!py::isinstance<py::array>(obj)) {
        value_error(name + ": expected a numpy array " + layout + ", got " +
                    std::string(Py_TYPE(obj.ptr())->tp_name) + " (use np.asarray(" + name + "))");
    }
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (a.dtype().kind() != 'f') {
        value_error(name + ": dtype " + std::string(py::str(a.dtype())) +
                    " is not a floating type (pass " + name + ".astype(np.float32))");
    }
    if (a.ndim() != ndim) {
        value_error(name + ": expected " + std::to_string(ndim) + " dimensions " + layout + ", got shape " + shape_text(a));
    }
    return a;
}


void attention_args_check(const std::vector<std::pair<std::string, py::array>>& arrays, const MaskSet& set, int64_t layer) {
    const py::array& q = arrays[0].second;
    for (size_t i = 1; i < arrays.size(); ++i) {
        const py::array& a = arrays[i].second;
        if (a.ndim() != 4 || a.shape(0) != q.shape(0) || a.shape(1) != q.shape(1) || a.shape(2) != q.shape(2) ||
            a.shape(3) != q.shape(3)) {
            value_error(arrays[i].first + ": shape " + shape_text(a) + " differs from q's " + shape_text(q) +
                        " (q, k, v, o and d_o are all [batch, heads, n, d])");
        }
    }
    for (py::ssize_t i = 0; i < 4; ++i) {
        if (q.shape(i) < 1) value_error("q: shape " + shape_text(q) + " has an empty dimension (each of batch, heads, n, d must be >= 1)");
    }
    if (q.shape(3) > kMaxHeadDim) {
        value_error("q: head dimension d = " + std::to_string(q.shape(3)) + " is above " + std::to_string(kMaxHeadDim) +
                    " (split the heads, or use d <= 256)");
    }
    if (q.shape(2) != set.n) {
        value_error("q: n = " + std::to_string(q.shape(2)) + " but the mask set was compiled for n = " + std::to_string(set.n) +
                    " (compile the script with n=" + std::to_string(q.shape(2)) + ")");
    }
    if (q.shape(1) != set.heads) {
        value_error("q: " + std::to_string(q.shape(1)) + " heads but the mask set has " + std::to_string(set.heads) +
                    " (the script's `heads` statement sets them)");
    }
    if (layer < 0 || layer >= set.layers) {
        value_error("layer " + std::to_string(layer) + " is out of range: the mask set has " + std::to_string(set.layers) +
                    " layer" + (set.layers == 1 ? "" : "s") + " (0.." + std::to_string(set.layers - 1) + ")");
    }
}


// lse as given back by attention(): [batch, heads, n] (or [batch, heads, n, 1]) -> [.., n, 1].
Tensor lse_from(const py::handle& obj, const py::array& q) {
    if (!py::isinstance<py::array>(obj)) value_error("lse: expected a numpy array [batch, heads, n] (as attention() returns it)");
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (a.ndim() == 4 && a.shape(3) == 1) a = a.attr("reshape")(a.shape(0), a.shape(1), a.shape(2));
    a = array_checked(a, "lse", 3, "[batch, heads, n]");
    if (a.shape(0) != q.shape(0) || a.shape(1) != q.shape(1) || a.shape(2) != q.shape(2)) {
        value_error("lse: shape " + shape_text(a) + " does not match q's [batch, heads, n] = (" + std::to_string(q.shape(0)) + ", " +
                    std::to_string(q.shape(1)) + ", " + std::to_string(q.shape(2)) + ") (pass the lse attention() returned)");
    }
    a = a.attr("reshape")(a.shape(0), a.shape(1), a.shape(2), 1);
    return tensor_from<float>(a);
}

// [SECTION] scripts

struct PyScript {
    dsl::ScriptPtr script;
};


PyMaskSetPtr script_compile_py(const PyScript& s, int64_t n, int32_t block, int threads) {
    if (n < 1) value_error("n: the sequence length must be >= 1, got " + std::to_string(n));
    if (block != 0 && !block_size_valid(block)) {
        value_error("block: " + std::to_string(block) + " is not a power of two from 16 to 256 (use 16, 32, 64, 128 or 256)");
    }
    dsl::CompileOptions options;
    options.n = n;
    options.block = block;
    options.threads = threads;
    options.content = true;   // lsh, anchors and favor heads: attention() runs them (layer_attention.hpp)
    dsl::Compiled compiled;
    {
        py::gil_scoped_release release;
        compiled = dsl::script_compile(*s.script, options);
    }
    auto out = std::make_shared<PyMaskSet>();
    out->set = std::move(compiled.masks);
    out->warnings = diagnostic_views(compiled.warnings);
    return out;
}

// [SECTION] mask sets

void mask_index_check(const MaskSet& set, int64_t layer, int64_t head) {
    if (layer < 0 || layer >= set.layers) {
        value_error("layer " + std::to_string(layer) + " is out of range: the mask set has " + std::to_string(set.layers) +
                    " layer" + (set.layers == 1 ? "" : "s") + " (0.." + std::to_string(set.layers - 1) + ")");
    }
    if (head < 0 || head >= set.heads) {
        value_error("head " + std::to_string(head) + " is out of range: the mask set has " + std::to_string(set.heads) +
                    " head" + (set.heads == 1 ? "" : "s") + " (0.." + std::to_string(set.heads - 1) + ")");
    }
}


// The mask of (layer, head) as a bool matrix: [n, n], [q, k] true when q may attend to k.
py::array mask_to_dense(const PyMaskSet& m, int64_t layer, int64_t head) {
    mask_index_check(m.set, layer, head);
    const int64_t n = m.set.n;
    if (n > kMaxDenseN) {
        value_error("to_dense: n = " + std::to_string(n) + " is above " + std::to_string(kMaxDenseN) +
                    " (an [n, n] matrix would take " + std::to_string(n * n >> 20) +
                    " MiB); use block_grid(layer, head) for the block picture, or stats(layer, head)");
    }
    py::array_t<bool> dense({n, n});
    auto* out = reinterpret_cast<uint8_t*>(dense.mutable_data());
    const BlockMask& mask = m.set.at(layer, head);
    py::gil_scoped_release release;
    for (int64_t q = 0; q < n; ++q) block_mask_dense_row(mask, q, out + q * n);
    return dense;
}

// The block picture of (layer, head): [q_blocks, k_blocks] int8, 0 not kept, 1 partial, 2 full.
py::array mask_block_grid(const PyMaskSet& m, int64_t layer, int64_t head) {
    mask_index_check(m.set, layer, head);
    const BlockMask& mask = m.set.at(layer, head);
    const int64_t blocks = mask.q_blocks();
    if (blocks > 65536) value_error("block_grid: " + std::to_string(blocks) + " block rows is too many to draw (at most 65536)");
    py::array_t<int8_t> grid({blocks, blocks});
    int8_t* out = grid.mutable_data();
    std::fill(out, out + blocks * blocks, int8_t{0});
    for (int64_t r = 0; r < blocks; ++r) {
        for (int64_t e = mask.row_ptr[static_cast<size_t>(r)]; e < mask.row_ptr[static_cast<size_t>(r + 1)]; ++e) {
            out[r * blocks + mask.col_idx[static_cast<size_t>(e)]] = mask.partial_idx[static_cast<size_t>(e)] < 0 ? 2 : 1;
        }
    }
    return grid;
}

// The CSR arrays of (layer, head) (copies): row_ptr, col_idx, partial_idx, bits [partial, B*B/64].
py::dict mask_csr(const PyMaskSet& m, int64_t layer, int64_t head) {
    mask_index_check(m.set, layer, head);
    const BlockMask& mask = m.set.at(layer, head);
    py::dict d;
    d["row_ptr"] = array_copy(mask.row_ptr);
    d["col_idx"] = array_copy(mask.col_idx);
    d["partial_idx"] = array_copy(mask.partial_idx);
    d["bits"] = array_copy(mask.bits).attr("reshape")(mask.partial_blocks(), mask.words_per_block());
    d["block"] = mask.block;
    d["n"] = mask.n;
    return d;
}

// A MaskSet from dense bool matrices: [n, n] (one layer, one head) or [layers, heads, n, n].
PyMaskSetPtr mask_set_from_dense_py(const py::handle& obj, int32_t block) {
    if (!py::isinstance<py::array>(obj)) value_error("dense: expected a numpy bool array [n, n] or [layers, heads, n, n]");
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (a.ndim() == 2) a = a.attr("reshape")(1, 1, a.shape(0), a.shape(1));
    if (a.ndim() != 4 || a.shape(2) != a.shape(3) || a.shape(2) < 1) {
        value_error("dense: expected [n, n] or [layers, heads, n, n] with square masks, got shape " + shape_text(a));
    }
    if (!block_size_valid(block)) value_error("block: " + std::to_string(block) + " is not a power of two from 16 to 256 (use 16, 32, 64, 128 or 256)");
    auto bytes = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(a.attr("astype")("bool").attr("astype")("uint8"));
    const int64_t layers = a.shape(0), heads = a.shape(1), n = a.shape(2);
    std::vector<std::shared_ptr<const BlockMask>> masks;
    for (int64_t i = 0; i < layers * heads; ++i) {
        masks.push_back(std::make_shared<BlockMask>(block_mask_from_dense(n, block, bytes.data() + i * n * n)));
    }
    auto out = std::make_shared<PyMaskSet>();
    out->set = mask_set_make(layers, heads, std::move(masks));
    return out;
}

double mask_set_mean_density(const MaskSet& set) {
    double sum = 0;
    for (int64_t l = 0; l < set.layers; ++l) {
        for (int64_t h = 0; h < set.heads; ++h) sum += block_mask_stats(set.at(l, h)).density;
    }
    return sum / static_cast<double>(set.layers * set.heads);
}

// [SECTION] attention

std::pair<std::string, py::array> named(const char* name, const py::handle& obj) {
    return {name, array_checked(obj, name, 4, "[batch, heads, n, d]")};
}

// Whether layer `layer` has a content-based head (lsh, anchors, favor).
bool layer_has_content(const MaskSet& set, int64_t layer) {
    for (int64_t h = 0; h < set.heads; ++h) {
        if (layer_head_kind(set, layer, h) != LayerHeadKind::fixed) return true;
    }
    return false;
}

ContentArrays content_arrays_of(const MaskSet& set) {
    return set.content.empty() ? ContentArrays{} : content_files_load(set);
}

py::tuple attention_py(const py::handle& q_obj, const py::handle& k_obj, const py::handle& v_obj, const PyMaskSet& m,
                       int64_t layer, float scale, int threads) {
    auto args = std::vector{named("q", q_obj), named("k", k_obj), named("v", v_obj)};
    attention_args_check(args, m.set, layer);
    Tensor q = tensor_from<float>(args[0].second), k = tensor_from<float>(args[1].second), v = tensor_from<float>(args[2].second);
    AttentionOutput out;
    if (layer_has_content(m.set, layer)) {
        const ContentArrays arrays = content_arrays_of(m.set);
        LayerOptions options;
        options.scale = scale;
        options.threads = threads;
        options.arrays = &arrays;
        py::gil_scoped_release release;
        LayerForward f = layer_attention_forward(q, k, v, m.set, layer, options);
        out.o = std::move(f.o);
        out.lse = std::move(f.lse);
    } else {
        AttentionOptions options;
        options.scale = scale;
        options.threads = threads;
        py::gil_scoped_release release;
        out = attention_forward(q, k, v, m.set, layer, options);
    }
    return py::make_tuple(array_from(std::move(out.o)), array_from(std::move(out.lse), true));
}

py::tuple attention_backward_py(const py::handle& q_obj, const py::handle& k_obj, const py::handle& v_obj,
                                const py::handle& o_obj, const py::handle& lse_obj, const py::handle& do_obj,
                                const PyMaskSet& m, int64_t layer, float scale, int threads) {
    auto args = std::vector{named("q", q_obj), named("k", k_obj), named("v", v_obj), named("o", o_obj), named("d_o", do_obj)};
    attention_args_check(args, m.set, layer);
    Tensor q = tensor_from<float>(args[0].second), k = tensor_from<float>(args[1].second), v = tensor_from<float>(args[2].second);
    Tensor o = tensor_from<float>(args[3].second), d_o = tensor_from<float>(args[4].second);
    Tensor lse = lse_from(lse_obj, args[0].second);
    AttentionGrads grads;
    if (layer_has_content(m.set, layer)) {
        const ContentArrays arrays = content_arrays_of(m.set);
        LayerOptions options;
        options.scale = scale;
        options.threads = threads;
        options.arrays = &arrays;
        py::gil_scoped_release release;
        LayerGrads g = layer_attention_backward(q, k, v, o, lse, d_o, m.set, layer, options);
        grads.dq = std::move(g.dq);
        grads.dk = std::move(g.dk);
        grads.dv = std::move(g.dv);
    } else {
        AttentionOptions options;
        options.scale = scale;
        options.threads = threads;
        py::gil_scoped_release release;
        grads = attention_backward(q, k, v, o, lse, d_o, m.set, layer, options);
    }
    return py::make_tuple(array_from(std::move(grads.dq)), array_from(std::move(grads.dk)), array_from(std::move(grads.dv)));
}

// Batch b of x: [1, heads, n, d].
template <typename T> BasicTensor<T> batch_take(const BasicTensor<T>& x, int64_t b) {
    BasicTensor<T> t = tensor_zeros<T>({1, x.shape.heads, x.shape.n, x.shape.d});
    std::copy(x.row(b, 0, 0), x.row(b, 0, 0) + t.data.size(), t.data.begin());
    return t;
}

template <typename T> void batch_put(BasicTensor<T>& x, int64_t b, const BasicTensor<T>& from) {
    std::copy(from.data.begin(), from.data.end(), x.row(b, 0, 0));
}

// The reference of a layer with lsh or anchors heads is the reference over each head's allowed
// set A, batch by batch (A depends on the input), hashed from q and k rounded to float32 as the
// engine hashes them; fixed heads keep their mask. FAVOR+ is an estimate, with no double
// counterpart of its own: its heads are refused, naming the exact attention it approximates.
template <typename Run>
void reference_by_batch(const TensorD& q, const TensorD& k, const MaskSet& set, int64_t layer, const char* what,
                        int threads, const Run& run) {
    for (int64_t h = 0; h < set.heads; ++h) {
        if (layer_head_kind(set, layer, h) != LayerHeadKind::favor) continue;
        throw Error(std::string(what) + ": layer " + std::to_string(layer) + ", head " + std::to_string(h) +
                    " is favor: FAVOR+ estimates softmax attention and has no double-precision reference of its own "
                    "(compare it with exact attention: sparsa.favor_error_curve, or `sparsa run --check`; or run it in float32)");
    }
    const Tensor qf = tensor_cast<float>(q), kf = tensor_cast<float>(k);
    const ContentArrays arrays = content_arrays_of(set);
    LayerOptions options;
    options.threads = threads;
    options.arrays = &arrays;
    for (int64_t b = 0; b < q.shape.batch; ++b) run(b, layer_reference_masks(qf, kf, set, layer, b, options));
}

py::tuple reference_py(const py::handle& q_obj, const py::handle& k_obj, const py::handle& v_obj, const PyMaskSet& m,
                       int64_t layer, double scale, int threads) {
    auto args = std::vector{named("q", q_obj), named("k", k_obj), named("v", v_obj)};
    attention_args_check(args, m.set, layer);
    TensorD q = tensor_from<double>(args[0].second), k = tensor_from<double>(args[1].second), v = tensor_from<double>(args[2].second);
    ReferenceOptions options;
    options.scale = scale;
    options.threads = threads;
    ReferenceOutput out;
    if (layer_has_content(m.set, layer)) {
        py::gil_scoped_release release;
        out.o = tensor_zeros<double>(q.shape);
        out.lse = tensor_zeros<double>({q.shape.batch, q.shape.heads, q.shape.n, 1});
        reference_by_batch(q, k, m.set, layer, "reference", threads, [&](int64_t b, const MaskSet& allowed) {
            const ReferenceOutput r = reference_forward(batch_take(q, b), batch_take(k, b), batch_take(v, b), allowed, 0, options);
            batch_put(out.o, b, r.o);
            batch_put(out.lse, b, r.lse);
        });
    } else {
        py::gil_scoped_release release;
        out = reference_forward(q, k, v, m.set, layer, options);
    }
    return py::make_tuple(array_from(std::move(out.o)), array_from(std::move(out.lse), true));
}

py::tuple reference_backward_py(const py::handle& q_obj, const py::handle& k_obj, const py::handle& v_obj,
                                const py::handle& do_obj, const PyMaskSet& m, int64_t layer, double scale, int threads) {
    auto args = std::vector{named("q", q_obj), named("k", k_obj), named("v", v_obj), named("d_o", do_obj)};
    attention_args_check(args, m.set, layer);
    TensorD q = tensor_from<double>(args[0].second), k = tensor_from<double>(args[1].second), v = tensor_from<double>(args[2].second);
    TensorD d_o = tensor_from<double>(args[3].second);
    ReferenceOptions options;
    options.scale = scale;
    options.threads = threads;
    ReferenceGrads grads;
    if (layer_has_content(m.set, layer)) {
        py::gil_scoped_release release;
        grads.dq = tensor_zeros<double>(q.shape);
        grads.dk = tensor_zeros<double>(q.shape);
        grads.dv = tensor_zeros<double>(q.shape);
        reference_by_batch(q, k, m.set, layer, "reference_backward", threads, [&](int64_t b, const MaskSet& allowed) {
            const ReferenceGrads r =
                reference_backward(batch_take(q, b), batch_take(k, b), batch_take(v, b), batch_take(d_o, b), allowed, 0, options);
            batch_put(grads.dq, b, r.dq);
            batch_put(grads.dk, b, r.dk);
            batch_put(grads.dv, b, r.dv);
        });
    } else {
        py::gil_scoped_release release;
        grads = reference_backward(q, k, v, d_o, m.set, layer, options);
    }
    return py::make_tuple(array_from(std::move(grads.dq)), array_from(std::move(grads.dk)), array_from(std::move(grads.dv)));
}

// [SECTION] receptive

ReachResolution resolution_parse(const std::string& text, int64_t n) {
    if (text == "auto") return reach_resolution_auto(n);
    if (text == "token") return ReachResolution::token;
    if (text == "block") return ReachResolution::block;
    value_error("resolution: expected 'auto', 'token' or 'block', got '" + text + "'");
}

// Bitsets [words] over n positions as a bool array [n].
void bits_to_bools(const std::vector<uint64_t>& bits, int64_t n, bool* out) {
    for (int64_t t = 0; t < n; ++t) out[t] = bits_test(bits.data(), t);
}

struct TokenReachView {
    int64_t token = 0;
    std::string direction;
    py::array sizes;          // [layers + 1] int64
    int64_t layers_to_all = -1;
    py::object sets;          // [layers + 1, n] bool when kept, else None
};

TokenReachView reach_token_py(const PyMaskSet& m, int64_t token, const std::string& direction, bool keep_sets) {
    if (direction != "in" && direction != "out") value_error("direction: expected 'in' or 'out', got '" + direction + "'");
    if (token < 0 || token >= m.set.n) {
        value_error("token " + std::to_string(token) + " is out of range: n = " + std::to_string(m.set.n) + " (0.." +
                    std::to_string(m.set.n - 1) + ")");
    }
    const ReachDirection dir = direction == "in" ? ReachDirection::in : ReachDirection::out;
    TokenReach reach;
    {
        py::gil_scoped_release release;
        const ReachGraph graph = reach_graph_make(m.set, dir == ReachDirection::out);
        reach = receptive_field_token(graph, token, dir, keep_sets);
    }
    TokenReachView v;
    v.token = reach.token;
    v.direction = direction;
    v.sizes = array_copy(reach.sizes);
    v.layers_to_all = reach.layers_to_all;
    v.sets = py::none();
    if (keep_sets) {
        const int64_t n = m.set.n, rows = static_cast<int64_t>(reach.sets.size());
        py::array_t<bool> sets({rows, n});
        for (int64_t l = 0; l < rows; ++l) bits_to_bools(reach.sets[static_cast<size_t>(l)], n, sets.mutable_data() + l * n);
        v.sets = sets;
    }
    return v;
}

ReachCoverage reach_coverage_py(const PyMaskSet& m, const std::string& resolution, int64_t max_layers, int64_t max_nodes, int threads) {
    ReachOptions options;
    options.resolution = resolution_parse(resolution, m.set.n);
    if (max_layers < 0) value_error("max_layers: expected >= 0 (0: no limit), got " + std::to_string(max_layers));
    if (max_nodes < 1) value_error("max_nodes: expected >= 1, got " + std::to_string(max_nodes));
    options.max_layers = max_layers;
    options.max_nodes = max_nodes;
    options.threads = threads;
    py::gil_scoped_release release;
    return receptive_field_coverage(m.set, options);
}

// R_l for every layer of the set: [layers, n, n] bool, [l, q, k] true when query q has seen key
// k after layer l + 1 (0-based as the script's `l`). Limited to 1 GiB of output.
py::array reach_dense_py(const PyMaskSet& m, int threads) {
    const int64_t n = m.set.n, layers = m.set.layers;
    if (n > kMaxDenseN || static_cast<double>(layers) * static_cast<double>(n) * static_cast<double>(n) > double(1 << 30)) {
        value_error("reach_dense: layers x n x n = " + std::to_string(layers) + " x " + std::to_string(n) + " x " + std::to_string(n) +
                    " bytes is too large (n <= 8192 and at most 1 GiB); use reach_token(...) for one token at any n");
    }
    py::array_t<bool> out({layers, n, n});
    bool* data = out.mutable_data();
    ReachOptions options;
    options.resolution = ReachResolution::token;
    options.threads = threads;
    options.max_layers = layers;
    options.on_layer = [&](int64_t layer, const std::vector<uint64_t>& rows, int64_t words) {
        bool* plane = data + (layer - 1) * n * n;
        for (int64_t q = 0; q < n; ++q) {
            const uint64_t* row = rows.data() + q * words;
            for (int64_t k = 0; k < n; ++k) plane[q * n + k] = bits_test(row, k);
        }
    };
    py::gil_scoped_release release;
    receptive_field_coverage(m.set, options);
    return out;
}

// [SECTION] cuda

#ifdef SPARSA_HAVE_CUDA
CudaDtype cuda_dtype_parse(const std::string& text) {
    if (text == "float32" || text == "fp32") return CudaDtype::float32;
    if (text == "bf16" || text == "bfloat16") return CudaDtype::bfloat16;
    if (text == "fp16" || text == "float16") return CudaDtype::float16;
    value_error("dtype: expected 'bf16', 'fp16' or 'float32', got '" + text + "'");
}

// One engine for the process, created on first use and never destroyed (its device buffers are
// reused; freeing them during interpreter exit would race the CUDA runtime's own teardown).
CudaAttention& cuda_engine() {
    static CudaAttention* engine = new CudaAttention();
    return *engine;
}

// Adds _CudaLayerMasks and _cuda_shutdown, sparsa.torch's GPU path, and content_attention_cuda (bind_cuda.cpp).
void bind_cuda(py::module_& m);
py::tuple content_attention_cuda_py(const py::handle& q_obj, const py::handle& k_obj, const py::handle& v_obj, const PyMaskSet& s,
                                    int64_t layer, const std::string& dtype, float scale, int repeats);
#endif

#ifndef SPARSA_HAVE_CUDA
const char* const kNoCuda =
    "sparsa was built without the CUDA engine (configured with SPARSA_CUDA=OFF, or no nvcc was found); "
    "install the CUDA toolkit (nvcc), reconfigure and rebuild to use attention_cuda()";
#endif

} // namespace sparsa::python

using namespace sparsa;
using namespace sparsa::python;

PYBIND11_MODULE(_sparsa, m) {
    m.doc() = "sparsa: pattern scripts, block-sparse masks, attention engines and receptive fields (see docs/python.md)";

    // SIGTERM and SIGHUP kill Python at once, in the middle of a save: remove the temporary
    // file first. SIGINT stays Python's own: it raises KeyboardInterrupt once the save returns,
    // which leaves no temporary file either (tests/python/test_signals.py checks both).
    install_temp_file_cleanup();

    // [SECTION] errors
    static py::exception<Error> error_type(m, "Error", PyExc_ValueError);
    static py::exception<dsl::ScriptError> script_error_type(m, "ScriptError", error_type.ptr());
    error_type.doc() = "Bad input to sparsa (a file, a shape, a parameter); a ValueError. The message says what and how to fix it.";
    script_error_type.doc() =
        "A pattern script that does not check or compile. str(e) and e.message are the diagnostics exactly as the CLI prints "
        "them (FILE:LINE:COLUMN, the line, a caret); e.file, e.line, e.column locate the first error; e.diagnostics lists all.";

    py::class_<DiagnosticView>(m, "Diagnostic", "One diagnostic of a pattern script: where, what, and the CLI's text.")
        .def_readonly("severity", &DiagnosticView::severity, "'error' or 'warning'")
        .def_readonly("file", &DiagnosticView::file, "the script's name as shown ('' when about no place)")
        .def_readonly("line", &DiagnosticView::line, "1-based (0 when about no place)")
        .def_readonly("column", &DiagnosticView::column, "1-based, in characters")
        .def_readonly("message", &DiagnosticView::message)
        .def_readonly("hint", &DiagnosticView::hint)
        .def_readonly("text", &DiagnosticView::text, "the full text with the caret, as `sparsa check` prints it")
        .def("__str__", [](const DiagnosticView& d) { return d.text; })
        .def("__repr__", [](const DiagnosticView& d) {
            return "<Diagnostic " + d.severity + " " + d.file + ":" + std::to_string(d.line) + ":" + std::to_string(d.column) + ": " +
                   d.message + ">";
        });

    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const dsl::ScriptError& e) {
            std::vector<DiagnosticView> views = diagnostic_views(e.diagnostics());
            std::string text;
            for (const auto& v : views) text += v.text;
            const DiagnosticView* first = nullptr;
            for (const auto& v : views) {
                if (v.severity == "error") {
                    first = &v;
                    break;
                }
            }
            if (first == nullptr && !views.empty()) first = &views.front();
            py::object exc = py::handle(script_error_type.ptr())(text);
            exc.attr("message") = text;
            exc.attr("file") = first ? first->file : std::string();
            exc.attr("line") = first ? first->line : 0;
            exc.attr("column") = first ? first->column : 0;
            exc.attr("diagnostics") = py::cast(views);
            PyErr_SetObject(script_error_type.ptr(), exc.ptr());
        } catch (const Error& e) {
            PyErr_SetString(error_type.ptr(), e.what());
        }
    });

    // [SECTION] scripts
    // MaskSet is declared first so that signatures name it (Script.compile(...) -> sparsa.MaskSet);
    // its methods follow in [SECTION] mask sets.
    py::class_<PyMaskSet, PyMaskSetPtr> mask_set_type(m, "MaskSet",
                                                      "One block-sparse mask per (layer, head), from a compiled script or a file.");
    py::class_<PyScript>(m, "Script", "A parsed and checked pattern script; compile(n) gives its MaskSet.")
        .def_property_readonly("name", [](const PyScript& s) { return dsl::script_source(*s.script).name; })
        .def_property_readonly("text", [](const PyScript& s) { return dsl::script_source(*s.script).text; })
        .def_property_readonly("block", [](const PyScript& s) { return dsl::script_settings(*s.script).block; })
        .def_property_readonly("heads", [](const PyScript& s) { return dsl::script_settings(*s.script).heads; })
        .def_property_readonly("layers", [](const PyScript& s) { return dsl::script_settings(*s.script).layers; })
        .def_property_readonly("causal", [](const PyScript& s) { return dsl::script_settings(*s.script).causal; })
        .def_property_readonly("warnings", [](const PyScript& s) { return diagnostic_views(dsl::script_warnings(*s.script)); },
                               "warnings found while checking (before any compile)")
        .def("compile", &script_compile_py, py::arg("n"), py::arg("block") = 0, py::arg("threads") = 0,
             "Compiles for sequence length n: a MaskSet (one BlockMask per (layer, head)). block 0: the script's. "
             "Raises ScriptError for errors that depend on n.")
        .def("evaluate", [](const PyScript& s, int64_t n, int32_t block) {
                 return diagnostic_views(dsl::script_evaluate_all(*s.script, n, block));
             }, py::arg("n"), py::arg("block") = 0,
             "Evaluates every (layer, head) at n, as `sparsa check --n` does: the warnings; raises ScriptError on an error.")
        .def("__repr__", [](const PyScript& s) {
            const auto& st = dsl::script_settings(*s.script);
            return "<Script " + dsl::script_source(*s.script).name + ": " + std::to_string(st.layers) + " layers x " +
                   std::to_string(st.heads) + " heads, block " + std::to_string(st.block) + (st.causal ? ", causal" : "") + ">";
        });

    m.def("parse", [](std::string text, std::string name) { return PyScript{dsl::script_parse(std::move(text), std::move(name))}; },
          py::arg("text"), py::arg("name") = "<string>",
          "Parses and checks a script given as text; `name` is shown in diagnostics. Raises ScriptError.");
    m.def("load_script", [](const std::string& path) { return PyScript{dsl::script_load(path)}; }, py::arg("path"),
          "Reads, parses and checks a script file (imports resolve next to it). Raises ScriptError or Error.");

    // [SECTION] mask sets
    py::class_<BlockMaskStats>(m, "MaskStats", "Counts over one (layer, head) mask.")
        .def_readonly("kept_blocks", &BlockMaskStats::kept_blocks)
        .def_readonly("full_blocks", &BlockMaskStats::full_blocks)
        .def_readonly("partial_blocks", &BlockMaskStats::partial_blocks)
        .def_readonly("kept_pairs", &BlockMaskStats::kept_pairs, "allowed (query, key) pairs")
        .def_readonly("empty_rows", &BlockMaskStats::empty_rows, "queries with no allowed key")
        .def_readonly("first_empty_row", &BlockMaskStats::first_empty_row)
        .def_readonly("density", &BlockMaskStats::density, "kept_pairs / n^2")
        .def_readonly("mask_bytes", &BlockMaskStats::mask_bytes)
        .def("__repr__", [](const BlockMaskStats& s) {
            return "MaskStats(kept_blocks=" + std::to_string(s.kept_blocks) + ", full_blocks=" + std::to_string(s.full_blocks) +
                   ", partial_blocks=" + std::to_string(s.partial_blocks) + ", kept_pairs=" + std::to_string(s.kept_pairs) +
                   ", empty_rows=" + std::to_string(s.empty_rows) + ", density=" + std::to_string(s.density) + ")";
        });

    mask_set_type
        .def_property_readonly("n", [](const PyMaskSet& s) { return s.set.n; })
        .def_property_readonly("block", [](const PyMaskSet& s) { return s.set.block; })
        .def_property_readonly("layers", [](const PyMaskSet& s) { return s.set.layers; })
        .def_property_readonly("heads", [](const PyMaskSet& s) { return s.set.heads; })
        .def_property_readonly("script_name", [](const PyMaskSet& s) { return s.set.script_name; })
        .def_property_readonly("script_text", [](const PyMaskSet& s) { return s.set.script_text; })
        .def_property_readonly("params", [](const PyMaskSet& s) { return s.set.params; })
        .def_property_readonly("warnings", [](const PyMaskSet& s) { return s.warnings; }, "the compile's warnings (empty rows, clamps)")
        .def_property_readonly("content", [](const PyMaskSet& s) {
                 // [layers][heads]: the head's content-based spec as a dict (the mask file's JSON,
                 // docs/formats.md), or None for a head that is its fixed mask alone.
                 const py::object loads = py::module_::import("json").attr("loads");
                 py::list layers;
                 for (int64_t l = 0; l < s.set.layers; ++l) {
                     py::list heads;
                     for (int64_t h = 0; h < s.set.heads; ++h) {
                         const auto* spec = s.set.content.empty() ? nullptr : s.set.content[static_cast<size_t>(l * s.set.heads + h)].get();
                         heads.append(spec == nullptr ? py::object(py::none()) : loads(content_spec_json(*spec)));
                     }
                     layers.append(heads);
                 }
                 return layers;
             },
             "[layers][heads]: each head's content-based spec (lsh, anchors, favor) as a dict, or None; the mask is "
             "then its fixed part, and the spec's pairs are realised per input")
        .def_property_readonly("unique_masks", [](const PyMaskSet& s) { return s.set.unique_masks().size(); },
                               "distinct masks (equal ones are stored once)")
        .def_property_readonly("density", [](const PyMaskSet& s) { return mask_set_mean_density(s.set); },
                               "mean over (layer, head) of kept pairs / n^2")
        .def("stats", [](const PyMaskSet& s, int64_t layer, int64_t head) {
                 mask_index_check(s.set, layer, head);
                 return block_mask_stats(s.set.at(layer, head));
             }, py::arg("layer") = 0, py::arg("head") = 0, "Counts of the (layer, head) mask: blocks, pairs, density, empty rows.")
        .def("densities", [](const PyMaskSet& s) {
                 py::array_t<double> d({s.set.layers, s.set.heads});
                 for (int64_t l = 0; l < s.set.layers; ++l) {
                     for (int64_t h = 0; h < s.set.heads; ++h) d.mutable_at(l, h) = block_mask_stats(s.set.at(l, h)).density;
                 }
                 return d;
             }, "Density of every mask: [layers, heads] float64.")
        .def("allowed", [](const PyMaskSet& s, int64_t layer, int64_t head, int64_t q, int64_t k) {
                 mask_index_check(s.set, layer, head);
                 if (q < 0 || q >= s.set.n || k < 0 || k >= s.set.n) {
                     value_error("allowed: q = " + std::to_string(q) + ", k = " + std::to_string(k) + " must lie in [0, n = " +
                                 std::to_string(s.set.n) + ")");
                 }
                 return s.set.at(layer, head).allowed(q, k);
             }, py::arg("layer"), py::arg("head"), py::arg("q"), py::arg("k"), "Whether query q may attend to key k in (layer, head).")
        .def("to_dense", &mask_to_dense, py::arg("layer") = 0, py::arg("head") = 0,
             "The (layer, head) mask as a bool array [n, n] ([q, k] true when q may attend to k). Refuses n above 8192 "
             "(use block_grid).")
        .def("block_grid", &mask_block_grid, py::arg("layer") = 0, py::arg("head") = 0,
             "The block picture of (layer, head): int8 [q_blocks, k_blocks], 0 not kept, 1 partial, 2 full. Any n.")
        .def("csr", &mask_csr, py::arg("layer") = 0, py::arg("head") = 0,
             "The CSR arrays of (layer, head) as numpy copies: row_ptr, col_idx, partial_idx, bits [partial, B*B/64], block, n.")
        .def("save", [](const PyMaskSet& s, const std::string& path) {
                 py::gil_scoped_release release;
                 mask_set_save(s.set, path);
             }, py::arg("path"), "Saves to an .npz file (numpy reads it with no sparsa), written whole or not at all.")
        .def_static("load", [](const std::string& path) {
                 auto out = std::make_shared<PyMaskSet>();
                 py::gil_scoped_release release;
                 out->set = mask_set_load(path);
                 return out;
             }, py::arg("path"), "Loads an .npz written by save() or `sparsa compile -o`, checking everything. Raises Error.")
        .def("png", &mask_set_png_py, py::arg("layer") = py::none(), py::arg("head") = py::none(), py::arg("width") = 0,
             "A PNG file's bytes: the figure of mask (layer, head) (width x width pixels, default 640), or with neither "
             "the overview of every (layer, head) (width default 1200; the height follows). Drawn in C++, no matplotlib. "
             "Raises Error for a width outside 240 to 8192 or one too narrow for the heads (the message says what fits).")
        .def("_repr_png_", &mask_set_repr_png,
             "The overview a notebook shows: the first 16 heads and as many first layers as make 64 panels, 800 pixels wide.")
        .def("__repr__", [](const PyMaskSet& s) {
            char density[32];
            std::snprintf(density, sizeof density, "%.2f%%", 100 * mask_set_mean_density(s.set));
            return "<MaskSet n=" + std::to_string(s.set.n) + ", block " + std::to_string(s.set.block) + ", " +
                   std::to_string(s.set.layers) + " layers x " + std::to_string(s.set.heads) + " heads, density " + density + ">";
        });

    m.def("mask_set_from_dense", &mask_set_from_dense_py, py::arg("dense"), py::arg("block") = 64,
          "A MaskSet from bool matrices: [n, n] (one layer, one head) or [layers, heads, n, n]; [.., q, k] true when q may attend to k.");

    // [SECTION] attention
    m.def("attention", &attention_py, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("masks"), py::arg("layer") = 0,
          py::arg("scale") = 0.0F, py::arg("threads") = 0,
          R"(Block-sparse attention with the CPU engine (exact in float32): returns (o, lse).

q, k, v: numpy arrays [batch, heads, n, d]; head h uses mask (layer, h). Any floating dtype and any
strides are accepted: the arrays are converted to C-order float32 (float64 is rounded to float32),
one copy each, which the engine's tensors need anyway. Integer arrays raise ValueError.
Returns o [batch, heads, n, d] float32 and lse [batch, heads, n] float32 (-inf for rows with no
allowed key, where o is 0), both owning the engine's buffers (no copy). scale 0: 1 / sqrt(d).
Raises ValueError naming the argument for wrong shapes, and sparsa.Error for NaN or Inf inputs.)");
    m.def("attention_backward", &attention_backward_py, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"),
          py::arg("d_o"), py::arg("masks"), py::arg("layer") = 0, py::arg("scale") = 0.0F, py::arg("threads") = 0,
          R"(Gradients of sum(d_o * o) with respect to q, k and v, with the CPU engine: returns (dq, dk, dv).

o and lse are what attention() returned for the same q, k, v; d_o is [batch, heads, n, d]. Arrays
are converted as attention() converts them. Each gradient is float32 [batch, heads, n, d].)");
    m.def("reference", &reference_py, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("masks"), py::arg("layer") = 0,
          py::arg("scale") = 0.0, py::arg("threads") = 0,
          R"(The dense reference: masked attention computed plainly in double precision, returns (o, lse) as float64.

q, k, v: [batch, heads, n, d], any floating dtype (converted to float64; float32 converts exactly).
Slow on purpose: the oracle the engines are tested against.)");
    m.def("reference_backward", &reference_backward_py, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("d_o"),
          py::arg("masks"), py::arg("layer") = 0, py::arg("scale") = 0.0, py::arg("threads") = 0,
          "The reference's gradients of sum(d_o * o) in float64: returns (dq, dk, dv), each [batch, heads, n, d].");
    m.def("thread_count", &thread_count, "Threads the engines use: SPARSA_THREADS when set, else the core count.");

    // [SECTION] content (bind_content.cpp)
    bind_content(m);

    // [SECTION] receptive
    py::class_<ReachCoverage>(m, "ReachCoverage", "Coverage of all (query, key) pairs after each layer (receptive fields).")
        .def_property_readonly("resolution", [](const ReachCoverage& c) { return std::string(reach_resolution_name(c.resolution)); })
        .def_readonly("n", &ReachCoverage::n)
        .def_readonly("layers", &ReachCoverage::layers, "the set's layers; past them the last layer repeats")
        .def_readonly("nodes", &ReachCoverage::nodes)
        .def_readonly("node_tokens", &ReachCoverage::node_tokens)
        .def_readonly("causal", &ReachCoverage::causal, "every mask keeps only k <= q (then only those pairs count)")
        .def_readonly("target_pairs", &ReachCoverage::target_pairs)
        .def_property_readonly("connected", [](const ReachCoverage& c) { return array_copy(c.connected); },
                               "[computed + 1] int64: pairs connected after layer l (l = 0: before any layer)")
        .def_property_readonly("fractions", [](const ReachCoverage& c) {
                                   py::array_t<double> f(static_cast<py::ssize_t>(c.connected.size()));
                                   for (size_t l = 0; l < c.connected.size(); ++l) f.mutable_at(l) = c.fraction(static_cast<int64_t>(l));
                                   return f;
                               }, "connected / target_pairs after each layer")
        .def("fraction", &ReachCoverage::fraction, py::arg("layer"))
        .def_readonly("layers_needed", &ReachCoverage::layers_needed, "first l connecting every pair; -1: never (or stopped)")
        .def_readonly("saturation_layers", &ReachCoverage::saturation_layers)
        .def_readonly("stopped", &ReachCoverage::stopped)
        .def_readonly("out_of_reach", &ReachCoverage::out_of_reach, "pairs not connected after the set's layers")
        .def_readonly("never_pairs", &ReachCoverage::never_pairs)
        .def_readonly("never_reason", &ReachCoverage::never_reason)
        .def("__repr__", [](const ReachCoverage& c) {
            return "<ReachCoverage " + std::string(reach_resolution_name(c.resolution)) + " n=" + std::to_string(c.n) +
                   ", layers_needed=" + std::to_string(c.layers_needed) + ", out_of_reach=" + std::to_string(c.out_of_reach) + ">";
        });
    m.def("reach_coverage", &reach_coverage_py, py::arg("masks"), py::arg("resolution") = "auto", py::arg("max_layers") = 0,
          py::arg("max_nodes") = 8192, py::arg("threads") = 0,
          "How many pairs each layer connects (residual connections), and the layers needed to connect all. "
          "resolution 'token' is exact (n up to ~8192), 'block' over-approximates, 'auto' picks by n.");

    py::class_<TokenReachView>(m, "TokenReach", "The receptive field of one token, layer by layer.")
        .def_readonly("token", &TokenReachView::token)
        .def_readonly("direction", &TokenReachView::direction)
        .def_readonly("sizes", &TokenReachView::sizes, "[layers + 1] int64: field size after layer l (sizes[0] = 1)")
        .def_readonly("layers_to_all", &TokenReachView::layers_to_all, "first l whose field is all n; -1 when not within the layers")
        .def_readonly("sets", &TokenReachView::sets, "[layers + 1, n] bool when keep_sets, else None");
    m.def("reach_token", &reach_token_py, py::arg("masks"), py::arg("token"), py::arg("direction") = "in",
          py::arg("keep_sets") = false,
          "The field of one token after each layer: direction 'in', the keys query `token` has seen; 'out', the queries that "
          "have seen key `token`. Exact at any n.");
    m.def("reach_warning", [](const PyMaskSet& s, int threads) {
              ReachWarning w;
              {
                  py::gil_scoped_release release;
                  w = receptive_field_unreached(s.set, threads);
              }
              py::dict d;
              d["warn"] = w.warn;
              d["message"] = w.message;
              d["hint"] = w.hint;
              d["coverage"] = w.coverage;
              return d;
          }, py::arg("masks"), py::arg("threads") = 0,
          "The compiler's 'cannot reach within `layers` layers' check: a dict with warn, message, hint, coverage.");
    m.def("reach_dense", &reach_dense_py, py::arg("masks"), py::arg("threads") = 0,
          "R_l for each layer: bool [layers, n, n], [l, q, k] true when query q has seen key k after layer l + 1 "
          "(n <= 8192, at most 1 GiB).");

    // [SECTION] cuda
#ifdef SPARSA_HAVE_CUDA
    m.attr("cuda_built") = true;
    m.def("cuda_available", []() {
              std::string why;
              const bool ok = cuda_device_available(&why);
              return py::make_tuple(ok, why);
          }, "(True, '') when a GPU can run the CUDA engine, else (False, why).");
    m.def("cuda_device_name", &cuda_device_name);
    m.def("attention_cuda", [](const py::handle& q_obj, const py::handle& k_obj, const py::handle& v_obj, const PyMaskSet& s,
                               int64_t layer, const std::string& dtype, int kernel, float scale) -> py::tuple {
              if (layer >= 0 && layer < s.set.layers && layer_has_content(s.set, layer)) {   // the content engine
                  const py::tuple out = content_attention_cuda_py(q_obj, k_obj, v_obj, s, layer, dtype, scale, 1);
                  return py::make_tuple(out[0], out[1]);   // (o, lse): the device times stay behind
              }
              auto args = std::vector{named("q", q_obj), named("k", k_obj), named("v", v_obj)};
              attention_args_check(args, s.set, layer);
              Tensor q = tensor_from<float>(args[0].second), k = tensor_from<float>(args[1].second), v = tensor_from<float>(args[2].second);
              CudaAttentionOptions options;
              options.dtype = cuda_dtype_parse(dtype);
              options.kernel = kernel;
              options.scale = scale;
              std::string why;
              if (!cuda_device_available(&why)) throw py::value_error("attention_cuda: no usable GPU here: " + why);
              AttentionOutput out;
              {
                  py::gil_scoped_release release;
                  out = cuda_engine().forward(q, k, v, s.set, layer, options);
              }
              return py::make_tuple(array_from(std::move(out.o)), array_from(std::move(out.lse), true));
          }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("masks"), py::arg("layer") = 0, py::arg("dtype") = "bf16",
          py::arg("kernel") = 0, py::arg("scale") = 0.0F,
          "Forward attention with the CUDA engine: returns (o, lse) as float32. q, k, v as for attention(), rounded to dtype "
          "('bf16', 'fp16' or 'float32') on the GPU. kernel: attn_fwd_kernel<N> (1 to 19); 0: the engine's choice "
          "(cuda_auto_kernel: 1 for float32; for bf16 / fp16 on compute capability 9.0 15, 18 or 19 by the masks' tile "
          "lengths, else 7 or 9 by their step counts). A layer "
          "with content-based heads runs on the CUDA content engine (content_attention_cuda; kernel is then ignored).");
    m.def("round_to", [](const py::handle& x_obj, const std::string& dtype) {
              py::array a = array_checked(x_obj, "x", 4, "[batch, heads, n, d]");
              return array_from(tensor_round_to(tensor_from<float>(a), cuda_dtype_parse(dtype)));
          }, py::arg("x"), py::arg("dtype"),
          "x rounded to dtype and back to float32 (what the GPU sees), so the CPU engine can run the same inputs.");
    bind_cuda(m);
#else
    m.attr("cuda_built") = false;
    m.def("cuda_available", []() { return py::make_tuple(false, std::string(kNoCuda)); },
          "(True, '') when a GPU can run the CUDA engine, else (False, why).");
    m.def("attention_cuda", [](py::args, py::kwargs) -> py::object { throw std::runtime_error(kNoCuda); },
          "Unavailable: this build has no CUDA engine (raises RuntimeError saying so).");
    m.def("content_attention_cuda", [](py::args, py::kwargs) -> py::object { throw std::runtime_error(kNoCuda); },
          "Unavailable: this build has no CUDA engine (raises RuntimeError saying so).");
#endif

    // [SECTION] learn
#ifdef SPARSA_HAVE_LEARN
    m.attr("learn_built") = true;
    bind_learn(m);
#else
    m.attr("learn_built") = false;
#endif
}
