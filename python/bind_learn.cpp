// sparsa.learn: the dense teacher, its pooled attention, oracle / search / gate masks and their
// evaluation, bound for Python (learn/ is built; see python/module.hpp for what is shared).
#ifdef SPARSA_HAVE_LEARN
#include "python/module.hpp"

#include "engine/reference.hpp"
#include "learn/distill.hpp"
#include "learn/eval.hpp"
#include "engine/threads.hpp"
#include "learn/causal_mask.hpp"
#include "learn/pool.hpp"
#include "learn/ruler_families.hpp"
#include "learn/selectors.hpp"
#include "learn/tasks.hpp"
#include "learn/teacher.hpp"

#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace sparsa::python {

namespace {


struct PyTeacher {
    learn::Teacher teacher;
};
struct PySample {
    learn::AttentionSample sample;
    int32_t block = 16;
};
struct PySearchTable {
    learn::SearchTable table;
};
struct PyGate {
    learn::BlockGate gate;
};

// [layers] tensors of [1, heads, n, d] as one array [layers, heads, n, d] (a copy); with
// drop_last, d = 1 is dropped (lse).
py::array tensors_stack(const std::vector<Tensor>& layers, bool drop_last = false) {
    const TensorShape s = layers.at(0).shape;
    std::vector<py::ssize_t> shape = {static_cast<py::ssize_t>(layers.size()), s.heads, s.n};
    if (!drop_last) shape.push_back(s.d);
    py::array_t<float> out(shape);
    float* data = out.mutable_data();
    for (const Tensor& t : layers) data = std::copy(t.data.begin(), t.data.end(), data);
    return out;
}

// One teacher-shaped input [1, heads, n, d] from numpy, checked against the teacher.
Tensor teacher_tensor(const py::handle& obj, const char* name, const learn::Teacher& t) {
    py::array a = array_checked(obj, name, 4, "[1, heads, n, head_dim]");
    if (a.shape(0) != 1 || a.shape(1) != t.config.heads || a.shape(2) != t.task.n || a.shape(3) != t.config.head_dim()) {
        value_error(std::string(name) + ": shape " + shape_text(a) + " is not the teacher's [1, heads, n, head_dim] = (1, " +
                    std::to_string(t.config.heads) + ", " + std::to_string(t.task.n) + ", " + std::to_string(t.config.head_dim()) + ")");
    }
    return tensor_from<float>(a);
}

py::dict train_report_dict(const learn::TrainReport& r) {
    py::dict d;
    d["steps"] = r.steps;
    d["seconds"] = r.seconds;
    d["first_loss"] = r.first_loss;
    d["last_loss"] = r.last_loss;
    d["held_out_accuracy"] = r.held_out_accuracy;
    d["held_out_loss"] = r.held_out_loss;
    d["held_out_mqar"] = r.held_out_mqar;
    d["held_out_passkey"] = r.held_out_passkey;
    d["tokens_per_second"] = r.tokens_per_second;
    return d;
}

// A task config from the names of the checkpoint header's "task" (docs/learn.md), checked.
learn::TaskConfig task_config_make(const std::string& kind, int64_t n, int64_t pairs, int64_t queries, int64_t keys, int64_t values,
                                   int64_t fillers, int64_t needles) {
    learn::TaskConfig c;
    c.kind = learn::task_kind_parse(kind);
    c.n = n;
    c.pairs = pairs;
    c.queries = queries;
    c.keys = keys;
    c.values = values;
    c.fillers = fillers;
    c.needles = needles;
    learn::task_config_check(c);
    return c;
}

learn::TaskStream task_stream_parse(const std::string& text) {
    for (learn::TaskStream s : {learn::TaskStream::train, learn::TaskStream::validation, learn::TaskStream::test})
        if (text == learn::task_stream_name(s)) return s;
    value_error("stream: '" + text + "' is not a stream (use 'train', 'validation' or 'test')");
}

// FNV-1a 64 of bytes: the checkpoint's checksum (teacher.cpp writes the same).
uint64_t fnv1a64(const uint8_t* data, size_t size) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < size; ++i) {
        h ^= data[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

PyMaskSetPtr mask_set_wrap(MaskSet set) {
    auto out = std::make_shared<PyMaskSet>();
    out->set = std::move(set);
    return out;
}

py::dict search_result_dict(const learn::SearchResult& r, const learn::SearchTable& t) {
    py::dict d;
    d["script"] = r.script;
    d["masks"] = mask_set_wrap(r.masks);
    py::array_t<double> recall({t.layers, t.heads});
    py::list expressions;
    for (int64_t l = 0; l < t.layers; ++l) {
        py::list row;
        for (int64_t h = 0; h < t.heads; ++h) {
            const size_t i = static_cast<size_t>(l * t.heads + h);
            recall.mutable_at(l, h) = r.recall[i];
            row.append(t.candidates[static_cast<size_t>(r.choice[i])].expression);
        }
        expressions.append(row);
    }
    d["recall"] = recall;
    d["expressions"] = expressions;
    return d;
}

} // namespace

void bind_learn(py::module_& parent) {
    py::module_ m = parent.def_submodule("learn", "Learned sparsity: a dense teacher, masks distilled from its attention, and their evaluation.");

    py::class_<PyTeacher>(m, "Teacher", "A tiny dense transformer trained on recall tasks (mqar, passkey) with sparsa's CPU engine.")
        .def_property_readonly("n", [](const PyTeacher& t) { return t.teacher.task.n; })
        .def_property_readonly("layers", [](const PyTeacher& t) { return t.teacher.config.layers; })
        .def_property_readonly("heads", [](const PyTeacher& t) { return t.teacher.config.heads; })
        .def_property_readonly("d", [](const PyTeacher& t) { return t.teacher.config.d; })
        .def_property_readonly("head_dim", [](const PyTeacher& t) { return t.teacher.config.head_dim(); })
        .def_property_readonly("task", [](const PyTeacher& t) { return learn::task_kind_name(t.teacher.task.kind); })
        .def_property_readonly("causal", [](const PyTeacher& t) { return t.teacher.config.causal; })
        .def_property_readonly("kv_heads", [](const PyTeacher& t) { return t.teacher.config.kv_head_count(); })
        .def_property_readonly("positions", [](const PyTeacher& t) { return learn::positions_name(t.teacher.config.positions); })
        .def_property_readonly("param_count", [](const PyTeacher& t) { return t.teacher.params.size(); })
        .def("save", [](const PyTeacher& t, const std::string& path) { learn::teacher_save(t.teacher, path); }, py::arg("path"),
             "Saves a checkpoint atomically (the format of `sparsa learn teacher -o`).")
        .def_static("load", [](const std::string& path) { return PyTeacher{learn::teacher_load(path)}; }, py::arg("path"))
        .def("evaluate", [](const PyTeacher& t, const PyMaskSetPtr& masks, int64_t sequences, uint64_t seed, int32_t block, int threads) {
                 if (sequences < 1) value_error("sequences: expected >= 1, got " + std::to_string(sequences));
                 const learn::TaskBatch batch = learn::task_batch(t.teacher.task, learn::task_held_out_seed(seed), 0, sequences);
                 learn::TeacherRunOptions run;
                 run.masks = masks ? &masks->set : nullptr;
                 run.block = block;
                 run.threads = threads;
                 learn::TeacherResult r;
                 {
                     py::gil_scoped_release release;
                     r = learn::teacher_evaluate(t.teacher, batch, run);
                 }
                 py::dict d;
                 d["loss"] = r.loss;
                 d["accuracy"] = r.answers ? static_cast<double>(r.correct) / static_cast<double>(r.answers) : 0.0;
                 d["answers"] = r.answers;
                 d["passkey_accuracy"] = r.passkey_answers ? static_cast<double>(r.passkey_correct) / static_cast<double>(r.passkey_answers) : -1.0;
                 return d;
             }, py::arg("masks") = nullptr, py::arg("sequences") = 64, py::arg("seed") = 1, py::arg("block") = 16, py::arg("threads") = 0,
             "Loss and accuracy on `sequences` held-out sequences, with dense attention (masks None) or with `masks` "
             "([layers, heads] at the teacher's n; a one-layer set is used for every layer).")
        .def("attention", [](const PyTeacher& t, int64_t index, uint64_t seed, int32_t block) {
                 const learn::TaskBatch batch = learn::task_batch(t.teacher.task, learn::task_held_out_seed(seed), index, 1);
                 learn::TeacherCapture capture;
                 learn::TeacherRunOptions run;
                 run.block = block;
                 run.capture = &capture;
                 {
                     py::gil_scoped_release release;
                     learn::teacher_evaluate(t.teacher, batch, run);
                 }
                 py::dict d;
                 d["tokens"] = array_copy(batch.tokens);
                 d["targets"] = array_copy(batch.targets);
                 d["q"] = tensors_stack(capture.q[0]);
                 d["k"] = tensors_stack(capture.k[0]);
                 d["v"] = tensors_stack(capture.v[0]);
                 d["o"] = tensors_stack(capture.o[0]);
                 d["lse"] = tensors_stack(capture.lse[0], true);
                 return d;
             }, py::arg("index") = 0, py::arg("seed") = 1, py::arg("block") = 16,
             "The dense attention inputs and outputs of held-out sequence `index`: a dict of tokens [n], targets [n] (-1: no answer), "
             "q, k, v, o [layers, heads, n, head_dim] and lse [layers, heads, n].")
        .def_property_readonly("vocab", [](const PyTeacher& t) { return t.teacher.config.vocab; })
        .def_property_readonly("params", [](const PyTeacher& t) { return array_copy(t.teacher.params); },
             "A copy of the parameters, float64 [param_count], in the checkpoint's order (docs/learn.md, \"Checkpoint format\").")
        .def("log_probs", [](const PyTeacher& t, const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& tokens, int threads) {
                 // teacher_evaluate hands out the loss, not the logits: with one answer, at position i with target v, its
                 // loss is lse_i - logit_iv, so n * vocab one-answer evaluations give every log probability of the forward.
                 const int64_t n = t.teacher.task.n, vocab = t.teacher.config.vocab;
                 if (tokens.ndim() != 1 || tokens.shape(0) != n)
                     value_error("log_probs: tokens must be one sequence [n] at the teacher's n = " + std::to_string(n) + ", got shape " +
                                 shape_text(tokens));
                 for (int64_t i = 0; i < n; ++i)
                     if (tokens.data()[i] < 0 || tokens.data()[i] >= vocab)
                         value_error("log_probs: tokens[" + std::to_string(i) + "] = " + std::to_string(tokens.data()[i]) +
                                     " is not a token (0 to vocab - 1 = " + std::to_string(vocab - 1) + ")");
                 std::vector<int32_t> seq(tokens.data(), tokens.data() + n);
                 std::vector<double> out(static_cast<size_t>(n * vocab));
                 {
                     py::gil_scoped_release release;
                     parallel_for(n, threads, [&](int64_t begin, int64_t end) {
                         learn::TaskBatch batch;
                         batch.batch = 1;
                         batch.n = n;
                         batch.tokens = seq;
                         batch.targets.assign(static_cast<size_t>(n), -1);
                         learn::TeacherRunOptions run;
                         run.threads = 1;
                         for (int64_t i = begin; i < end; ++i)
                             for (int64_t v = 0; v < vocab; ++v) {
                                 batch.targets[static_cast<size_t>(i)] = static_cast<int32_t>(v);
                                 out[static_cast<size_t>(i * vocab + v)] = -learn::teacher_evaluate(t.teacher, batch, run).loss;
                                 batch.targets[static_cast<size_t>(i)] = -1;
                             }
                     });
                 }
                 py::array_t<double> a({n, vocab});
                 std::copy(out.begin(), out.end(), a.mutable_data());
                 return a;
             }, py::arg("tokens"), py::arg("threads") = 0,
             "The dense forward's log softmax of the logits at every position of one sequence: float64 [n, vocab] (n * vocab "
             "evaluations: for tests at small n, e.g. against sparsa.lab.LabTeacher).");

    m.def("train_teacher", [](const std::string& task, int64_t n, int64_t pairs, int64_t queries, int64_t d, int64_t heads, int64_t layers,
                              int64_t mlp, int64_t steps, int64_t batch, double lr, uint64_t seed, double stop_accuracy, double max_seconds,
                              bool progress, int threads, bool causal, const std::string& positions, int64_t head_dim, int64_t kv_heads,
                              int64_t needles) {
              learn::TaskConfig task_config;
              task_config.kind = learn::task_kind_parse(task);
              task_config.n = n;
              task_config.pairs = pairs;
              task_config.queries = queries;
              task_config.needles = needles;
              learn::TeacherConfig model = learn::teacher_config_default(task_config);
              model.d = d;
              model.heads = heads;
              model.layers = layers;
              model.mlp = mlp;
              model.causal = causal;
              model.positions = learn::positions_parse(positions);
              model.head_width = head_dim;
              model.kv_heads = kv_heads;
              learn::TrainOptions o;
              o.seed = seed;
              o.steps = steps;
              o.batch = batch;
              o.lr = lr;
              o.stop_accuracy = stop_accuracy;
              o.max_seconds = max_seconds;
              o.progress = progress;
              o.threads = threads;
              PyTeacher t;
              learn::TrainReport r;
              {
                  py::gil_scoped_release release;
                  learn::task_config_check(task_config);
                  learn::teacher_config_check(model);
                  t.teacher = learn::teacher_init(model, task_config, seed);
                  r = learn::teacher_train(t.teacher, o);
              }
              return py::make_tuple(std::move(t), train_report_dict(r));
          }, py::arg("task") = "ruler", py::arg("n") = 1024, py::arg("pairs") = 8, py::arg("queries") = 8, py::arg("d") = 128, py::arg("heads") = 2, py::arg("layers") = 2,
          py::arg("mlp") = 256, py::arg("steps") = 3000, py::arg("batch") = 16, py::arg("lr") = 2e-3, py::arg("seed") = 1,
          py::arg("stop_accuracy") = 0.98, py::arg("max_seconds") = 0.0, py::arg("progress") = false, py::arg("threads") = 0,
          py::arg("causal") = true, py::arg("positions") = "none", py::arg("head_dim") = 0, py::arg("kv_heads") = 0, py::arg("needles") = 4,
          "Trains a teacher (causal by default, as `sparsa learn teacher`) on `task` ('ruler', 'single', 'multikey', 'multivalue', 'multiquery', "
          "'mqar', 'passkey' or 'mix') at length n (mqar: `pairs` key-value pairs, `queries` of them asked; needle tasks: `needles`); "
          "positions 'none' (the default), 'rotary' or 'sinusoidal'; head_dim 0: d / heads; kv_heads 0: as many as heads. Returns (Teacher, report "
          "dict). Stops after `steps`, at `stop_accuracy` validation accuracy, or after `max_seconds` (0: no limit). progress prints to stderr.");

    m.def("teacher_init", [](const std::string& task, int64_t n, int64_t pairs, int64_t queries, int64_t keys, int64_t values, int64_t fillers,
                             int64_t needles, int64_t d, int64_t heads, int64_t head_dim, int64_t kv_heads, int64_t layers, int64_t mlp,
                             bool causal, const std::string& positions, double qk_identity, uint64_t seed) {
              const learn::TaskConfig task_config = task_config_make(task, n, pairs, queries, keys, values, fillers, needles);
              learn::TeacherConfig model = learn::teacher_config_default(task_config);
              model.d = d;
              model.heads = heads;
              model.head_width = head_dim;
              model.kv_heads = kv_heads;
              model.layers = layers;
              model.mlp = mlp;
              model.causal = causal;
              model.positions = learn::positions_parse(positions);
              model.qk_identity = qk_identity;
              return PyTeacher{learn::teacher_init(model, task_config, seed)};
          }, py::arg("task") = "ruler", py::arg("n") = 1024, py::arg("pairs") = 8, py::arg("queries") = 8, py::arg("keys") = 32,
          py::arg("values") = 32, py::arg("fillers") = 16, py::arg("needles") = 4, py::arg("d") = 128, py::arg("heads") = 2,
          py::arg("head_dim") = 0, py::arg("kv_heads") = 0, py::arg("layers") = 2, py::arg("mlp") = 256, py::arg("causal") = true,
          py::arg("positions") = "none", py::arg("qk_identity") = 0.0, py::arg("seed") = 1,
          "An untrained teacher with the C++ trainer's initial weights for `seed` (what `sparsa learn teacher --seed` starts from); "
          "sparsa.lab.LabTeacher.from_cpp copies them.");

    m.def("task_batch", [](const std::string& task, int64_t n, const std::string& stream, uint64_t seed, int64_t first, int64_t count,
                           int64_t pairs, int64_t queries, int64_t keys, int64_t values, int64_t fillers, int64_t needles) {
              if (count < 1) value_error("task_batch: count must be >= 1, got " + std::to_string(count));
              if (first < 0) value_error("task_batch: first must be >= 0, got " + std::to_string(first));
              const learn::TaskConfig c = task_config_make(task, n, pairs, queries, keys, values, fillers, needles);
              const uint64_t stream_seed = learn::task_stream_seed(task_stream_parse(stream), seed);
              learn::TaskBatch b;
              {
                  py::gil_scoped_release release;
                  b = learn::task_batch(c, stream_seed, first, count);
              }
              // kind: the index in task_kinds() of each sequence's kind
              std::vector<int32_t> kind(static_cast<size_t>(count));
              const auto& kinds = learn::task_kinds_single();
              for (int64_t i = 0; i < count; ++i)
                  kind[static_cast<size_t>(i)] = static_cast<int32_t>(
                      std::find(kinds.begin(), kinds.end(), static_cast<learn::TaskKind>(b.kind[static_cast<size_t>(i)])) - kinds.begin());
              py::dict d;
              d["tokens"] = array_copy(b.tokens).attr("reshape")(count, n);
              d["targets"] = array_copy(b.targets).attr("reshape")(count, n);
              d["depth"] = array_copy(b.depth).attr("reshape")(count, n);
              d["kind"] = array_copy(kind);
              d["vocab"] = c.vocab();
              d["seed"] = stream_seed;
              return d;
          }, py::arg("task") = "ruler", py::arg("n") = 1024, py::arg("stream") = "train", py::arg("seed") = 1, py::arg("first") = 0,
          py::arg("count") = 16, py::arg("pairs") = 8, py::arg("queries") = 8, py::arg("keys") = 32, py::arg("values") = 32,
          py::arg("fillers") = 16, py::arg("needles") = 4,
          "Sequences first .. first + count - 1 of a task stream, from the generator the C++ trainer reads: stream 'train' (the "
          "training seed `seed`; step s of `sparsa learn teacher --batch B` reads first = s * B), 'validation' or 'test' (fixed "
          "seeds, `seed` unused). A dict of tokens, targets (-1: no answer) and depth (the answer's depth bucket 0..9, -1: none), "
          "each int [count, n]; kind int32 [count] (an index into task_kinds()); vocab; seed (the stream's).");
    m.def("task_kinds", [] {
              std::vector<std::string> names;
              for (learn::TaskKind k : learn::task_kinds_single()) names.push_back(learn::task_kind_name(k));
              return names;
          }, "The kinds one sequence can be, in the order task_batch's `kind` indexes them.");
    m.def("causal_masks", [](int64_t n, int64_t heads, int32_t block, int64_t layers) {
              if (n < 1 || heads < 1 || layers < 1) value_error("causal_masks: n, heads and layers must be >= 1");
              if (!block_size_valid(block)) value_error("causal_masks: block " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
              return mask_set_wrap(learn::mask_set_causal(n, block, layers, heads));
          }, py::arg("n"), py::arg("heads"), py::arg("block") = 64, py::arg("layers") = 1,
          "The causal teacher's dense mask (key <= query) as a MaskSet [layers, heads] (learn/causal_mask.hpp); the teacher's own "
          "has block 64 from n = 64.");
    m.def("top_k_layout", [](int64_t n, int64_t heads, int32_t block, int64_t keep) {
              if (!block_size_valid(block)) value_error("top_k_layout: block " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
              if (n < 1 || heads < 1) value_error("top_k_layout: n and heads must be >= 1");
              const int64_t blocks = (n + block - 1) / block;
              if (keep < 1 || keep > blocks) value_error("top_k_layout: keep must be 1 to ceil(n / block) = " + std::to_string(blocks) + ", got " + std::to_string(keep));
              return mask_set_wrap(learn::mask_set_top_k_layout(n, block, heads, keep));
          }, py::arg("n"), py::arg("heads"), py::arg("block"), py::arg("keep"),
          "The masks a causal top-k selection runs on, uploaded once (learn/causal_mask.hpp): [1, heads], one distinct mask per "
          "head whose query block r keeps min(keep, r + 1) key blocks ending at its diagonal (as built, a causal window); "
          "sparsa.torch.attention_top_k puts each input's chosen blocks in their place on the GPU.");
    m.def("block_masks", [](const py::array& grid_obj, int64_t n, int32_t block, bool causal) {
              if (!block_size_valid(block)) value_error("block_masks: block " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
              if (n < 1) value_error("block_masks: n must be >= 1, got " + std::to_string(n));
              const int64_t blocks = (n + block - 1) / block;
              py::array a = grid_obj;
              if (a.ndim() == 3) a = a.attr("reshape")(1, a.shape(0), a.shape(1), a.shape(2));
              if (a.ndim() != 4 || a.shape(2) != blocks || a.shape(3) != blocks)
                  value_error("block_masks: grid must be [heads, blocks, blocks] or [layers, heads, blocks, blocks] with blocks = ceil(n / block) = " +
                              std::to_string(blocks) + ", got shape " + shape_text(a));
              auto bytes = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(a.attr("astype")("bool").attr("astype")("uint8"));
              const int64_t layers = a.shape(0), heads = a.shape(1);
              if (layers < 1 || heads < 1) value_error("block_masks: grid has no (layer, head): shape " + shape_text(a));
              std::vector<std::shared_ptr<const BlockMask>> masks;
              for (int64_t lh = 0; lh < layers * heads; ++lh) {
                  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(blocks));
                  const uint8_t* g = bytes.data() + lh * blocks * blocks;
                  for (int64_t r = 0; r < blocks; ++r)
                      for (int64_t c = 0; c < blocks; ++c)
                          if (g[r * blocks + c]) rows[r].push_back(static_cast<int32_t>(c));
                  masks.push_back(std::make_shared<BlockMask>(learn::block_mask_from_rows(n, block, rows)));
              }
              MaskSet set = mask_set_make(layers, heads, std::move(masks));
              return mask_set_wrap(causal ? learn::mask_set_restrict_causal(set) : set);
          }, py::arg("grid"), py::arg("n"), py::arg("block") = 16, py::arg("causal") = true,
          "A MaskSet from kept blocks: grid bool [heads, blocks, blocks] (one layer) or [layers, heads, blocks, blocks], [.., r, c] "
          "true when query block r keeps key block c (whole blocks; the last may be short); causal: cut to key <= query "
          "(mask_set_restrict_causal), as the ruler evaluation cuts every selector's choice.");
    m.def("fixed_candidates", [](int64_t n, int64_t heads, int32_t block, bool causal) {
              if (!block_size_valid(block)) value_error("fixed_candidates: block " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
              if (n < 1 || heads < 1) value_error("fixed_candidates: n and heads must be >= 1");
              py::list out;
              for (const learn::SearchCandidate& c : learn::search_candidates(n, block)) {
                  auto [set, density] = learn::ruler_fixed_set(c.mask, heads, causal);
                  out.append(py::make_tuple(c.expression, mask_set_wrap(std::move(set)), density));
              }
              return out;
          }, py::arg("n"), py::arg("heads"), py::arg("block") = 16, py::arg("causal") = true,
          "The search's fixed candidates (window, sinks + window, dilated, strided, global + band, chunk, band, dense at a ladder of "
          "sizes) as the ruler evaluation's best fixed pattern draws them: a list of (expression, MaskSet [1, heads] cut to causal, "
          "density after the cut). With baseline_expression's Longformer and BigBird (fixed_set) they are its pool.");
    m.def("fixed_families", [](int64_t n, int64_t heads, double target, int32_t block, bool causal) {
              if (!block_size_valid(block)) value_error("fixed_families: block " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
              if (n < 1 || heads < 1) value_error("fixed_families: n and heads must be >= 1");
              if (!(target > 0 && target <= 1)) value_error("fixed_families: target density must be in (0, 1], got " + std::to_string(target));
              const double blocks = causal ? static_cast<double>(learn::causal_block_count(n, block))
                                           : static_cast<double>(((n + block - 1) / block) * ((n + block - 1) / block));
              py::list out;
              for (const learn::RulerMethod& m : learn::ruler_fixed_families(n, block, heads, target, causal)) {
                  MaskSet set = m.masks(0, Tensor{}, Tensor{});
                  const double density = static_cast<double>(set.at(0, 0).kept_blocks()) / blocks;
                  out.append(py::make_tuple(m.name, m.detail, mask_set_wrap(std::move(set)), density));
              }
              return out;
          }, py::arg("n"), py::arg("heads"), py::arg("target"), py::arg("block") = 16, py::arg("causal") = true,
          "The ruler evaluation's fixed families at a density (learn/ruler_families.hpp): window, Longformer and BigBird, each the "
          "largest of its ladder whose density after the causal cut is at most target: a list of (name, detail, MaskSet [1, heads], "
          "density).");
    m.def("search_script", [](const PySearchTable& t, double target, bool causal) {
              if (!(target > 0 && target <= 1)) value_error("search_script: target density must be in (0, 1], got " + std::to_string(target));
              if (t.table.candidates.empty()) value_error("search_script: the table has no candidates");
              const learn::RulerMethod m = learn::ruler_search_script(t.table, target, causal);
              const MaskSet first = m.masks(0, Tensor{}, Tensor{});
              const int64_t n = first.n;
              const int32_t block = first.block;
              const double blocks = causal ? static_cast<double>(learn::causal_block_count(n, block))
                                           : static_cast<double>(((n + block - 1) / block) * ((n + block - 1) / block));
              py::list per_layer;
              double kept = 0;
              for (int64_t l = 0; l < t.table.layers; ++l) {
                  MaskSet set = m.masks(l, Tensor{}, Tensor{});
                  for (int64_t h = 0; h < set.heads; ++h) kept += static_cast<double>(set.at(0, h).kept_blocks());
                  per_layer.append(mask_set_wrap(std::move(set)));
              }
              return py::make_tuple(per_layer, kept / (blocks * static_cast<double>(t.table.layers * t.table.heads)), m.detail);
          }, py::arg("table"), py::arg("target"), py::arg("causal") = true,
          "The ruler evaluation's search script at a density (learn/ruler_families.hpp, ruler_search_script): per (layer, head) the "
          "candidate of most recall in the table whose density after the causal cut is at most target: (a MaskSet [1, heads] per "
          "layer, cut to causal; its density, kept blocks over the causal mask's, mean over layers and heads; detail: each head's "
          "expression and training recall).");
    m.def("duo_masks", [](int64_t n, int64_t layers, int64_t heads, double density, const std::vector<bool>& retrieval, int32_t block,
                          bool causal) {
              if (!block_size_valid(block)) value_error("duo_masks: block " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
              if (n < 1 || layers < 1 || heads < 1) value_error("duo_masks: n, layers and heads must be >= 1");
              if (!(density > 0 && density <= 1)) value_error("duo_masks: density must be in (0, 1], got " + std::to_string(density));
              const learn::DuoBudget budget = learn::duo_budget(n, block, layers * heads, density, causal);
              std::vector<bool> dense = retrieval;
              if (dense.empty()) dense.assign(static_cast<size_t>(layers * heads), false);
              if (static_cast<int64_t>(dense.size()) != layers * heads)
                  value_error("duo_masks: retrieval has " + std::to_string(dense.size()) + " entries, want layers x heads = " +
                              std::to_string(layers * heads));
              py::list per_layer;
              for (int64_t l = 0; l < layers; ++l)
                  per_layer.append(mask_set_wrap(learn::duo_masks(n, block, std::vector<bool>(dense.begin() + l * heads, dense.begin() + (l + 1) * heads),
                                                                  budget, causal)));
              py::dict b;
              b["retrieval"] = budget.retrieval;
              b["sink_blocks"] = budget.sink_blocks;
              b["window_blocks"] = budget.window_blocks;
              b["density"] = budget.density;
              return py::make_tuple(b, per_layer);
          }, py::arg("n"), py::arg("layers"), py::arg("heads"), py::arg("density"), py::arg("retrieval") = std::vector<bool>{},
          py::arg("block") = 16, py::arg("causal") = true,
          "DuoAttention's split at a density (learn/selectors.hpp, duo_budget and duo_masks): (budget {retrieval: the dense heads the "
          "density affords, sink_blocks, window_blocks, density}, a MaskSet [1, heads] per layer) with the heads marked in retrieval "
          "([layers x heads] bools, layer-major; empty: none) dense and the rest sink + window.");
    m.def("fixed_set", [](const std::string& expression, int64_t n, int64_t heads, int32_t block, bool causal) {
              auto [set, density] = learn::ruler_fixed_set(learn::expression_compile(expression, n, block), heads, causal);
              return py::make_tuple(mask_set_wrap(std::move(set)), density);
          }, py::arg("expression"), py::arg("n"), py::arg("heads"), py::arg("block") = 16, py::arg("causal") = true,
          "An expression's mask in every head, cut to causal, and its density after the cut: (MaskSet [1, heads], density).");
    m.def("fnv1a64", [](const py::bytes& data) {
              const std::string bytes = data;
              return fnv1a64(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
          }, py::arg("data"), "FNV-1a 64 of the bytes: a teacher checkpoint's checksum over everything before it.");

    py::class_<PySample>(m, "AttentionSample", "The dense teacher's q, k and lse on several inputs: what search and the gate learn from.")
        .def_property_readonly("inputs", [](const PySample& s) { return s.sample.inputs(); })
        .def_property_readonly("layers", [](const PySample& s) { return s.sample.layers(); })
        .def_property_readonly("block", [](const PySample& s) { return s.block; });
    m.def("attention_sample", [](const PyTeacher& t, int64_t count, uint64_t seed, int32_t block, int threads) {
              if (count < 1) value_error("count: expected >= 1, got " + std::to_string(count));
              if (!block_size_valid(block)) value_error("block: " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
              PySample s;
              s.block = block;
              py::gil_scoped_release release;
              s.sample = learn::attention_sample(t.teacher, seed, learn::kCalibrationFirst, count, block, threads);
              return s;
          }, py::arg("teacher"), py::arg("count") = 32, py::arg("seed") = 1, py::arg("block") = 16, py::arg("threads") = 0,
          "The teacher's attention inputs on `count` training-stream sequences set apart for calibration (as `sparsa learn` uses).");

    m.def("attention_sample_from_qk", [](const py::handle& q_obj, const py::handle& k_obj, int32_t block, bool causal) {
              if (!block_size_valid(block)) value_error("block: " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
              py::array q = py::isinstance<py::array>(q_obj) ? py::reinterpret_borrow<py::array>(q_obj) : py::array();
              py::array k = py::isinstance<py::array>(k_obj) ? py::reinterpret_borrow<py::array>(k_obj) : py::array();
              if (q && q.ndim() == 4) q = q.attr("reshape")(1, q.shape(0), q.shape(1), q.shape(2), q.shape(3));
              if (k && k.ndim() == 4) k = k.attr("reshape")(1, k.shape(0), k.shape(1), k.shape(2), k.shape(3));
              q = array_checked(q ? py::handle(q) : q_obj, "q", 5, "[inputs, layers, heads, n, d] or [layers, heads, n, d]");
              k = array_checked(k ? py::handle(k) : k_obj, "k", 5, "[inputs, layers, heads, n, d] or [layers, heads, n, d]");
              for (py::ssize_t i = 0; i < 5; ++i) {
                  if (k.shape(i) != q.shape(i)) value_error("k: shape " + shape_text(k) + " differs from q's " + shape_text(q));
                  if (q.shape(i) < 1) value_error("q: shape " + shape_text(q) + " has an empty dimension");
              }
              if (q.shape(4) > kMaxHeadDim) value_error("q: head dimension " + std::to_string(q.shape(4)) + " is above 256");
              auto qc = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(q);
              auto kc = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(k);
              const int64_t inputs = q.shape(0), layers = q.shape(1);
              const TensorShape shape{1, q.shape(2), q.shape(3), q.shape(4)};
              PySample s;
              s.block = block;
              s.sample.causal = causal;
              for (int64_t i = 0; i < inputs; ++i) {
                  s.sample.q.emplace_back();
                  s.sample.k.emplace_back();
                  s.sample.lse.emplace_back();
                  for (int64_t l = 0; l < layers; ++l) {
                      const int64_t offset = (i * layers + l) * shape.size();
                      Tensor qt{shape, std::vector<float>(qc.data() + offset, qc.data() + offset + shape.size())};
                      Tensor kt{shape, std::vector<float>(kc.data() + offset, kc.data() + offset + shape.size())};
                      tensor_check_finite(qt, "q");
                      tensor_check_finite(kt, "k");
                      s.sample.lse.back().push_back(learn::dense_lse(qt, kt, block, causal));
                      s.sample.q.back().push_back(std::move(qt));
                      s.sample.k.back().push_back(std::move(kt));
                  }
              }
              return s;
          }, py::arg("q"), py::arg("k"), py::arg("block") = 16, py::arg("causal") = false,
          "An AttentionSample from any model's queries and keys (numpy, [inputs, layers, heads, n, d] or one input "
          "[layers, heads, n, d]), for search_table() and gate_train(); lse is the dense one (scale 1 / sqrt(d)). causal: "
          "the model is causal (keys after their query left out of the dense attention and of every candidate, as "
          "attention_sample does for a causal teacher); a causal model's sample without it measures recall on pairs "
          "the model never sees.");

    m.def("oracle_masks", [](const PyTeacher& t, int64_t index, double density, uint64_t seed, int32_t block) {
              if (!(density > 0 && density <= 1)) value_error("density: expected a fraction in (0, 1], got " + std::to_string(density));
              learn::AttentionSample s;
              {
                  py::gil_scoped_release release;
                  s = learn::attention_sample(t.teacher, learn::task_held_out_seed(seed), index, 1, block, 0);
              }
              const TensorShape shape = s.q[0][0].shape;
              learn::PooledAttention p = learn::pooled_zeros(s.layers(), shape.heads, shape.n, block);
              for (int64_t l = 0; l < s.layers(); ++l) learn::pooled_add_layer(p, l, s.q[0][l], s.k[0][l], s.causal);
              MaskSet masks = learn::oracle_masks(p, learn::blocks_per_row(density, p.blocks()), s.causal);
              py::array_t<double> recall({p.layers, p.heads});
              for (int64_t l = 0; l < p.layers; ++l) {
                  for (int64_t h = 0; h < p.heads; ++h) recall.mutable_at(l, h) = learn::pooled_recall(p, l, h, masks.at(l, h));
              }
              return py::make_tuple(mask_set_wrap(std::move(masks)), recall);
          }, py::arg("teacher"), py::arg("index") = 0, py::arg("density") = 0.125, py::arg("seed") = 1, py::arg("block") = 16,
          "The oracle for held-out sequence `index`: each query block keeps the key blocks of most attention mass, "
          "round(density * blocks) of them. Returns (MaskSet, recall [layers, heads]).");

    py::class_<PySearchTable>(m, "SearchTable", "Every candidate pattern's exact recall on every (layer, head) of a sample.")
        .def_property_readonly("expressions", [](const PySearchTable& t) {
            std::vector<std::string> e;
            for (const auto& c : t.table.candidates) e.push_back(c.expression);
            return e;
        })
        .def_property_readonly("densities", [](const PySearchTable& t) {
            std::vector<double> e;
            for (const auto& c : t.table.candidates) e.push_back(c.density);
            return e;
        }, "block density of each candidate")
        .def_property_readonly("recall", [](const PySearchTable& t) {
            py::array_t<double> r({static_cast<int64_t>(t.table.candidates.size()), t.table.layers, t.table.heads});
            std::copy(t.table.recall.begin(), t.table.recall.end(), r.mutable_data());
            return r;
        }, "[candidates, layers, heads]");
    m.def("search_table", [](const PySample& s, int threads) {
              PySearchTable t;
              py::gil_scoped_release release;
              t.table = learn::search_table_build(s.sample, s.block, threads);
              return t;
          }, py::arg("sample"), py::arg("threads") = 0, "Measures every candidate of the language's families on the sample.");
    m.def("search_candidates", [](int64_t n, int32_t block, int64_t heads, bool causal) {
              if (n < 1 || heads < 1) value_error("search_candidates: n and heads must be >= 1");
              if (!block_size_valid(block)) value_error("search_candidates: block " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
              learn::SearchTable t;
              t.n = n;
              t.block = block;
              t.heads = heads;
              t.layers = 1;
              t.causal = causal;
              {
                  py::gil_scoped_release release;
                  t.candidates = learn::search_candidates(n, block);
              }
              py::list out;
              for (size_t c = 0; c < t.candidates.size(); ++c) {
                  out.append(py::make_tuple(t.candidates[c].expression, mask_set_wrap(learn::search_candidate_set(t, static_cast<int64_t>(c))),
                                            t.candidates[c].density));
              }
              return out;
          }, py::arg("n"), py::arg("block"), py::arg("heads") = 1, py::arg("causal") = false,
          "The search's candidates at (n, block): a list of (expression, MaskSet [1 layer, heads]: the candidate in every head, "
          "cut to causal when causal, density: kept blocks / blocks^2 before the cut), in search_table()'s order. For "
          "measuring recall elsewhere (sparsa.ruler does it on the GPU) and search_table_from_recall().");
    m.def("search_table_from_recall", [](const py::handle& recall_obj, int64_t n, int32_t block, bool causal) {
              if (!block_size_valid(block)) value_error("search_table_from_recall: block " + std::to_string(block) + " is not valid (use 16, 32, 64, 128 or 256)");
              const py::array a = array_checked(recall_obj, "recall", 3, "[candidates, layers, heads]");
              const auto r = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(a);
              std::vector<double> recall(r.data(), r.data() + r.size());
              for (size_t i = 0; i < recall.size(); ++i) {
                  if (!(recall[i] >= 0 && recall[i] <= 1 + 1e-6)) value_error("search_table_from_recall: recall must be in [0, 1], got " +
                                                                          std::to_string(recall[i]) + " at flat index " + std::to_string(i));
              }
              PySearchTable t;
              py::gil_scoped_release release;
              t.table = learn::search_table_from_recall(n, block, a.shape(1), a.shape(2), causal, std::move(recall));
              return t;
          }, py::arg("recall"), py::arg("n"), py::arg("block"), py::arg("causal") = false,
          "A SearchTable from recall measured elsewhere: recall [candidates, layers, heads] of search_candidates(n, block, "
          "heads, causal) in their order (each candidate's share of the dense attention kept, mean over query rows and inputs). "
          "sparsa.Error when the candidate count differs.");
    m.def("search", [](const PySearchTable& t, py::object share, py::object density) {
              if (share.is_none() == density.is_none()) value_error("search: give exactly one of share= (recall to reach) or density= (block density cap)");
              learn::SearchResult r = share.is_none() ? learn::search_by_density(t.table, density.cast<double>())
                                                      : learn::search_by_share(t.table, share.cast<double>());
              return search_result_dict(r, t.table);
          }, py::arg("table"), py::arg("share") = py::none(), py::arg("density") = py::none(),
          "Per (layer, head), the cheapest candidate keeping `share` of the attention, or the best one under `density`: "
          "a dict of script (.pat text), masks, recall [layers, heads], expressions [layers][heads].");

    py::class_<PyGate>(m, "Gate", "Learned block gates (SeerAttention-style), one per (layer, head).")
        .def("save", [](const PyGate& g, const std::string& path) { learn::gate_save(g.gate, path); }, py::arg("path"))
        .def_static("load", [](const std::string& path) { return PyGate{learn::gate_load(path)}; }, py::arg("path"))
        .def("masks", [](const PyGate& g, const PyTeacher& t, const py::handle& q, const py::handle& k, int64_t layer, int64_t keep, double share) {
                 if (layer < 0 || layer >= g.gate.layers) value_error("layer " + std::to_string(layer) + " is out of range for the gate");
                 const Tensor qt = teacher_tensor(q, "q", t.teacher), kt = teacher_tensor(k, "k", t.teacher);
                 return mask_set_wrap(learn::gate_masks(g.gate, layer, qt, kt, keep, share));
             }, py::arg("teacher"), py::arg("q"), py::arg("k"), py::arg("layer"), py::arg("keep") = 1, py::arg("share") = 0.0,
             "The gate's one-layer MaskSet for this input: top `keep` blocks per row (or the fewest reaching `share` when > 0), "
             "diagonal always kept. q, k: [1, heads, n, head_dim] (e.g. teacher.attention()['q'][layer][None]).");
    m.def("gate_train", [](const PySample& s, int64_t hidden, int64_t steps, double lr, uint64_t seed, const std::string& query,
                           const std::string& key, const std::string& target) {
              const TensorShape shape = s.sample.q.at(0).at(0).shape;
              PyGate g;
              learn::GateTrainOptions o;
              o.steps = steps;
              o.lr = lr;
              if (target != "sum" && target != "max" && target != "rows") value_error("gate_train: target must be 'sum', 'max' or 'rows'; got '" + target + "'");
              o.max_pooled = target == "max";
              g.gate = learn::gate_init(s.sample.layers(), shape.heads, shape.d, hidden, s.block, seed, learn::gate_query_parse(query),
                                        learn::gate_key_parse(key));
              g.gate.row_targets = target == "rows";
              if (g.gate.row_targets && g.gate.query != learn::GateQuery::rows) value_error("gate_train: target='rows' needs query='rows'");
              learn::GateTrainReport r;
              {
                  py::gil_scoped_release release;
                  r = learn::gate_train(g.gate, s.sample, o);
              }
              py::dict d;
              d["first_loss"] = r.first_loss;
              d["last_loss"] = r.last_loss;
              return py::make_tuple(std::move(g), d);
          }, py::arg("sample"), py::arg("hidden") = 16, py::arg("steps") = 300, py::arg("lr") = 1e-2, py::arg("seed") = 1,
          py::arg("query") = "rows", py::arg("key") = "keys", py::arg("target") = "rows",
          "Trains a block gate per (layer, head) on the sample: (Gate, {first_loss, last_loss}). query 'rows' or 'block', key 'keys', "
          "'bounds' or 'pooled', target 'rows' (each row's own blocks), 'sum' or 'max' (block-pooled): see learn/distill.hpp; the defaults are "
          "those of 'sparsa learn distill --method gate'.");

    m.def("evaluate", [](const PyTeacher& t, const PyGate& g, const PySearchTable& table, std::vector<double> densities,
                         int64_t inputs, uint64_t seed, int time_repeats, int threads) {
              learn::EvalOptions o;
              o.densities = std::move(densities);
              o.block = g.gate.block;
              o.inputs = inputs;
              o.seed = seed;
              o.time_repeats = time_repeats;
              o.threads = threads;
              learn::EvalReport report;
              {
                  py::gil_scoped_release release;
                  report = learn::learn_evaluate(t.teacher, g.gate, table.table, o);
              }
              py::list rows;
              for (const learn::EvalRow& r : report.rows) {
                  py::dict d;
                  d["method"] = r.method;
                  d["target"] = r.target;
                  d["density"] = r.density;
                  d["recall"] = r.recall;
                  d["answer_recall"] = r.answer_recall;
                  d["l1_error"] = r.l1_error;
                  d["accuracy"] = r.accuracy;
                  d["forward_ms"] = r.forward_ms;
                  d["select_ms"] = r.select_ms;
                  d["detail"] = r.detail;
                  rows.append(d);
              }
              return rows;
          }, py::arg("teacher"), py::arg("gate"), py::arg("table"), py::arg("densities") = std::vector<double>{0.03, 0.06, 0.125, 0.25},
          py::arg("inputs") = 64, py::arg("seed") = 1, py::arg("time_repeats") = 7, py::arg("threads") = 0,
          "Every method (dense, oracle, gate, search, longformer, bigbird) at every block density on held-out inputs: a list of "
          "dicts with method, target, density, recall, answer_recall, l1_error, accuracy, forward_ms, select_ms, detail.");
    m.def("baseline_expression", &learn::baseline_expression, py::arg("name"), py::arg("density"), py::arg("n"), py::arg("block") = 16,
          "The prelude's 'longformer' or 'bigbird' sized to the largest block density at most `density`: the expression.");
}

} // namespace sparsa::python
#endif // SPARSA_HAVE_LEARN
