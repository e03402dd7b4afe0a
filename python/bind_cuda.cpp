// The CUDA engine on memory someone else owns (sparsa.torch's GPU path): the private class
// _sparsa._CudaLayerMasks, one MaskSet layer's masks uploaded once; _cuda_top_k_columns, a
// per-input selection written as a top-k layout's columns; _cuda_block_pool, the pooled gate's
// block means and bounds; and content_attention_cuda, the CUDA content engine (lsh, anchors,
// favor: engine/cuda/content/content_cuda.hpp) on host arrays. The device calls take device pointers as
// integers (torch.Tensor.data_ptr()) and a cudaStream_t as an integer
// (torch.cuda.current_stream().cuda_stream), so this file needs no torch header. Built only where
// the CUDA engine is (python/CMakeLists.txt: target sparsa_cuda); the calls are
// engine/cuda/attention_cuda_device.hpp's, top_k_columns.hpp's and block_pool.hpp's.
//
// Why integers: the caller (python/sparsa/torch.py) has checked the tensors (device, dtype,
// contiguous [batch, heads, n, d], alignment) and allocated the outputs; what is left to check
// here is what the engine checks without reading the GPU (shapes against the masks, d against
// the kernels, the scale). The launches are asynchronous on the given stream; the GIL is released
// around them, and around the upload in the constructor.
#include "python/module.hpp"

