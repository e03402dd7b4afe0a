// The teacher: a small pre-LN transformer (token embeddings, the previous token's embedding
// (a token shift, as H3 and Based use for recall), rotary, sinusoidal or no positions, L layers of
// multi-head attention with grouped-query heads and a GELU MLP, a final layer norm and a linear
// head), trained on the CPU with hand-written gradients. Causal (decoder-only) by default: its
// attention runs through sparsa's CPU engine with the causal mask as an ordinary MaskSet, and any
// other mask is cut to its causal part; checkpoints of the first, bidirectional teacher still load.
//
// Index: [SECTION] config and parameters, [SECTION] forward and gradients,
//        [SECTION] training, [SECTION] checkpoints
#pragma once

#include "engine/block_mask.hpp"
#include "engine/tensor.hpp"
#include "learn/tasks.hpp"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace sparsa::learn {

// [SECTION] config and parameters

// Positions: sinusoidal (added to the embeddings; the first teacher's), rotary (RoPE, base 10000,
// on q and k of every head: pairs (2j, 2j + 1) of head dimensions turned by i * 10000^(-2j / hd)),
// or none (a causal model still knows order from its mask, and the token shift gives it the
// previous token).
enum class Positions { sinusoidal, rotary, none };
std::string positions_name(Positions positions);
Positions positions_parse(const std::string& text);   // throws naming the accepted words

struct TeacherConfig {
    int64_t vocab = 0;    // from the task: TaskConfig::vocab()
    int64_t d = 64;       // model width
    int64_t heads = 4;    // query heads
    int64_t layers = 2;
    int64_t mlp = 128;    // hidden width of the MLP
    // Head width: 0 is d / heads (heads must divide d). Any other value (1 to 256): wq is
    // [d, heads * head_width], wo [heads * head_width, d].
    int64_t head_width = 0;
    // Key and value heads (grouped-query attention): 0 is heads; else it must divide heads, and
    // query head h reads key/value head h / (heads / kv_heads). wk, wv: [d, kv_heads * head_dim()].
    int64_t kv_heads = 0;
    bool causal = true;   // key <= query only (a decoder); false: the first, bidirectional teacher
    Positions positions = Positions::none;
    // wq and wk start at qk_identity * I plus noise: every head first attends to tokens like
    // itself (itself and its neighbours, through the positions), so rows that no answer needs
    // tend to stay local. 0 (the default): noise only. See docs/learn.md for what it cost.
    double qk_identity = 0;
    // The weight of the attention-sharpness term the teacher was trained with (lambda in
    // TrainOptions::sharpness; recorded here so a checkpoint says how it was made). 0: none.
    double sharpness = 0;
    double own_block = 0;   // likewise TrainOptions::own_block

    int64_t head_dim() const { return head_width > 0 ? head_width : d / heads; }
    int64_t kv_head_count() const { return kv_heads > 0 ? kv_heads : heads; }
    int64_t q_width() const { return heads * head_dim(); }
    int64_t kv_width() const { return kv_head_count() * head_dim(); }
};

// The lab model new runs get: causal, no positions (docs/learn.md: "Rotary or no positions
// across lengths"), d = 128, 2 heads of width 64 (as many key/value
// heads), 2 layers, MLP 256, no shaping. vocab from the task.
TeacherConfig teacher_config_default(const TaskConfig& task);

// Throws sparsa::Error naming the field for a shape the model cannot have.
void teacher_config_check(const TeacherConfig& config);

// Where each parameter tensor sits in the flat parameter vector (all row-major, double).
struct ParamSlot {
    std::string name;                  // "layer1.wq"
    int64_t offset = 0, rows = 0, cols = 0;
    int64_t size() const { return rows * cols; }
};
std::vector<ParamSlot> teacher_param_slots(const TeacherConfig& config);
int64_t teacher_param_count(const TeacherConfig& config);

struct Teacher {
    TeacherConfig config;
    TaskConfig task;                 // what it was trained on (n, vocabulary)
    std::vector<double> params;      // [teacher_param_count(config)]
};

