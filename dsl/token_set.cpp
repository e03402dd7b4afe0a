// Token sets as sorted runs: the `S` of rows(S), columns(S), global(S) and segments(S).
// Every operation is a linear merge over runs, so sets like every(2) at n = 1M stay cheap.
#include "dsl/pattern.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <string>

namespace sparsa::dsl {

namespace {

using Runs = std::vector<std::pair<int64_t, int64_t>>;

// Appends [b, e) to runs that are sorted by begin, merging it into the last run when the two
// overlap or touch (the representation never holds touching runs).
void runs_append(Runs& runs, int64_t b, int64_t e) {
    if (e <= b) return;
    if (!runs.empty() && b <= runs.back().second) {
        runs.back().second = std::max(runs.back().second, e);
        return;
    }
    runs.emplace_back(b, e);
}

} // namespace

bool TokenSet::contains(int64_t t) const {
    // The first run that ends after t is the only one that can hold it.
    auto it = std::upper_bound(runs.begin(), runs.end(), t,
                               [](int64_t v, const std::pair<int64_t, int64_t>& r) { return v < r.second; });
    return it != runs.end() && it->first <= t;
}

int64_t TokenSet::size() const {
    int64_t total = 0;
    for (const auto& [b, e] : runs) total += e - b;
    return total;
}

TokenSet token_set_range(int64_t begin, int64_t end) {
    TokenSet s;
    runs_append(s.runs, begin, end);
    return s;
}

TokenSet token_set_every(int64_t period, int64_t offset, int64_t end, int64_t width) {
    if (period < 1) {
        throw Error("every(" + std::to_string(period) + "): the period must be at least 1");
    }
    if (width < 0 || width > period) {
        throw Error("every(" + std::to_string(period) + ", width = " + std::to_string(width) +
                    "): the width must be from 0 to the period");
    }
    TokenSet s;
    if (width == 0) return s;
    if (width == period) {
        runs_append(s.runs, offset, end);  // the runs touch: one run from offset on
        return s;
    }
    // Runs [t, t + width) for t = offset, offset + period, ...: never touching (width < period).
    for (int64_t t = offset; t < end; t += period) {
        s.runs.emplace_back(t, t + std::min(width, end - t));  // clipped to end, without overflow
        if (t > end - period) break;  // the next step would pass end (and could overflow)
    }
    return s;
}

TokenSet token_set_list(std::vector<int64_t> members) {
    std::sort(members.begin(), members.end());
    TokenSet s;
    for (int64_t m : members) runs_append(s.runs, m, m + 1);
    return s;
}

TokenSet token_set_union(const TokenSet& a, const TokenSet& b) {
    TokenSet s;
    size_t i = 0, j = 0;
    while (i < a.runs.size() || j < b.runs.size()) {
        // Take the run that starts first; runs_append merges overlaps and touches.
        bool take_a = j == b.runs.size() || (i < a.runs.size() && a.runs[i].first <= b.runs[j].first);
        const auto& r = take_a ? a.runs[i++] : b.runs[j++];
        runs_append(s.runs, r.first, r.second);
    }
    return s;
}

TokenSet token_set_intersect(const TokenSet& a, const TokenSet& b) {
    TokenSet s;
    size_t i = 0, j = 0;
    while (i < a.runs.size() && j < b.runs.size()) {
        int64_t lo = std::max(a.runs[i].first, b.runs[j].first);
        int64_t hi = std::min(a.runs[i].second, b.runs[j].second);
        runs_append(s.runs, lo, hi);
        // Drop whichever run ends first: it cannot meet anything later in the other list.
        if (a.runs[i].second < b.runs[j].second) ++i; else ++j;
    }
    return s;
}

TokenSet token_set_difference(const TokenSet& a, const TokenSet& b) {
    TokenSet s;
    size_t j = 0;
    for (const auto& [ab, ae] : a.runs) {
        int64_t at = ab;  // the part of [ab, ae) not yet emitted
        while (j < b.runs.size() && b.runs[j].second <= at) ++j;
        size_t k = j;
        while (k < b.runs.size() && b.runs[k].first < ae) {
            runs_append(s.runs, at, std::min(b.runs[k].first, ae));
            at = std::max(at, b.runs[k].second);
            ++k;
        }
        runs_append(s.runs, at, ae);
    }
    return s;
}

TokenSet token_set_clip(const TokenSet& s, int64_t n) {
    return token_set_intersect(s, token_set_range(0, n));
}

} // namespace sparsa::dsl
