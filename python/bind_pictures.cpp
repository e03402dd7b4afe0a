// MaskSet's pictures: the C++ figures of plot/ (one mask, or every (layer, head)) as PNG bytes,
// for MaskSet.png() and a notebook's _repr_png_, with no matplotlib.
#include "python/module.hpp"

#include "plot/mask_figure.hpp"

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sparsa::python {

namespace {

// What a notebook draws for a MaskSet by itself (_repr_png_): the overview, cut to the first
// kReprHeads heads and as many first layers as keep kReprPanels panels, at kReprWidth pixels, so
// that a 96 x 96 set or n = 1M stays a small PNG made quickly (MaskSet.png() draws everything).
constexpr int64_t kReprPanels = 64, kReprHeads = 16;
constexpr int kReprWidth = 800;

// Layers [0, layers) and heads [0, heads) of `set` as the pictures title it, sharing its masks
// (no copy): without the name "<string>" of a script given as text, and, when some are left out,
// saying which are shown (the overview's labels and title count only what is drawn).
MaskSet mask_set_shown(const MaskSet& set, int64_t layers, int64_t heads) {
    MaskSet out;
    out.n = set.n;
    out.block = set.block;
    out.layers = layers;
    out.heads = heads;
    for (int64_t l = 0; l < layers; ++l) {
        for (int64_t h = 0; h < heads; ++h) {
            const size_t i = static_cast<size_t>(l * set.heads + h);
            out.masks.push_back(set.masks[i]);
            if (!set.content.empty()) out.content.push_back(set.content[i]);  // content heads are labelled by family
        }
    }
    out.script_name = set.script_name == "<string>" ? std::string() : set.script_name;
    if (layers < set.layers || heads < set.heads) {
        out.script_name += (out.script_name.empty() ? "" : " ") + std::string("(showing layers 0-") + std::to_string(layers - 1) +
                           " of " + std::to_string(set.layers) + ", heads 0-" + std::to_string(heads - 1) + " of " +
                           std::to_string(set.heads) + ")";
    }
    return out;
}

py::bytes bytes_from(const std::vector<uint8_t>& data) {
    return py::bytes(reinterpret_cast<const char*>(data.data()), static_cast<py::ssize_t>(data.size()));
}

// None, or a whole number (a bool or a float is a mistake here, not an index).
std::optional<int64_t> index_or_none(const py::handle& obj, const char* name) {
    if (obj.is_none()) return std::nullopt;
    if (PyBool_Check(obj.ptr()) || !PyIndex_Check(obj.ptr())) {
        throw py::type_error(std::string("MaskSet.png(): ") + name + " must be an integer or None, not " +
                             std::string(Py_TYPE(obj.ptr())->tp_name) + " " + std::string(py::repr(obj)));
    }
    return obj.cast<int64_t>();
}

} // namespace

// MaskSet.png: one mask's figure when layer and head are given, the overview when neither is.
py::bytes mask_set_png_py(const PyMaskSet& m, const py::object& layer_obj, const py::object& head_obj, int width) {
    const std::optional<int64_t> layer = index_or_none(layer_obj, "layer"), head = index_or_none(head_obj, "head");
    if (layer.has_value() != head.has_value()) {
        value_error(std::string("MaskSet.png(): ") + (layer ? "layer" : "head") + " given without " + (layer ? "head" : "layer") +
                    " (give both for one mask's figure, or neither for the overview of every layer and head)");
    }
    std::vector<uint8_t> png;
    if (layer) {
        mask_index_check(m.set, *layer, *head);
        py::gil_scoped_release release;
        png = mask_figure_png(mask_set_shown(m.set, m.set.layers, m.set.heads), *layer, *head, width == 0 ? 640 : width,
                              width == 0 ? 640 : width);
    } else {
        py::gil_scoped_release release;
        png = mask_overview_png(mask_set_shown(m.set, m.set.layers, m.set.heads), width == 0 ? 1200 : width);
    }
    return bytes_from(png);
}

py::bytes mask_set_repr_png(const PyMaskSet& m) {
    const int64_t heads = std::min(m.set.heads, kReprHeads);
    const int64_t layers = std::min(m.set.layers, std::max<int64_t>(1, kReprPanels / heads));
    std::vector<uint8_t> png;
    {
        py::gil_scoped_release release;
        png = mask_overview_png(mask_set_shown(m.set, layers, heads), kReprWidth);
    }
    return bytes_from(png);
}

} // namespace sparsa::python
