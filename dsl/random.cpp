// The key blocks random(r) draws per query block: a counter-based generator (splitmix64 keyed by
// seed, layer, head, qb), integer-only, so every machine, thread count and row order agrees.
// random(r, outside = P) makes the same draw over the row's candidates, then maps it back.
#include "dsl/pattern.hpp"

#include <algorithm>
#include <unordered_set>

namespace sparsa::dsl {

namespace {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;  // splitmix64's increment (golden ratio)

// splitmix64's output function: a bijective mix of 64 bits.
uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// A stream of 64-bit words for one key: word c is mix64(key + (c + 1) * gamma), which is
// exactly splitmix64 started at `key`. No state but the counter, so draws can be recomputed.
struct CounterStream {
    uint64_t key;
    uint64_t counter = 0;
    uint64_t next() { return mix64(key + (++counter) * kGamma); }

    // Uniform in [0, range) for range >= 1, unbiased: reject the lowest 2^64 mod range words
    // so that the rest splits into equal classes modulo range.
    uint64_t below(uint64_t range) {
        const uint64_t threshold = (0 - range) % range;  // == 2^64 mod range
        for (;;) {
            uint64_t x = next();
            if (x >= threshold) return x % range;
        }
    }
};

// Folds the four coordinates into one key; each step mixes, so (1, 0) and (0, 1) differ.
uint64_t row_key(uint64_t seed, int64_t layer, int64_t head, int64_t qb) {
    uint64_t k = mix64(seed + kGamma);
    k = mix64(k ^ (static_cast<uint64_t>(layer) + kGamma));
    k = mix64(k ^ (static_cast<uint64_t>(head) + 2 * kGamma));
    k = mix64(k ^ (static_cast<uint64_t>(qb) + 3 * kGamma));
    return k;
}

// Floyd's algorithm: `count` distinct values uniform over [0, available), each subset of that
// size equally likely, with exactly `count` loop steps.
std::vector<int64_t> floyd_sample(CounterStream& rng, int64_t available, int64_t count) {
    std::vector<int64_t> chosen;
    chosen.reserve(static_cast<size_t>(count));
    std::unordered_set<int64_t> seen;  // only for large draws; small ones scan `chosen`
    const bool use_set = count > 32;
    for (int64_t j = available - count; j < available; ++j) {
        auto t = static_cast<int64_t>(rng.below(static_cast<uint64_t>(j) + 1));
        bool taken = use_set ? seen.count(t) != 0
                             : std::find(chosen.begin(), chosen.end(), t) != chosen.end();
        int64_t pick = taken ? j : t;  // j is new: no earlier step could draw above j - 1
        chosen.push_back(pick);
        if (use_set) seen.insert(pick);
    }
    return chosen;
}

} // namespace

std::vector<int32_t> random_row_blocks(uint64_t seed, int64_t layer, int64_t head, int64_t qb,
                                       int64_t available, int64_t r) {
    std::vector<int32_t> out;
    if (available <= 0 || r <= 0) return out;
    if (available <= r) {
        out.resize(static_cast<size_t>(available));
        for (int64_t i = 0; i < available; ++i) out[static_cast<size_t>(i)] = static_cast<int32_t>(i);
        return out;
    }
    CounterStream rng{row_key(seed, layer, head, qb)};
    // Draw whichever side is smaller: the r blocks kept, or the available - r left out. Both give
    // a uniform r-subset; this bounds the work by available / 2.
    const bool draw_kept = r <= available - r;
    std::vector<int64_t> drawn = floyd_sample(rng, available, draw_kept ? r : available - r);
    std::sort(drawn.begin(), drawn.end());
    if (draw_kept) {
        out.assign(drawn.begin(), drawn.end());
        return out;
    }
    out.reserve(static_cast<size_t>(r));
    size_t d = 0;
    for (int64_t kb = 0; kb < available; ++kb) {
        if (d < drawn.size() && drawn[d] == kb) { ++d; continue; }
        out.push_back(static_cast<int32_t>(kb));
    }
    return out;
}

std::vector<int32_t> random_row_blocks_outside(uint64_t seed, int64_t layer, int64_t head, int64_t qb, int64_t available,
                                               int64_t r, const std::vector<std::pair<int64_t, int64_t>>& taken) {
    int64_t candidates = available;
    for (const auto& [b, e] : taken) candidates -= std::max<int64_t>(0, std::min(e, available) - b);
    std::vector<int32_t> out = random_row_blocks(seed, layer, head, qb, candidates, r);
    // Candidate d is block d + (the taken blocks below it). Both lists are sorted: walk them
    // once, moving kb past each run of taken blocks that starts at or below it.
    size_t j = 0;
    int64_t below = 0;  // taken blocks in the runs passed so far
    for (int32_t& d : out) {
        while (j < taken.size() && taken[j].first <= d + below) {
            below += taken[j].second - taken[j].first;
            ++j;
        }
        d = static_cast<int32_t>(d + below);
    }
    return out;
}

} // namespace sparsa::dsl
