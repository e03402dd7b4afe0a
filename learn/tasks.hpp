// Synthetic tasks for the teacher, whose answers sit far from where they are asked: multi-query
// associative recall (key-value pairs, later queries of earlier keys) and passkey retrieval.
// Every sequence is a function of (seed, index) only, so data are reproducible on any machine.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa::learn {

enum class TaskKind { mqar, passkey, mix };

// "mqar", "passkey", "mix"; task_kind_parse throws sparsa::Error naming the accepted words.
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

    int64_t vocab() const { return fillers + keys + values + 2; }
    int64_t key_token(int64_t i) const { return fillers + i; }
    int64_t value_token(int64_t i) const { return fillers + keys + i; }
    int64_t mark_token() const { return fillers + keys + values; }
    int64_t ask_token() const { return fillers + keys + values + 1; }
};

// Throws sparsa::Error naming the field when a config cannot make sequences (e.g. too many
// pairs for n, queries > pairs).
void task_config_check(const TaskConfig& config);

// A batch of sequences. tokens, targets: [batch, n]; target -1 where there is no answer.
struct TaskBatch {
    int64_t batch = 0, n = 0;
    std::vector<int32_t> tokens;
    std::vector<int32_t> targets;
    std::vector<uint8_t> is_passkey;   // [batch]: 1 for a passkey sequence, 0 for mqar
};

// Sequences first_index .. first_index + batch - 1 of the stream `seed`.
TaskBatch task_batch(const TaskConfig& config, uint64_t seed, int64_t first_index, int64_t batch);

// The seed of the held-out stream for a training seed (a different stream, never trained on).
uint64_t task_held_out_seed(uint64_t seed);

} // namespace sparsa::learn
