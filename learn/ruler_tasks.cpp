// RULER-style needle tasks: see ruler_tasks.hpp.
#include "learn/ruler_tasks.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <numeric>
#include <vector>

namespace sparsa::learn {

namespace {

constexpr int64_t kNeedleTokens = 3;   // MARK key value

int64_t needle_count(const TaskConfig& c, TaskKind kind) { return kind == TaskKind::single ? 1 : c.needles; }

} // namespace

int64_t ruler_query_length(const TaskConfig& c, TaskKind kind) {
    const int64_t m = needle_count(c, kind);
    switch (kind) {
    case TaskKind::multivalue: return m + 1;     // ASK key v1 .. v(m-1)
    case TaskKind::multiquery: return 2 * m;     // (ASK key) x m
    default: return 2;                           // ASK key
    }
}

void ruler_config_check(const TaskConfig& c, TaskKind kind) {
    auto fail = [](const std::string& what) { throw Error("task: " + what); };
    const int64_t m = needle_count(c, kind);
    if (kind != TaskKind::single && (c.needles < 1 || c.needles > kDepths))
        fail("needles = " + std::to_string(c.needles) + " must be 1 to 10 (one per depth slice)");
    if (m > c.keys || m > c.values)
        fail("needles = " + std::to_string(m) + " must be at most keys (" + std::to_string(c.keys) + ") and values (" +
             std::to_string(c.values) + ")");
    const int64_t haystack = c.n - ruler_query_length(c, kind);
    if (haystack < kNeedleTokens * kDepths)   // every slice of floor(h / 10) or more tokens holds a needle of 3
        fail("n = " + std::to_string(c.n) + " leaves a haystack of " + std::to_string(haystack) + " tokens for task " +
             task_kind_name(kind) + "; it needs at least 30 (raise n or lower needles)");
}

void ruler_fill(const TaskConfig& c, TaskKind kind, int64_t bucket, TaskRng& rng, int32_t* tokens, int32_t* targets,
                int8_t* depth) {
    const int64_t m = needle_count(c, kind);
    const int64_t h = c.n - ruler_query_length(c, kind);
    // Keys and values: distinct (partial Fisher-Yates); multivalue uses key 0 for every needle.
    std::vector<int64_t> keys(static_cast<size_t>(c.keys)), values(static_cast<size_t>(c.values));
    std::iota(keys.begin(), keys.end(), 0);
    std::iota(values.begin(), values.end(), 0);
    for (int64_t j = 0; j < m; ++j) {
        std::swap(keys[j], keys[j + rng.below(c.keys - j)]);
        std::swap(values[j], values[j + rng.below(c.values - j)]);
    }
    struct Needle {
        int64_t at, key, value, bucket;
    };
    std::vector<Needle> needles;
    for (int64_t j = 0; j < m; ++j) {
        const int64_t b = (bucket + 3 * j) % kDepths;
        const int64_t start = b * h / kDepths, end = (b + 1) * h / kDepths;   // the slice [start, end)
        const int64_t at = start + rng.below(end - start - kNeedleTokens + 1);
        const int64_t key = kind == TaskKind::multivalue ? keys[0] : keys[j];
        needles.push_back({at, key, values[j], b});
        tokens[at] = static_cast<int32_t>(c.mark_token());
        tokens[at + 1] = static_cast<int32_t>(c.key_token(key));
        tokens[at + 2] = static_cast<int32_t>(c.value_token(values[j]));
    }
    auto answer = [&](int64_t at, const Needle& needle) {
        targets[at] = static_cast<int32_t>(c.value_token(needle.value));
        depth[at] = static_cast<int8_t>(needle.bucket);
    };
    if (kind == TaskKind::single || kind == TaskKind::multikey) {
        tokens[h] = static_cast<int32_t>(c.ask_token());
        tokens[h + 1] = static_cast<int32_t>(c.key_token(needles[0].key));
        answer(h + 1, needles[0]);
    } else if (kind == TaskKind::multivalue) {
        std::vector<Needle> ordered = needles;   // the values in the order they stand
        std::sort(ordered.begin(), ordered.end(), [](const Needle& a, const Needle& b) { return a.at < b.at; });
        tokens[h] = static_cast<int32_t>(c.ask_token());
        tokens[h + 1] = static_cast<int32_t>(c.key_token(ordered[0].key));
        for (int64_t t = 0; t < m; ++t) {
            answer(h + 1 + t, ordered[t]);
            if (t + 1 < m) tokens[h + 2 + t] = static_cast<int32_t>(c.value_token(ordered[t].value));
        }
    } else {   // multiquery: every needle asked, in a random order
        std::vector<int64_t> order(static_cast<size_t>(m));
        std::iota(order.begin(), order.end(), 0);
        for (int64_t t = 0; t < m; ++t) std::swap(order[t], order[t + rng.below(m - t)]);
        for (int64_t t = 0; t < m; ++t) {
            tokens[h + 2 * t] = static_cast<int32_t>(c.ask_token());
            tokens[h + 2 * t + 1] = static_cast<int32_t>(c.key_token(needles[order[t]].key));
            answer(h + 2 * t + 1, needles[order[t]]);
        }
    }
}

} // namespace sparsa::learn