#include "engine/cuda/attention_cuda_device.hpp"
#include "engine/cuda/select/block_pool.hpp"
#include "engine/cuda/content/content_cuda.hpp"
#include "engine/cuda/select/top_k_columns.hpp"
#include "engine/error.hpp"

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace sparsa::python {

namespace {

// Set at interpreter exit (sparsa.torch registers _cuda_shutdown with atexit): from then on the
// device masks are left to the process's end instead of freed while the CUDA runtime and
// PyTorch tear down in an order nobody controls.
bool g_exiting = false;

// Owns a CudaLayerMasks until exit; the Python object's lifetime is the cache's (sparsa.torch
// keeps one per (MaskSet, layer, device) and drops it with the MaskSet).
struct PyCudaLayerMasks {
    std::unique_ptr<CudaLayerMasks> masks;
    ~PyCudaLayerMasks() {
        if (g_exiting) (void)masks.release();   // leaked on purpose: see g_exiting
    }
};

// torch's dtype names as str(dtype) minus "torch.", and the engine's own.
CudaDtype device_dtype_parse(const std::string& text) {
    if (text == "bfloat16" || text == "bf16") return CudaDtype::bfloat16;
    if (text == "float16" || text == "fp16") return CudaDtype::float16;
    if (text == "float32" || text == "fp32") return CudaDtype::float32;
    value_error("_CudaLayerMasks: dtype '" + text + "' is not one the CUDA engine runs (bfloat16, float16 or float32)");
}

// A device pointer from Python: an integer, non-zero.
const void* pointer(std::uintptr_t address, const char* name) {
    if (address == 0) value_error(std::string("sparsa CUDA call: ") + name + " is a null pointer (pass tensor.data_ptr())");
    return reinterpret_cast<const void*>(address);
}
void* pointer_mut(std::uintptr_t address, const char* name) { return const_cast<void*>(pointer(address, name)); }

CudaDeviceCall call_make(std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, int64_t batch, int64_t heads, int64_t n,
                         int64_t d, const std::string& dtype, float scale, std::uintptr_t stream) {
    CudaDeviceCall call;
    call.q = pointer(q, "q");
    call.k = pointer(k, "k");
    call.v = pointer(v, "v");
    call.batch = batch;
    call.heads = heads;
    call.n = n;
    call.d = d;
    call.dtype = device_dtype_parse(dtype);
    call.scale = scale;
    call.stream = reinterpret_cast<void*>(stream);   // 0: the legacy default stream
    return call;
}

// One content engine for the process, created on first use and never destroyed (as
// sparsa_module.cpp's cuda_engine: its device buffers are reused; freeing them during interpreter
// exit would race the CUDA runtime's teardown). The mutex: the GIL is released while it runs.
CudaContentAttention& cuda_content_engine() {
    static CudaContentAttention* engine = new CudaContentAttention();
    return *engine;
}
std::mutex g_content_mutex;

// One MaskSet layer of content-based heads for the device path (sparsa.torch): the layer's numbers
// for head width d, drawn or read from the specs' files once. It holds no reference to the MaskSet
// (sparsa.torch caches it with the set's device copies and drops it with the set); forward takes
// the set again.
struct PyCudaContentLayer {
    int64_t layer = 0, d = 0;
    bool has_fixed = false;   // a head with fixed blocks beside its spec: forward_device refuses the layer
    CudaContentNumbers numbers;
};

} // namespace

py::tuple content_attention_cuda_py(const py::handle& q_obj, const py::handle& k_obj, const py::handle& v_obj, const PyMaskSet& s,
                                    int64_t layer, const std::string& dtype, float scale, int repeats) {
    auto args = std::vector{named("q", q_obj), named("k", k_obj), named("v", v_obj)};
    attention_args_check(args, s.set, layer);
    if (!layer_has_content(s.set, layer)) {
        value_error("content_attention_cuda: layer " + std::to_string(layer) +
                    " has no content-based head (lsh, anchors, favor): run it with attention_cuda");
    }
    if (repeats < 1) value_error("content_attention_cuda: repeats must be >= 1, got " + std::to_string(repeats));
    Tensor q = tensor_from<float>(args[0].second), k = tensor_from<float>(args[1].second), v = tensor_from<float>(args[2].second);
    const ContentArrays arrays = content_arrays_of(s.set);
    CudaContentOptions options;
    options.dtype = device_dtype_parse(dtype);
    options.scale = scale;
    std::string why;
    if (!cuda_device_available(&why)) value_error("content_attention_cuda: no usable GPU here: " + why);
    AttentionOutput out;
    CudaContentTimes t;
    {
        py::gil_scoped_release release;
        const std::lock_guard<std::mutex> lock(g_content_mutex);
        const CudaContentNumbers numbers = cuda_content_numbers(s.set, layer, q.shape.d, &arrays);
        CudaContentAttention& engine = cuda_content_engine();
        engine.prepare(q, k, v, s.set, layer, numbers, options);
        t = engine.run_median(repeats);
        out = engine.download();
    }
    py::dict times;
    times["fixed_ms"] = t.fixed_ms;
    times["bucketing_ms"] = t.bucketing_ms;
    times["attention_ms"] = t.attention_ms;
    times["merge_ms"] = t.merge_ms;
    times["total_ms"] = t.total_ms;
    times["repeats"] = repeats;
    return py::make_tuple(array_from(std::move(out.o)), array_from(std::move(out.lse), true), times);
}

void bind_cuda(py::module_& m) {
    py::class_<PyCudaLayerMasks>(m, "_CudaLayerMasks",
                                 "Layer `layer` of a MaskSet on the GPU (the current CUDA device), for sparsa.torch: "
                                 "forward and backward on device pointers. Private: use sparsa.torch.attention.")
        .def(py::init([](const PyMaskSet& s, int64_t layer) {
                 auto out = std::make_unique<PyCudaLayerMasks>();
                 py::gil_scoped_release release;
                 out->masks = std::make_unique<CudaLayerMasks>(s.set, layer);
                 return out;
             }),
             py::arg("masks"), py::arg("layer"))
        .def_property_readonly("n", [](const PyCudaLayerMasks& m) { return m.masks->n(); })
        .def_property_readonly("heads", [](const PyCudaLayerMasks& m) { return m.masks->heads(); })
        .def_property_readonly("block", [](const PyCudaLayerMasks& m) { return m.masks->block(); })
        .def_property_readonly("entries", [](const PyCudaLayerMasks& m) { return m.masks->entries(); },
                               "Kept blocks of the layer's distinct masks: the length of forward's columns.")
        .def("forward",
             [](PyCudaLayerMasks& m, std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t o,
                std::uintptr_t lse, int64_t batch, int64_t heads, int64_t n, int64_t d, const std::string& dtype,
                float scale, std::uintptr_t stream, std::uintptr_t columns) {
                 const CudaDeviceCall call = call_make(q, k, v, batch, heads, n, d, dtype, scale, stream);
                 void* o_ptr = pointer_mut(o, "o");
                 auto* lse_ptr = static_cast<float*>(pointer_mut(lse, "lse"));
                 py::gil_scoped_release release;
                 m.masks->forward(call, o_ptr, lse_ptr, reinterpret_cast<const int32_t*>(columns));
             },
             py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"), py::arg("batch"), py::arg("heads"),
             py::arg("n"), py::arg("d"), py::arg("dtype"), py::arg("scale"), py::arg("stream"), py::arg("columns") = 0,
             "Launches the forward on `stream`: o [batch, heads, n, d] (dtype) and lse [batch, heads, n] (float32) "
             "from contiguous q, k, v [batch, heads, n, d]. Pointers are data_ptr() integers; scale 0: 1 / sqrt(d). "
             "columns: 0, or an int32 device array of `entries` key blocks replacing the masks' (a top-k layout; "
             "CudaLayerMasks::forward with columns).")
        .def("backward",
             [](PyCudaLayerMasks& m, std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t o,
                std::uintptr_t lse, std::uintptr_t d_o, std::uintptr_t dq, std::uintptr_t dk, std::uintptr_t dv,
                std::uintptr_t delta, int64_t batch, int64_t heads, int64_t n, int64_t d, const std::string& dtype,
                float scale, std::uintptr_t stream) {
                 const CudaDeviceCall call = call_make(q, k, v, batch, heads, n, d, dtype, scale, stream);
                 const void* o_ptr = pointer(o, "o");
                 const auto* lse_ptr = static_cast<const float*>(pointer(lse, "lse"));
                 const void* d_o_ptr = pointer(d_o, "d_o");
                 void* dq_ptr = pointer_mut(dq, "dq");
                 void* dk_ptr = pointer_mut(dk, "dk");
                 void* dv_ptr = pointer_mut(dv, "dv");
                 auto* delta_ptr = static_cast<float*>(pointer_mut(delta, "delta"));
                 py::gil_scoped_release release;
                 m.masks->backward(call, o_ptr, lse_ptr, d_o_ptr, dq_ptr, dk_ptr, dv_ptr, delta_ptr);
             },
             py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"), py::arg("d_o"), py::arg("dq"),
             py::arg("dk"), py::arg("dv"), py::arg("delta"), py::arg("batch"), py::arg("heads"), py::arg("n"),
             py::arg("d"), py::arg("dtype"), py::arg("scale"), py::arg("stream"),
             "Launches the backward on `stream`: dq, dk, dv (dtype, [batch, heads, n, d]) from the forward's o and "
             "lse and the gradient d_o; delta is a float32 workspace of batch * heads * n.");
    m.def("_cuda_top_k_columns",
          [](std::uintptr_t scores, int64_t grids, int64_t blocks, int64_t keep, std::uintptr_t columns, std::uintptr_t stream) {
              const auto* scores_ptr = static_cast<const float*>(pointer(scores, "scores"));
              auto* columns_ptr = static_cast<int32_t*>(pointer_mut(columns, "columns"));
              py::gil_scoped_release release;
              cuda_top_k_columns(scores_ptr, grids, blocks, keep, columns_ptr, reinterpret_cast<void*>(stream));
          },
          py::arg("scores"), py::arg("grids"), py::arg("blocks"), py::arg("keep"), py::arg("columns"), py::arg("stream"),
          "Launches engine/cuda/select/top_k_columns.hpp's selection on `stream`: from float32 scores [grids, blocks, blocks] "
          "to the causal top-k layout's int32 columns (grids x top_k_columns_per_head). Private: use "
          "sparsa.torch.select_top_k.");
    m.attr("_cuda_top_k_max_blocks") = kTopKColumnsMaxBlocks;
    m.attr("_cuda_top_k_rows_max_floats") = kTopKRowsMaxFloats;
    m.def("_cuda_top_k_columns_rows",
          [](std::uintptr_t a, std::uintptr_t b, int64_t width, float divisor, int64_t grids, int64_t n, int64_t block, int64_t keep,
             std::uintptr_t columns, std::uintptr_t stream) {
              const auto* a_ptr = static_cast<const float*>(pointer(a, "a"));
              const auto* b_ptr = static_cast<const float*>(pointer(b, "b"));
              auto* columns_ptr = static_cast<int32_t*>(pointer_mut(columns, "columns"));
              py::gil_scoped_release release;
              cuda_top_k_columns_rows(a_ptr, b_ptr, width, divisor, grids, n, block, keep, columns_ptr, reinterpret_cast<void*>(stream));
          },
          py::arg("a"), py::arg("b"), py::arg("width"), py::arg("divisor"), py::arg("grids"), py::arg("n"), py::arg("block"),
          py::arg("keep"), py::arg("columns"), py::arg("stream"),
          "_cuda_top_k_columns with each query row of a (float32 [grids, n, width]) scored against b (float32 "
          "[grids, blocks, width]) and a block's rows pooled by log-sum-exp in the kernel. Private: "
          "sparsa.selectors.PooledGate.top_k uses it for row queries.");
    m.def("_cuda_block_pool",
          [](std::uintptr_t x, const std::string& dtype, int64_t batch, int64_t heads, int64_t n, int64_t d, int64_t stride_batch,
             int64_t stride_head, int64_t stride_row, int64_t block, bool bounds, std::uintptr_t out, std::uintptr_t stream,
             std::uintptr_t projection, int64_t width) {
              CudaBlockPoolCall call;
              call.x = pointer(x, "x");
              call.dtype = device_dtype_parse(dtype);
              call.batch = batch;
              call.heads = heads;
              call.n = n;
              call.d = d;
              call.stride_batch = stride_batch;
              call.stride_head = stride_head;
              call.stride_row = stride_row;
              call.block = block;
              call.bounds = bounds;
              call.projection = reinterpret_cast<const float*>(projection);   // 0: none
              call.width = width;
              call.out = static_cast<float*>(pointer_mut(out, "out"));
              call.stream = reinterpret_cast<void*>(stream);
              py::gil_scoped_release release;
              cuda_block_pool(call);
          },
          py::arg("x"), py::arg("dtype"), py::arg("batch"), py::arg("heads"), py::arg("n"), py::arg("d"), py::arg("stride_batch"),
          py::arg("stride_head"), py::arg("stride_row"), py::arg("block"), py::arg("bounds"), py::arg("out"), py::arg("stream"),
          py::arg("projection") = 0, py::arg("width") = 0,
          "Launches engine/cuda/select/block_pool.hpp's pooling on `stream`: x [batch, heads, n, d] (channel stride 1, the other "
          "strides in elements) to float32 out [batch, heads, blocks, d] (each block's mean) or [.., 3 d] (mean, max, min), "
          "or with projection (float32 [heads, d or 3 d, width]) those rows through each head's map: [.., width]. "
          "Private: sparsa.selectors uses it for CUDA tensors.");
    m.def("content_attention_cuda", &content_attention_cuda_py, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("masks"),
          py::arg("layer") = 0, py::arg("dtype") = "bf16", py::arg("scale") = 0.0F, py::arg("repeats") = 1,
          "A layer of content-based heads (lsh, anchors, favor) on the CUDA content engine (engine/cuda/content/content_cuda.hpp): "
          "returns (o, lse, times). q, k, v as for attention() (host arrays, rounded to dtype on the GPU); every head of the "
          "layer must carry the same kind of spec with the same parameters (seed and file may differ). times: the engine's "
          "device times in ms (CUDA events; medians of `repeats` runs of the same inputs): fixed_ms (the fixed pass), "
          "bucketing_ms (hashing or the anchors' assignment, the sort, chunk ids), attention_ms (the rounds' passes), "
          "merge_ms, total_ms; no host copies counted. attention_cuda runs such layers the same way.");
    py::class_<PyCudaContentLayer>(m, "_CudaContentLayer",
                                   "A layer of content-based heads (lsh, anchors, favor) for the CUDA content engine on device "
                                   "pointers, its heads' numbers drawn or read once. Private: use sparsa.torch.attention.")
        .def(py::init([](const PyMaskSet& s, int64_t layer, int64_t d) {
                 if (layer < 0 || layer >= s.set.layers) {
                     value_error("_CudaContentLayer: layer " + std::to_string(layer) + " is outside 0.." +
                                 std::to_string(s.set.layers - 1));
                 }
                 if (!layer_has_content(s.set, layer)) {
                     value_error("_CudaContentLayer: layer " + std::to_string(layer) +
                                 " has no content-based head (lsh, anchors, favor)");
                 }
                 auto out = std::make_unique<PyCudaContentLayer>();
                 out->layer = layer;
                 out->d = d;
                 for (int64_t h = 0; h < s.set.heads; ++h) out->has_fixed = out->has_fixed || s.set.at(layer, h).row_ptr.back() > 0;
                 const ContentArrays arrays = content_arrays_of(s.set);
                 py::gil_scoped_release release;
                 out->numbers = cuda_content_numbers(s.set, layer, d, &arrays);
                 return out;
             }),
             py::arg("masks"), py::arg("layer"), py::arg("d"))
        .def_readonly("has_fixed", &PyCudaContentLayer::has_fixed,
                      "Whether a head has fixed blocks beside its spec (forward refuses such a layer: run it on host arrays).")
        .def("forward",
             [](const PyCudaContentLayer& c, const PyMaskSet& s, std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t o,
                std::uintptr_t lse, int64_t batch, int64_t heads, int64_t n, int64_t d, const std::string& dtype, float scale) {
                 if (d != c.d) value_error("_CudaContentLayer: made for d = " + std::to_string(c.d) + ", called with d = " + std::to_string(d));
                 CudaContentDeviceCall call;
                 call.q = pointer(q, "q");
                 call.k = pointer(k, "k");
                 call.v = pointer(v, "v");
                 call.o = pointer_mut(o, "o");
                 call.lse = static_cast<float*>(pointer_mut(lse, "lse"));
                 call.batch = batch;
                 call.heads = heads;
                 call.n = n;
                 call.d = d;
                 CudaContentOptions options;
                 options.dtype = device_dtype_parse(dtype);
                 options.scale = scale;
                 py::gil_scoped_release release;
                 const std::lock_guard<std::mutex> lock(g_content_mutex);
                 cuda_content_engine().forward_device(call, s.set, c.layer, c.numbers, options);
             },
             py::arg("masks"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"), py::arg("batch"), py::arg("heads"),
             py::arg("n"), py::arg("d"), py::arg("dtype"), py::arg("scale"),
             "CudaContentAttention::forward_device on the legacy default stream: o [batch, heads, n, d] (dtype) and lse "
             "[batch, heads, n] (float32) from contiguous q, k, v [batch, heads, n, d] (dtype), with `masks` the set this "
             "layer was made from. Pointers are data_ptr() "
             "integers; scale 0: 1 / sqrt(d). A layer with fixed blocks beside its content heads is refused (ValueError).");
    m.def("_cuda_shutdown", []() { g_exiting = true; },
          "From now on _CudaLayerMasks objects leave their device memory to the process's end (called at exit).");
}

} // namespace sparsa::python