// Random initial weights from `seed` (layer norms at gain 1, bias 0).
Teacher teacher_init(const TeacherConfig& config, const TaskConfig& task, uint64_t seed);

// [SECTION] forward and gradients

// The mask of every attention layer: [layers, heads] masks over n. A MaskSet of one layer is
// used for every layer.
MaskSet mask_set_dense(int64_t n, int32_t block, int64_t layers, int64_t heads);

// Picks the masks of layer `layer` from that layer's queries and keys (for input-dependent
// masks such as a block gate): q, k: [1, heads, n, head_dim]. Returns a MaskSet whose layer 0 is
// used. Empty function: the fixed MaskSet is used.
using MaskChooser = std::function<MaskSet(int64_t layer, const Tensor& q, const Tensor& k)>;

// What one forward pass gives.
struct TeacherResult {
    double loss = 0;            // mean cross entropy over answer positions
    int64_t answers = 0;        // answer positions
    int64_t correct = 0;        // answers whose argmax is the target
    int64_t passkey_answers = 0, passkey_correct = 0;
    // Only when TeacherRunOptions::sharpness or own_block > 0 (0 otherwise): the mean entropy
    // (nats) of the dense attention rows, over rows, heads, layers and sequences; the mean of
    // -log(share of a row's attention on its own block) over the same but only the rows no answer
    // is asked at; and the objective the gradients
    // are of, loss + sharpness * entropy + own_block * own_block term.
    double entropy = 0;
    double own_block = 0;
    double objective = 0;
    // [batch, n]: -1 where there is no answer, 1 where the argmax is the target, 0 where not
    // (TaskScores::add groups them by task and depth).
    std::vector<int8_t> hits;
};

// Optional outputs of a forward pass, per sequence of the batch.
struct TeacherCapture {
    // [batch][layer]: the attention inputs and outputs of each layer, [1, heads, n, head_dim]
    // (lse: [1, heads, n, 1]); q and k after the rotary turn, k and v per query head (a
    // key/value head repeated for each query head of its group).
    std::vector<std::vector<Tensor>> q, k, v, o, lse;
};

struct TeacherRunOptions {
    const MaskSet* masks = nullptr;   // nullptr: dense (causal for a causal teacher); any mask is cut
                                      // to its causal part for a causal teacher
    int32_t block = 16;               // the own-block term's block (the dense mask's is 64 from n = 64:
                                      // the same attention, fewer engine blocks)
    MaskChooser chooser;              // when set, overrides masks layer by layer
    // When set, each layer's attention output is attention(layer, q, k, v) ([1, heads, n, hd]
    // each, q and k after the rotary turn): an estimate of the dense attention that is no mask
    // (FAVOR+ in the ruler evaluation). Evaluation only: not with masks, a chooser, a capture,
    // the shaping terms or gradients.
    std::function<Tensor(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v)> attention;
    TeacherCapture* capture = nullptr;
    int threads = 0;                  // sequences run in parallel; 0: thread_count()
    // lambda >= 0: adds lambda * (mean entropy of the attention rows) to the objective, computed
    // densely on the side (n x n per head, in double, from the engine's Q and K) with its exact
    // gradient pushed to dQ and dK; the attention itself still runs through the engine. It makes
    // rows that no answer needs focus on few keys instead of spreading evenly, so the teacher's
    // attention is distillable. Dense attention only (no masks, no chooser).
    double sharpness = 0;
    // mu >= 0: adds mu * mean over the rows no answer is asked at (target < 0) of -log(share of the
    // row's attention on its own block of `block` positions), computed and pushed to dQ, dK the
    // same way. Those rows then park their attention on their own block (which the gate always
    // keeps) instead of on some far position, while answer rows stay free to look at their keys.
    // Dense attention only.
    double own_block = 0;
};

// Loss and accuracy over a batch, no gradients.
TeacherResult teacher_evaluate(const Teacher& teacher, const TaskBatch& batch, const TeacherRunOptions& options = {});

