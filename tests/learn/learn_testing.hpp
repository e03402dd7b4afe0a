// Shared pieces of the learn/ tests.
#pragma once

#include "learn/teacher.hpp"

#include <cstdint>

namespace sparsa::learn::testing {

// An untrained causal teacher on the RULER mix at n = 128 (2 needles, 4 pairs, 4 queries), as small
// as the ruler evaluation allows (d 16, 2 heads over 1 key/value head, 1 layer, MLP 16): the ruler
// evaluation's tests run every method on it in well under a second.
inline Teacher tiny_ruler_teacher(uint64_t seed = 2) {
    TaskConfig task;
    task.kind = TaskKind::ruler;
    task.n = 128;
    task.needles = 2;
    task.pairs = 4;
    task.queries = 4;
    TeacherConfig model = teacher_config_default(task);
    model.d = 16;
    model.heads = 2;
    model.kv_heads = 1;
    model.layers = 1;
    model.mlp = 16;
    return teacher_init(model, task, seed);
}

} // namespace sparsa::learn::testing
