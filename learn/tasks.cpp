// Synthetic recall tasks: see tasks.hpp.
#include "learn/tasks.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <numeric>

namespace sparsa::learn {

namespace {

uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// A small counter-based generator: a stream per (seed, index).
struct Rng {
    uint64_t state;
    uint64_t next() { return mix64(state++); }
    int64_t below(int64_t bound) { return static_cast<int64_t>(next() % static_cast<uint64_t>(bound)); }
};

void fill_mqar(const TaskConfig& c, Rng& rng, int32_t* tokens, int32_t* targets) {
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
    }
}

void fill_passkey(const TaskConfig& c, Rng& rng, int32_t* tokens, int32_t* targets) {
    const int64_t depth = rng.below(c.n * 7 / 8 - 1);
    const int64_t value = rng.below(c.values);
    tokens[depth] = static_cast<int32_t>(c.mark_token());
    tokens[depth + 1] = static_cast<int32_t>(c.value_token(value));
    tokens[c.n - 1] = static_cast<int32_t>(c.ask_token());
    targets[c.n - 1] = static_cast<int32_t>(c.value_token(value));
}

} // namespace

std::string task_kind_name(TaskKind kind) {
    switch (kind) {
    case TaskKind::mqar: return "mqar";
    case TaskKind::passkey: return "passkey";
    case TaskKind::mix: return "mix";
    }
    return "?";
}

TaskKind task_kind_parse(const std::string& text) {
    if (text == "mqar") return TaskKind::mqar;
    if (text == "passkey") return TaskKind::passkey;
    if (text == "mix") return TaskKind::mix;
    throw Error("unknown task '" + text + "' (use mqar, passkey or mix)");
}

void task_config_check(const TaskConfig& c) {
    auto fail = [](const std::string& what) { throw Error("task: " + what); };
    if (c.n < 16 || c.n > 65536) fail("n = " + std::to_string(c.n) + " is out of range (16 to 65536)");
    if (c.keys < 1 || c.values < 1 || c.fillers < 1) fail("keys, values and fillers must each be at least 1");
    if (c.kind != TaskKind::passkey) {
        if (c.pairs < 1 || c.pairs > c.keys) fail("pairs = " + std::to_string(c.pairs) + " must be 1 to keys (" + std::to_string(c.keys) + ")");
        if (c.pairs > c.n / 4) fail("pairs = " + std::to_string(c.pairs) + " do not fit in the first half of n = " + std::to_string(c.n) + " (at most n / 4)");
        if (c.queries < 1 || c.queries > c.pairs) fail("queries = " + std::to_string(c.queries) + " must be 1 to pairs (" + std::to_string(c.pairs) + ")");
        if ((c.n - c.n / 2) / c.queries < 1) fail("queries = " + std::to_string(c.queries) + " do not fit in the second half of n");
    }
}

uint64_t task_held_out_seed(uint64_t seed) { return mix64(seed ^ 0x68656c642d6f7574ULL); }

TaskBatch task_batch(const TaskConfig& config, uint64_t seed, int64_t first_index, int64_t batch) {
    task_config_check(config);
    TaskBatch out;
    out.batch = batch;
    out.n = config.n;
    out.tokens.assign(static_cast<size_t>(batch * config.n), 0);
    out.targets.assign(static_cast<size_t>(batch * config.n), -1);
    out.is_passkey.assign(static_cast<size_t>(batch), 0);
    for (int64_t b = 0; b < batch; ++b) {
        const int64_t index = first_index + b;
        Rng rng{mix64(seed) ^ mix64(static_cast<uint64_t>(index) * 0x9e3779b97f4a7c15ULL + 1)};
        int32_t* tokens = out.tokens.data() + b * config.n;
        int32_t* targets = out.targets.data() + b * config.n;
        for (int64_t i = 0; i < config.n; ++i) tokens[i] = static_cast<int32_t>(rng.below(config.fillers));
        const bool passkey = config.kind == TaskKind::passkey || (config.kind == TaskKind::mix && index % 2 == 1);
        out.is_passkey[b] = passkey ? 1 : 0;
        if (passkey) fill_passkey(config, rng, tokens, targets);
        else fill_mqar(config, rng, tokens, targets);
    }
    return out;
}

} // namespace sparsa::learn
