// Synthetic tasks for the teacher, whose answers sit far from where they are asked: multi-query
// associative recall (key-value pairs, later queries of earlier keys), passkey retrieval, and the
// RULER-style needle tasks (learn/ruler_tasks.hpp). Every sequence is a function of (seed, index)
// only, so data are reproducible on any machine; training, validation and test are three streams
// with distinct seeds (task_stream_seed).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa::learn {

// mix: mqar and passkey alternating. single, multikey, multivalue, multiquery: RULER's needle
// tasks (ruler_tasks.hpp); ruler: the four of them and mqar in turn (sequence index % 5).
enum class TaskKind { mqar, passkey, mix, single, multikey, multivalue, multiquery, ruler };

// The kinds one sequence can be (mix and ruler are mixtures): mqar, passkey, single, multikey,
// multivalue, multiquery, in that order.
const std::vector<TaskKind>& task_kinds_single();

// "mqar", "passkey", "mix", "single", ...; task_kind_parse throws sparsa::Error naming the
// accepted words.
std::string task_kind_name(TaskKind kind);
TaskKind task_kind_parse(const std::string& text);

// Vocabulary: [fillers][keys][values][MARK][ASK]. A sequence of n tokens:
// - mqar: `pairs` (key, value) pairs at random even positions of the first half, keys distinct;
//   the second half is cut into `queries` equal segments, each holding one earlier key at a
//   random offset; the target at that position is the key's value.
// - passkey: fillers, MARK at a random depth of the first 7/8 followed by the passkey (a value
//   token); ASK at the last position, whose target is the passkey.
// - mix: even sequence indices are mqar, odd ones passkey.
// Fillers are uniform random filler tokens everywhere else.
struct TaskConfig {
    TaskKind kind = TaskKind::mix;
    int64_t n = 256;
    int64_t pairs = 8;
    int64_t queries = 8;     // <= pairs
    int64_t keys = 32;
    int64_t values = 32;
    int64_t fillers = 16;
    // The needle tasks: needles in the haystack (multikey: 1 asked, the rest distractors;
    // multivalue: values of the one key; multiquery: all asked). single has one.
    int64_t needles = 4;

    int64_t vocab() const { return fillers + keys + values + 2; }
    int64_t key_token(int64_t i) const { return fillers + i; }
    int64_t value_token(int64_t i) const { return fillers + keys + i; }
    int64_t mark_token() const { return fillers + keys + values; }
    int64_t ask_token() const { return fillers + keys + values + 1; }
};

// Throws sparsa::Error naming the field when a config cannot make sequences (e.g. too many
// pairs for n, queries > pairs).
void task_config_check(const TaskConfig& config);

// The depth buckets of an answer: where its evidence (the needle, or mqar's key) sits.
constexpr int64_t kDepths = 10;

// The counter-based generator of every sequence: draw t of a sequence is a function of (state, t).
struct TaskRng {
    uint64_t state;
    uint64_t next();
    int64_t below(int64_t bound);   // uniform in [0, bound), bound >= 1
};
uint64_t task_mix64(uint64_t x);    // splitmix64's finaliser

// A batch of sequences. tokens, targets: [batch, n]; target -1 where there is no answer.
struct TaskBatch {
    int64_t batch = 0, n = 0;
    std::vector<int32_t> tokens;
    std::vector<int32_t> targets;
    std::vector<uint8_t> is_passkey;   // [batch]: 1 for a passkey sequence, 0 otherwise
    std::vector<uint8_t> kind;         // [batch]: the TaskKind of each sequence (never mix or ruler)
    // [batch, n]: for an answer, the depth bucket 0..9 of its evidence: floor(10 * position / h),
    // h the haystack's length (needle tasks: the needle's MARK; mqar: the key, h = n; passkey:
    // MARK, h = n); -1 where there is no answer.
    std::vector<int8_t> depth;
};

// Sequences first_index .. first_index + batch - 1 of the stream `seed`.
TaskBatch task_batch(const TaskConfig& config, uint64_t seed, int64_t first_index, int64_t batch);

// The seed of the held-out stream for a training seed (a different stream, never trained on).
// Kept for the first chain's figures; new runs use task_stream_seed.
uint64_t task_held_out_seed(uint64_t seed);

// The three streams of a run. train is the training seed itself (each training seed its own
// stream; calibration inputs for selectors come from it too, from index kCalibrationFirst);
// validation and test are fixed seeds, the same for every training seed, so seeds are compared on
// the same test sequences. Every choice (early stopping, thresholds, defaults) is made on
// validation, every reported figure on test. task_stream_seed(train, s) throws for the two
// training seeds that would equal the validation or test seed: the streams never share a seed,
// so never a sequence (checked by hashing in tests/learn).
enum class TaskStream { train, validation, test };
uint64_t task_stream_seed(TaskStream stream, uint64_t seed);
std::string task_stream_name(TaskStream stream);

// Per-answer scores grouped by task kind and by depth. hits: [batch, n], -1 where there is no
// answer, 1 correct, 0 wrong (TeacherResult::hits).
struct TaskScores {
    // [kind][depth]: answers and correct ones; kind indexes task_kinds_single().
    std::vector<std::vector<int64_t>> answers, correct;
    TaskScores();
    void add(const TaskBatch& batch, const std::vector<int8_t>& hits);
    int64_t kind_answers(size_t kind) const;
    double kind_accuracy(size_t kind) const;               // -1 when there are none
    double depth_accuracy(size_t kind, int64_t depth) const;   // -1 when there are none
    int64_t total_answers() const;
    double accuracy() const;                               // over every answer; -1 when none
};

} // namespace sparsa::learn