// The dense (causal for a causal teacher) forward's q, k, v, o and lse of every layer over a batch:
// what distillation and the selectors learn from. block: the engine's block (TeacherRunOptions).
TeacherCapture teacher_capture(const Teacher& teacher, const TaskBatch& batch, int32_t block, int threads = 0);

// Loss, accuracy and d loss / d params ([teacher_param_count], summed over the batch in a fixed
// order, so the same for any thread count).
TeacherResult teacher_gradients(const Teacher& teacher, const TaskBatch& batch, std::vector<double>& grads,
                                const TeacherRunOptions& options = {});

// [SECTION] training

struct TrainOptions {
    uint64_t seed = 1;
    int64_t steps = 4000;          // at most
    int64_t batch = 16;
    double lr = 2e-3;              // Adam, warmup then cosine decay to lr / 10
    int64_t warmup = 100;
    double clip = 1.0;             // global gradient norm
    int64_t eval_every = 100;      // held-out accuracy every so many steps
    int64_t eval_sequences = 64;
    double stop_accuracy = 0.99;   // stop when held-out accuracy reaches this
    // TeacherRunOptions::sharpness while training (also stored in the config). The term is off
    // until the held-out accuracy first reaches stop_accuracy (on from the start, it collapses
    // every row onto itself before any recall is learned, and the task is never learned: see
    // docs/learn.md); then it ramps linearly from 0 to `sharpness` over sharpen_steps / 4 steps,
    // and training stops at the first held-out measurement at least sharpen_steps later whose
    // accuracy still reaches stop_accuracy.
    double sharpness = 0;
    double own_block = 0;          // TeacherRunOptions::own_block, on the same schedule as sharpness
    int64_t sharpen_steps = 400;
    double max_seconds = 0;        // stop after this long; 0: no limit
    bool progress = true;          // progress line on stderr
    int threads = 0;
};

struct TrainReport {
    int64_t steps = 0;
    double seconds = 0;
    double first_loss = 0, last_loss = 0;          // mean over the first and last 10 steps
    double held_out_accuracy = 0, held_out_loss = 0;   // of the validation stream (the names predate the three streams)
    double held_out_mqar = 0, held_out_passkey = 0; // accuracy per task (-1 when none)
    TaskScores held_out_scores;                     // the last validation measurement per task and depth
    double seconds_per_step = 0;                    // median over the steps
    double tokens_per_second = 0;
    // When sharpness or own_block > 0: the step the terms came on at (-1: never, the task was not
    // learned), and the mean attention-row entropy (nats) over the first and last 10 steps with
    // them on.
    int64_t sharpen_from = -1;
    double first_entropy = 0, last_entropy = 0;
    double first_own_block = 0, last_own_block = 0;   // mean share of a row's attention on its own block (geometric)
};

// Trains `teacher` in place on its task's training stream (seed), measuring (and stopping early)
// on the validation stream (task_stream_seed(validation)), never on the test stream.
TrainReport teacher_train(Teacher& teacher, const TrainOptions& options);

// [SECTION] checkpoints

// Version 2 adds head_width, kv_heads, causal and positions to the header's model, and the needle
// tasks' `needles` to its task; a version 1 file (the first teacher) loads as head_width 0,
// kv_heads 0, bidirectional, sinusoidal. The layout: docs/learn.md, "Checkpoint format".
constexpr int64_t kTeacherFormatVersion = 2;

// Saves atomically: magic, version, a JSON header (configs), the parameters, and a 64-bit
// checksum of everything before it.
void teacher_save(const Teacher& teacher, const std::string& path);

// Loads and checks a checkpoint (version 1 or 2). Throws sparsa::Error naming the file for a
// foreign one, a version this sparsa does not read (naming the version), a truncated or corrupt
// one (checksum mismatch), saying what to do.
Teacher teacher_load(const std::string& path);

} // namespace sparsa::learn
