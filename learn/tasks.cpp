// Synthetic recall tasks: see tasks.hpp.
#include "learn/tasks.hpp"

#include "engine/error.hpp"
#include "learn/ruler_tasks.hpp"

#include <algorithm>
#include <numeric>

namespace sparsa::learn {

uint64_t task_mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t TaskRng::next() { return task_mix64(state++); }
int64_t TaskRng::below(int64_t bound) { return static_cast<int64_t>(next() % static_cast<uint64_t>(bound)); }

namespace {

uint64_t mix64(uint64_t x) { return task_mix64(x); }
using Rng = TaskRng;

// The fixed seeds of the validation and test streams ("validati", "test-str").
constexpr uint64_t kValidationSeed = 0x76616c6964617469ULL;
constexpr uint64_t kTestSeed = 0x746573742d737472ULL;

void fill_mqar(const TaskConfig& c, Rng& rng, int32_t* tokens, int32_t* targets, int8_t* depth) {
    const int64_t half = c.n / 2;
    std::vector<int64_t> slots(static_cast<size_t>(half / 2));
    std::iota(slots.begin(), slots.end(), 0);
    std::vector<int64_t> keys(static_cast<size_t>(c.keys));
    std::iota(keys.begin(), keys.end(), 0);
    // Partial Fisher-Yates: the first `pairs` slots and keys.
    for (int64_t i = 0; i < c.pairs; ++i) {
        std::swap(slots[i], slots[i + rng.below(static_cast<int64_t>(slots.size()) - i)]);
        std::swap(keys[i], keys[i + rng.below(c.keys - i)]);
    }
    std::vector<int64_t> values(static_cast<size_t>(c.pairs));
    for (int64_t i = 0; i < c.pairs; ++i) {
        values[i] = rng.below(c.values);
        tokens[2 * slots[i]] = static_cast<int32_t>(c.key_token(keys[i]));
        tokens[2 * slots[i] + 1] = static_cast<int32_t>(c.value_token(values[i]));
    }
    std::vector<int64_t> asked(static_cast<size_t>(c.pairs));
    std::iota(asked.begin(), asked.end(), 0);
    for (int64_t i = 0; i < c.queries; ++i) std::swap(asked[i], asked[i + rng.below(c.pairs - i)]);
    const int64_t segment = (c.n - half) / c.queries;
    for (int64_t i = 0; i < c.queries; ++i) {
        const int64_t at = half + i * segment + rng.below(segment);
        tokens[at] = static_cast<int32_t>(c.key_token(keys[asked[i]]));
        targets[at] = static_cast<int32_t>(c.value_token(values[asked[i]]));
        depth[at] = static_cast<int8_t>(2 * slots[asked[i]] * kDepths / c.n);
    }
}

void fill_passkey(const TaskConfig& c, Rng& rng, int32_t* tokens, int32_t* targets, int8_t* depth) {
    const int64_t depth_at = rng.below(c.n * 7 / 8 - 1);
    const int64_t value = rng.below(c.values);
    tokens[depth_at] = static_cast<int32_t>(c.mark_token());
    tokens[depth_at + 1] = static_cast<int32_t>(c.value_token(value));
    tokens[c.n - 1] = static_cast<int32_t>(c.ask_token());
    targets[c.n - 1] = static_cast<int32_t>(c.value_token(value));
    depth[c.n - 1] = static_cast<int8_t>(depth_at * kDepths / c.n);
}

} // namespace

const std::vector<TaskKind>& task_kinds_single() {
    static const std::vector<TaskKind> kinds = {TaskKind::mqar,     TaskKind::passkey,    TaskKind::single,
                                                TaskKind::multikey, TaskKind::multivalue, TaskKind::multiquery};
    return kinds;
}

std::string task_kind_name(TaskKind kind) {
    switch (kind) {
    case TaskKind::mqar: return "mqar";
    case TaskKind::passkey: return "passkey";
    case TaskKind::mix: return "mix";
    case TaskKind::single: return "single";
    case TaskKind::multikey: return "multikey";
    case TaskKind::multivalue: return "multivalue";
    case TaskKind::multiquery: return "multiquery";
    case TaskKind::ruler: return "ruler";
    }
    return "?";
}

TaskKind task_kind_parse(const std::string& text) {
    for (TaskKind k : {TaskKind::mqar, TaskKind::passkey, TaskKind::mix, TaskKind::single, TaskKind::multikey, TaskKind::multivalue,
                       TaskKind::multiquery, TaskKind::ruler})
        if (text == task_kind_name(k)) return k;
    throw Error("unknown task '" + text + "' (use mqar, passkey, mix, single, multikey, multivalue, multiquery or ruler)");
}

namespace {

// The kinds of a config's sequences, in turn by index.
std::vector<TaskKind> kinds_of(TaskKind kind) {
    if (kind == TaskKind::mix) return {TaskKind::mqar, TaskKind::passkey};
    if (kind == TaskKind::ruler) return {TaskKind::single, TaskKind::multikey, TaskKind::multivalue, TaskKind::multiquery, TaskKind::mqar};
    return {kind};
}

bool is_needle(TaskKind kind) {
    return kind == TaskKind::single || kind == TaskKind::multikey || kind == TaskKind::multivalue || kind == TaskKind::multiquery;
}

} // namespace

void task_config_check(const TaskConfig& c) {
    auto fail = [](const std::string& what) { throw Error("task: " + what); };
    if (c.n < 16 || c.n > 65536) fail("n = " + std::to_string(c.n) + " is out of range (16 to 65536)");
    if (c.keys < 1 || c.values < 1 || c.fillers < 1) fail("keys, values and fillers must each be at least 1");
    if (c.keys + c.values + c.fillers > 100000) fail("keys + values + fillers must be at most 100000");
    for (TaskKind k : kinds_of(c.kind))
        if (is_needle(k)) ruler_config_check(c, k);
    if (c.kind == TaskKind::mqar || c.kind == TaskKind::mix || c.kind == TaskKind::ruler) {
        if (c.pairs < 1 || c.pairs > c.keys) fail("pairs = " + std::to_string(c.pairs) + " must be 1 to keys (" + std::to_string(c.keys) + ")");
        if (c.pairs > c.n / 4) fail("pairs = " + std::to_string(c.pairs) + " do not fit in the first half of n = " + std::to_string(c.n) + " (at most n / 4)");
        if (c.queries < 1 || c.queries > c.pairs) fail("queries = " + std::to_string(c.queries) + " must be 1 to pairs (" + std::to_string(c.pairs) + ")");
        if ((c.n - c.n / 2) / c.queries < 1) fail("queries = " + std::to_string(c.queries) + " do not fit in the second half of n");
    }
}

uint64_t task_held_out_seed(uint64_t seed) { return mix64(seed ^ 0x68656c642d6f7574ULL); }

uint64_t task_stream_seed(TaskStream stream, uint64_t seed) {
    if (stream == TaskStream::validation) return kValidationSeed;
    if (stream == TaskStream::test) return kTestSeed;
    if (seed == kValidationSeed || seed == kTestSeed)
        throw Error("task: training seed " + std::to_string(seed) + " is the " + (seed == kTestSeed ? "test" : "validation") +
                    " stream's seed (use another --seed)");
    return seed;
}

std::string task_stream_name(TaskStream stream) {
    return stream == TaskStream::train ? "train" : stream == TaskStream::validation ? "validation" : "test";
}

TaskScores::TaskScores()
    : answers(task_kinds_single().size(), std::vector<int64_t>(kDepths, 0)), correct(task_kinds_single().size(), std::vector<int64_t>(kDepths, 0)) {}

void TaskScores::add(const TaskBatch& batch, const std::vector<int8_t>& hits) {
    if (hits.size() != batch.targets.size()) throw Error("task scores: hits for " + std::to_string(hits.size()) + " positions, the batch has " + std::to_string(batch.targets.size()));
    const auto& kinds = task_kinds_single();
    for (int64_t b = 0; b < batch.batch; ++b) {
        const size_t k = static_cast<size_t>(std::find(kinds.begin(), kinds.end(), static_cast<TaskKind>(batch.kind[b])) - kinds.begin());
        for (int64_t i = 0; i < batch.n; ++i) {
            const size_t at = static_cast<size_t>(b * batch.n + i);
            if (batch.targets[at] < 0) continue;
            const int64_t d = std::clamp<int64_t>(batch.depth[at], 0, kDepths - 1);
            answers[k][d] += 1;
            correct[k][d] += hits[at] > 0 ? 1 : 0;
        }
    }
}

int64_t TaskScores::kind_answers(size_t kind) const {
    int64_t s = 0;
    for (int64_t a : answers[kind]) s += a;
    return s;
}

double TaskScores::kind_accuracy(size_t kind) const {
    int64_t a = 0, c = 0;
    for (int64_t d = 0; d < kDepths; ++d) {
        a += answers[kind][d];
        c += correct[kind][d];
    }
    return a ? static_cast<double>(c) / static_cast<double>(a) : -1;
}

double TaskScores::depth_accuracy(size_t kind, int64_t depth) const {
    return answers[kind][depth] ? static_cast<double>(correct[kind][depth]) / static_cast<double>(answers[kind][depth]) : -1;
}

int64_t TaskScores::total_answers() const {
    int64_t s = 0;
    for (size_t k = 0; k < answers.size(); ++k) s += kind_answers(k);
    return s;
}

double TaskScores::accuracy() const {
    int64_t a = 0, c = 0;
    for (size_t k = 0; k < answers.size(); ++k)
        for (int64_t d = 0; d < kDepths; ++d) {
            a += answers[k][d];
            c += correct[k][d];
        }
    return a ? static_cast<double>(c) / static_cast<double>(a) : -1;
}

TaskBatch task_batch(const TaskConfig& config, uint64_t seed, int64_t first_index, int64_t batch) {
    task_config_check(config);
    TaskBatch out;
    out.batch = batch;
    out.n = config.n;
    out.tokens.assign(static_cast<size_t>(batch * config.n), 0);
    out.targets.assign(static_cast<size_t>(batch * config.n), -1);
    out.is_passkey.assign(static_cast<size_t>(batch), 0);
    out.kind.assign(static_cast<size_t>(batch), 0);
    out.depth.assign(static_cast<size_t>(batch * config.n), -1);
    const std::vector<TaskKind> kinds = kinds_of(config.kind);
    const int64_t turns = static_cast<int64_t>(kinds.size());
    for (int64_t b = 0; b < batch; ++b) {
        const int64_t index = first_index + b;
        Rng rng{mix64(seed) ^ mix64(static_cast<uint64_t>(index) * 0x9e3779b97f4a7c15ULL + 1)};
        int32_t* tokens = out.tokens.data() + b * config.n;
        int32_t* targets = out.targets.data() + b * config.n;
        int8_t* depth = out.depth.data() + b * config.n;
        for (int64_t i = 0; i < config.n; ++i) tokens[i] = static_cast<int32_t>(rng.below(config.fillers));
        const TaskKind kind = kinds[static_cast<size_t>(index % turns)];
        out.kind[b] = static_cast<uint8_t>(kind);
        out.is_passkey[b] = kind == TaskKind::passkey ? 1 : 0;
        if (kind == TaskKind::passkey) fill_passkey(config, rng, tokens, targets, depth);
        else if (kind == TaskKind::mqar) fill_mqar(config, rng, tokens, targets, depth);
        else ruler_fill(config, kind, (index / turns) % kDepths, rng, tokens, targets, depth);
    }
    return out;
}

} // namespace sparsa::learn
