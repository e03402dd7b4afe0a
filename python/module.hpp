// What the files of the _sparsa module share: the Python view of diagnostics and mask sets, and
// numpy <-> engine tensor conversions whose errors name the argument (sparsa_module.cpp defines
// the functions; bind_learn.cpp binds sparsa.learn with them, bind_content.cpp the reports of
// content-based heads).
#pragma once

#include "dsl/diagnostics.hpp"
#include "engine/block_mask.hpp"
#include "engine/content/content_arrays.hpp"
#include "engine/tensor.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace sparsa::python {

namespace py = pybind11;

// One diagnostic as Python sees it; `text` is exactly what the CLI prints for it.
struct DiagnosticView {
    std::string severity;  // "error" or "warning"
    std::string file;      // "" for a diagnostic about no particular place
    int line = 0, column = 0;
    std::string message, hint, text;
};

std::vector<DiagnosticView> diagnostic_views(const std::vector<dsl::Diagnostic>& diagnostics);

// A compiled MaskSet and the warnings its compile gave.
struct PyMaskSet {
    MaskSet set;
    std::vector<DiagnosticView> warnings;
};
using PyMaskSetPtr = std::shared_ptr<PyMaskSet>;

// Raises ValueError (sparsa.Error's base) with the message.
[[noreturn]] void value_error(const std::string& message);

// A numpy shape as Python prints it: "(2, 3)", "(4,)".
std::string shape_text(const py::array& a);

// The numpy array behind `obj`, checked to be a real floating array of `ndim` dimensions
// (`layout` names them in the error, e.g. "[batch, heads, n, d]").
py::array array_checked(const py::handle& obj, const std::string& name, py::ssize_t ndim, const char* layout);

// A copy of a floating array as the engine's C-order tensor of element T (float32 or float64;
// other float dtypes and any strides are converted). a: [batch, heads, n, d].
template <typename T> BasicTensor<T> tensor_from(const py::array& a) {
    auto c = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
    BasicTensor<T> t;
    t.shape = {c.shape(0), c.shape(1), c.shape(2), c.shape(3)};
    t.data.assign(c.data(), c.data() + c.size());
    return t;
}

// A tensor handed to numpy without a copy: the array owns the tensor's buffer.
// With drop_last, [batch, heads, n, 1] comes out as [batch, heads, n] (lse).
template <typename T> py::array array_from(BasicTensor<T>&& t, bool drop_last = false) {
    auto* owned = new std::vector<T>(std::move(t.data));
    py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    std::vector<py::ssize_t> shape = {t.shape.batch, t.shape.heads, t.shape.n};
    if (!drop_last) shape.push_back(t.shape.d);
    return py::array_t<T>(shape, owned->data(), owner);
}
// A numpy copy of a vector (1-D).
template <typename T> py::array array_copy(const std::vector<T>& v) {
    py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

// to_dense and content_allowed refuse larger n: an [n, n] bool matrix of 64 MiB is the most a
// notebook should draw.
constexpr int64_t kMaxDenseN = 8192;

// An argument as (its name, its array), checked to be [batch, heads, n, d].
std::pair<std::string, py::array> named(const char* name, const py::handle& obj);

// q, k, v (and the other [batch, heads, n, d] arguments) checked against each other and the
// mask set, naming the argument that is wrong.
void attention_args_check(const std::vector<std::pair<std::string, py::array>>& arrays, const MaskSet& set, int64_t layer);

// ValueError unless (layer, head) is in the set.
void mask_index_check(const MaskSet& set, int64_t layer, int64_t head);

// Whether layer `layer` has a content-based head (lsh, anchors, favor).
bool layer_has_content(const MaskSet& set, int64_t layer);

// The files the set's specs name (rotations, anchors, features), read on each call: small, and
// a file changed between calls is then seen (the mask file's CRC check refuses a changed one).
ContentArrays content_arrays_of(const MaskSet& set);

// MaskSet.png(layer, head, width): one mask's figure when layer and head are given, the
// overview of every (layer, head) when neither is; and what a notebook draws for a MaskSet by
// itself, the overview cut to a bounded number of panels (bind_pictures.cpp).
py::bytes mask_set_png_py(const PyMaskSet& m, const py::object& layer_obj, const py::object& head_obj, int width);
py::bytes mask_set_repr_png(const PyMaskSet& m);

// Adds content_report, content_allowed, favor_error_curve and favor_features (bind_content.cpp).
void bind_content(py::module_& m);

#ifdef SPARSA_HAVE_LEARN
// Adds the submodule sparsa.learn (bind_learn.cpp).
void bind_learn(py::module_& parent);
#endif

} // namespace sparsa::python
