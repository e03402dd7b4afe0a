// RULER-style needle tasks (Hsieh et al., 2024, "RULER: What's the real context size of your
// long-context language models?"), in the teacher's vocabulary: a haystack of filler tokens holds
// needles `MARK key value`, and the end of the sequence asks for them.
// - single: one needle; `ASK key`, the answer (at the key) its value.
// - multikey: `needles` needles of distinct keys, one asked; the others are distractors.
// - multivalue: `needles` needles of the same key with distinct values; `ASK key v1 .. v(m-1)`,
//   the answers, at the key and at each value, are the values in the order they stand in the
//   haystack (teacher forcing: each answer is scored on its own).
// - multiquery: `needles` needles of distinct keys, all asked: `ASK k1 ASK k2 ...` in a random order.
// The needle that sets the depth (the asked one; needle j of a multi-needle task) lies in the
// slice [b h / 10, (b + 1) h / 10) of the haystack (h = n - the query's length) for a depth bucket
// b given by the sequence index, so every bucket gets the same share of answers; needle j sits in
// bucket (b + 3 j) % 10, so needles never share a slice (at most 10 needles).
#pragma once

#include "learn/tasks.hpp"

#include <cstdint>

namespace sparsa::learn {

// Tokens of the query part at the end of a needle sequence of `kind`.
int64_t ruler_query_length(const TaskConfig& config, TaskKind kind);

// Throws sparsa::Error naming the field when the needle tasks cannot be made at this config
// (needles 1 to 10 and at most keys / values; each depth slice must hold a needle: n - query >= 30).
void ruler_config_check(const TaskConfig& config, TaskKind kind);

// Writes one needle sequence over `tokens` (already fillers): needles, query, targets and the
// answers' depth buckets. tokens, targets, depth: [n]; targets and depth start at -1.
void ruler_fill(const TaskConfig& config, TaskKind kind, int64_t bucket, TaskRng& rng, int32_t* tokens, int32_t* targets,
                int8_t* depth);

} // namespace sparsa::learn
