// Private helpers of the pattern oracle (pattern.cpp) and the compiler (pattern_compile.cpp):
// integer division that rounds the way the math does, the "unbounded" parameter, a mask lookup,
// and the compiler's 3-state run lists of key blocks with their algebra.
#pragma once

#include "engine/block_mask.hpp"

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <vector>

namespace sparsa::dsl::detail {

// Builders clamp window/dilated/band parameters to +-kUnbounded: far beyond any n, yet small
// enough that q - a, q + b and the like never overflow int64. causal is window(kUnbounded, 0).
constexpr int64_t kUnbounded = int64_t{1} << 62;

inline int64_t clamp_unbounded(int64_t v) { return std::clamp(v, -kUnbounded, kUnbounded); }

// floor(a / b) and ceil(a / b) for b > 0 and any sign of a (C++ '/' truncates toward zero).
inline int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && (a < 0)); }
inline int64_t ceil_div(int64_t a, int64_t b) { return a / b + ((a % b != 0) && (a > 0)); }

// Index of key block kb among the kept blocks of row qb of `mask`, or -1.
inline int64_t mask_find(const BlockMask& mask, int64_t qb, int64_t kb) {
    auto first = mask.col_idx.begin() + mask.row_ptr[static_cast<size_t>(qb)];
    auto last = mask.col_idx.begin() + mask.row_ptr[static_cast<size_t>(qb) + 1];
    auto it = std::lower_bound(first, last, kb);
    return (it != last && *it == kb) ? it - mask.col_idx.begin() : -1;
}

// [SECTION] Runs
//
// For one query block row, a node of a pattern yields sorted, disjoint runs of key blocks, each
// FULL (every valid pair of the block allowed) or UNKNOWN (maybe some); a block in no run
// certainly has no allowed pair.

// The states are ordered so that union is max, intersection is min and complement is 2 - s.
enum State : uint8_t { kAbsent = 0, kUnknown = 1, kFull = 2 };

struct Run {
    int64_t begin, end;  // key blocks [begin, end)
    State state;         // kUnknown or kFull, never kAbsent
};
using RunList = std::vector<Run>;

// Appends runs (non-decreasing begin) clipped to the key-block domain [lo, hi), coalescing a run
// with the last one when they touch or overlap in the same state.
struct Emitter {
    RunList& out;
    int64_t lo, hi;

    void push(int64_t b, int64_t e, State s) {
        b = std::max(b, lo);
        e = std::min(e, hi);
        if (b >= e || s == kAbsent) return;
        if (!out.empty() && b <= out.back().end && out.back().state == s) {
            out.back().end = std::max(out.back().end, e);
            return;
        }
        assert(out.empty() || b >= out.back().end);  // leaves never overlap different states
        out.push_back({b, e, s});
    }
};

inline State state_at(const RunList& runs, int64_t kb) {
    auto it = std::partition_point(runs.begin(), runs.end(), [kb](const Run& r) { return r.end <= kb; });
    return (it != runs.end() && it->begin <= kb) ? it->state : kAbsent;
}

// Copies the runs of src that meet the emitter's domain (binary search to the first one).
inline void copy_runs(Emitter& em, const RunList& src) {
    auto it = std::partition_point(src.begin(), src.end(), [&](const Run& r) { return r.end <= em.lo; });
    for (; it != src.end() && it->begin < em.hi; ++it) em.push(it->begin, it->end, it->state);
}

// out = a op b, by a sweep over the runs' boundaries. op maps two states to one.
template <class Op>
void runs_merge(const RunList& a, const RunList& b, Op op, RunList& out) {
    out.clear();
    Emitter em{out, INT64_MIN, INT64_MAX};
    size_t i = 0, j = 0;
    int64_t pos = INT64_MIN;
    while (i < a.size() || j < b.size()) {
        // The state of each list at pos, and where that state next changes.
        State sa = kAbsent, sb = kAbsent;
        int64_t next = INT64_MAX;
        if (i < a.size()) {
            if (a[i].begin <= pos) { sa = a[i].state; next = a[i].end; } else next = a[i].begin;
        }
        if (j < b.size()) {
            if (b[j].begin <= pos) { sb = b[j].state; next = std::min(next, b[j].end); }
            else next = std::min(next, b[j].begin);
        }
        em.push(pos, next, op(sa, sb));
        pos = next;
        if (i < a.size() && a[i].end <= pos) ++i;
        if (j < b.size() && b[j].end <= pos) ++j;
    }
}

inline State op_union(State a, State b) { return std::max(a, b); }
inline State op_intersect(State a, State b) { return std::min(a, b); }
inline State op_difference(State a, State b) { return std::min(a, static_cast<State>(kFull - b)); }

// out = the complement of src within [lo, hi): FULL where src is absent, UNKNOWN stays.
inline void runs_complement(const RunList& src, int64_t lo, int64_t hi, RunList& out) {
    out.clear();
    Emitter em{out, lo, hi};
    int64_t pos = lo;
    for (const Run& r : src) {
        em.push(pos, r.begin, kFull);
        if (r.state == kUnknown) em.push(r.begin, r.end, kUnknown);
        pos = r.end;
    }
    em.push(pos, hi, kFull);
}

} // namespace sparsa::dsl::detail
