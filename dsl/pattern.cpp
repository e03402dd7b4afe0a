// Pattern builders, the token-level predicate straight from the spec table (the oracle every
// compiler test compares against), and the canonical key that lets equal patterns share a mask.
#include "dsl/pattern.hpp"

#include "dsl/pattern_compile_detail.hpp"
#include "engine/error.hpp"

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <string>

namespace sparsa::dsl {

using detail::clamp_unbounded;
using detail::kUnbounded;

namespace {

// [SECTION] Builders
//
// Parameters far beyond any sequence length are clamped to kUnbounded: that changes no pair
// (every n is smaller) and keeps the compiler's key arithmetic free of overflow.

PatternPtr make(PatternKind kind, int64_t a = 0, int64_t b = 0) {
    auto p = std::make_shared<Pattern>();
    p->kind = kind;
    p->a = a;
    p->b = b;
    return p;
}

PatternPtr make_set(PatternKind kind, TokenSet s) {
    auto p = std::make_shared<Pattern>();
    p->kind = kind;
    p->set = std::move(s);
    return p;
}

PatternPtr make_node(PatternKind kind, std::vector<PatternPtr> kids) {
    for (const auto& k : kids) {
        if (!k) throw Error("pattern combinator: an operand is missing (null pattern)");
    }
    auto p = std::make_shared<Pattern>();
    p->kind = kind;
    p->kids = std::move(kids);
    return p;
}

// Throws unless lo <= value (the builders' preconditions; the evaluator reports them first).
void require_at_least(const char* what, int64_t value, int64_t lo) {
    if (value < lo) {
        throw Error(std::string(what) + " = " + std::to_string(value) + " is out of range (use " +
                    std::to_string(lo) + " or more)");
    }
}

} // namespace

PatternPtr pattern_dense() { return make(PatternKind::dense); }
PatternPtr pattern_empty() { return make(PatternKind::empty); }
PatternPtr pattern_causal() { return make(PatternKind::window, kUnbounded, 0); }

PatternPtr pattern_window(int64_t left, int64_t right) {
    return make(PatternKind::window, clamp_unbounded(left), clamp_unbounded(right));
}

PatternPtr pattern_dilated(int64_t w, int64_t d) {
    require_at_least("dilated: w", w, 0);
    require_at_least("dilated: d", d, 1);
    return make(PatternKind::dilated, clamp_unbounded(w), clamp_unbounded(d));
}

PatternPtr pattern_strided(int64_t s) {
    require_at_least("strided: s", s, 1);
    return make(PatternKind::strided, clamp_unbounded(s));
}

PatternPtr pattern_fixed(int64_t l, int64_t c) {
    require_at_least("fixed: l", l, 1);
    require_at_least("fixed: c", c, 0);
    if (c > l) {
        throw Error("fixed: c = " + std::to_string(c) + " is larger than l = " + std::to_string(l) +
                    " (use 0 <= c <= l)");
    }
    return make(PatternKind::fixed, clamp_unbounded(l), clamp_unbounded(c));
}

PatternPtr pattern_chunk(int64_t c) {
    require_at_least("chunk: c", c, 1);
    return make(PatternKind::chunk, clamp_unbounded(c));
}

PatternPtr pattern_band(int64_t r) {
    require_at_least("band: r", r, 0);
    return make(PatternKind::band, clamp_unbounded(r));
}

PatternPtr pattern_rows(TokenSet s) { return make_set(PatternKind::rows, std::move(s)); }
PatternPtr pattern_columns(TokenSet s) { return make_set(PatternKind::columns, std::move(s)); }

PatternPtr pattern_global(TokenSet s) {
    return pattern_union(pattern_rows(s), pattern_columns(s));
}

PatternPtr pattern_prefix(int64_t p) {
    require_at_least("prefix: p", p, 0);
    return make(PatternKind::prefix, clamp_unbounded(p));
}

PatternPtr pattern_segments(TokenSet starts) {
    return make_set(PatternKind::segments, std::move(starts));
}

PatternPtr pattern_window2d(int64_t r, int64_t width) {
    require_at_least("window2d: r", r, 0);
    require_at_least("window2d: width", width, 1);
    return make(PatternKind::window2d, clamp_unbounded(r), clamp_unbounded(width));
}

PatternPtr pattern_axial(int64_t width) {
    require_at_least("axial: width", width, 1);
    return make(PatternKind::axial, 0, clamp_unbounded(width));
}

PatternPtr pattern_random(int64_t r, uint64_t seed, int64_t layer, int64_t head, bool causal_rows) {
    require_at_least("random: r", r, 0);
    auto p = std::make_shared<Pattern>();
    p->kind = PatternKind::random;
    p->a = r;
    p->seed = seed;
    p->layer = layer;
    p->head = head;
    p->causal_rows = causal_rows;
    return p;
}

PatternPtr pattern_lsh(int64_t buckets, int64_t rounds, uint64_t seed) {
    require_at_least("lsh: buckets", buckets, 1);
    require_at_least("lsh: rounds", rounds, 1);
    auto p = std::make_shared<Pattern>();
    p->kind = PatternKind::lsh;
    p->a = buckets;
    p->b = rounds;
    p->seed = seed;
    return p;
}

PatternPtr pattern_loaded(std::shared_ptr<const BlockMask> mask, std::string id) {
    if (!mask) throw Error("load(\"" + id + "\"): no mask was given");
    auto p = std::make_shared<Pattern>();
    p->kind = PatternKind::loaded;
    p->mask = std::move(mask);
    p->mask_id = std::move(id);
    return p;
}

PatternPtr pattern_union(PatternPtr a, PatternPtr b) {
    return make_node(PatternKind::union_, {std::move(a), std::move(b)});
}
PatternPtr pattern_intersect(PatternPtr a, PatternPtr b) {
    return make_node(PatternKind::intersect, {std::move(a), std::move(b)});
}
PatternPtr pattern_difference(PatternPtr a, PatternPtr b) {
    return make_node(PatternKind::difference, {std::move(a), std::move(b)});
}
PatternPtr pattern_complement(PatternPtr a) {
    return make_node(PatternKind::complement, {std::move(a)});
}

// [SECTION] The oracle

bool pattern_allowed(const Pattern& p, int64_t n, int32_t block, int64_t q, int64_t k) {
    const int64_t B = block;
    switch (p.kind) {
    case PatternKind::dense: return true;
    case PatternKind::empty: return false;
    case PatternKind::window: return q - p.a <= k && k <= q + p.b;
    case PatternKind::dilated: {
        int64_t d = k - q;  // k = q + i*d for some |i| <= w
        return d % p.b == 0 && std::llabs(d / p.b) <= p.a;
    }
    case PatternKind::strided: return (q - k) % p.a == 0;
    case PatternKind::fixed: return q / p.a == k / p.a || k % p.a >= p.a - p.b;
    case PatternKind::chunk: return q / p.a == k / p.a;
    case PatternKind::band: return std::llabs(q / B - k / B) <= p.a;
    case PatternKind::rows: return p.set.contains(q);
    case PatternKind::columns: return p.set.contains(k);
    case PatternKind::prefix: return k < p.a || k <= q;
    case PatternKind::segments: {
        // Same segment: no segment starts in (min, max]. (0 always starts one, but 0 is never
        // inside that range.)
        int64_t lo = std::min(q, k), hi = std::max(q, k);
        for (const auto& [b, e] : p.set.runs) {
            if (std::max(b, lo + 1) < std::min(e, hi + 1)) return false;
        }
        return true;
    }
    case PatternKind::window2d: {
        const int64_t w = p.b;
        return std::llabs(q % w - k % w) <= p.a && std::llabs(q / w - k / w) <= p.a;
    }
    case PatternKind::axial: return q / p.b == k / p.b || q % p.b == k % p.b;
    case PatternKind::random: {
        const int64_t qb = q / B, kb = k / B;
        const int64_t available = p.causal_rows ? qb + 1 : (n + B - 1) / B;
        std::vector<int32_t> drawn = random_row_blocks(p.seed, p.layer, p.head, qb, available, p.a);
        return std::find(drawn.begin(), drawn.end(), kb) != drawn.end();
    }
    case PatternKind::lsh:
        throw Error("lsh(...) is data-dependent: its pairs depend on Q and K and are realised "
                    "when attention runs; it cannot be evaluated on its own");
    case PatternKind::loaded:
        if (p.mask->n != n) {
            throw Error("load: mask was saved for n = " + std::to_string(p.mask->n) +
                        ", compiling for n = " + std::to_string(n));
        }
        return p.mask->allowed(q, k);
    case PatternKind::union_:
        return pattern_allowed(*p.kids[0], n, block, q, k) || pattern_allowed(*p.kids[1], n, block, q, k);
    case PatternKind::intersect:
        return pattern_allowed(*p.kids[0], n, block, q, k) && pattern_allowed(*p.kids[1], n, block, q, k);
    case PatternKind::difference:
        return pattern_allowed(*p.kids[0], n, block, q, k) && !pattern_allowed(*p.kids[1], n, block, q, k);
    case PatternKind::complement: return !pattern_allowed(*p.kids[0], n, block, q, k);
    }
    return false;
}

bool pattern_is_data_dependent(const Pattern& p) {
    if (p.kind == PatternKind::lsh) return true;
    for (const auto& kid : p.kids) {
        if (pattern_is_data_dependent(*kid)) return true;
    }
    return false;
}

// [SECTION] Canonical key

namespace {

std::string num(int64_t v) {
    if (v >= kUnbounded) return "inf";
    if (v <= -kUnbounded) return "-inf";
    return std::to_string(v);
}

std::string set_key(const TokenSet& s) {
    if (s.runs.empty()) return "{}";
    std::string out;
    for (const auto& [b, e] : s.runs) {
        if (!out.empty()) out += '|';
        out += '[' + std::to_string(b) + ',' + std::to_string(e) + ')';
    }
    return out;
}

// FNV-1a over a mask's arrays: two loaded masks with the same id but other pairs get other keys.
uint64_t mask_hash(const BlockMask& m) {
    uint64_t h = 0xcbf29ce484222325ull;
    auto add = [&h](uint64_t v) { h = (h ^ v) * 0x100000001b3ull; };
    add(static_cast<uint64_t>(m.n));
    add(static_cast<uint64_t>(m.block));
    for (int64_t v : m.row_ptr) add(static_cast<uint64_t>(v));
    for (int32_t v : m.col_idx) add(static_cast<uint32_t>(v));
    for (int32_t v : m.partial_idx) add(static_cast<uint32_t>(v));
    for (uint64_t v : m.bits) add(v);
    return h;
}

std::string call(const char* name, std::initializer_list<std::string> args) {
    std::string out = std::string(name) + '(';
    bool first = true;
    for (const auto& a : args) {
        if (!first) out += ',';
        out += a;
        first = false;
    }
    return out + ')';
}

} // namespace

std::string pattern_key(const Pattern& p) {
    switch (p.kind) {
    case PatternKind::dense: return "dense";
    case PatternKind::empty: return "empty";
    case PatternKind::window:
        if (p.a == kUnbounded && p.b == 0) return "causal";
        return call("window", {num(p.a), num(p.b)});
    case PatternKind::dilated: return call("dilated", {num(p.a), num(p.b)});
    case PatternKind::strided: return call("strided", {num(p.a)});
    case PatternKind::fixed: return call("fixed", {num(p.a), num(p.b)});
    case PatternKind::chunk: return call("chunk", {num(p.a)});
    case PatternKind::band: return call("band", {num(p.a)});
    case PatternKind::rows: return call("rows", {set_key(p.set)});
    case PatternKind::columns: return call("columns", {set_key(p.set)});
    case PatternKind::prefix: return call("prefix", {num(p.a)});
    case PatternKind::segments: return call("segments", {set_key(p.set)});
    case PatternKind::window2d: return call("window2d", {num(p.a), "width=" + num(p.b)});
    case PatternKind::axial: return call("axial", {"width=" + num(p.b)});
    case PatternKind::random:
        return call("random", {num(p.a), "seed=" + std::to_string(p.seed), "layer=" + num(p.layer),
                               "head=" + num(p.head), std::string("causal_rows=") + (p.causal_rows ? "1" : "0")});
    case PatternKind::lsh:
        return call("lsh", {"buckets=" + num(p.a), "rounds=" + num(p.b), "seed=" + std::to_string(p.seed)});
    case PatternKind::loaded:
        return call("load", {'"' + p.mask_id + '"', "n=" + num(p.mask->n), "block=" + num(p.mask->block),
                             "hash=" + std::to_string(mask_hash(*p.mask))});
    case PatternKind::union_: return call("union", {pattern_key(*p.kids[0]), pattern_key(*p.kids[1])});
    case PatternKind::intersect: return call("intersect", {pattern_key(*p.kids[0]), pattern_key(*p.kids[1])});
    case PatternKind::difference: return call("difference", {pattern_key(*p.kids[0]), pattern_key(*p.kids[1])});
    case PatternKind::complement: return call("complement", {pattern_key(*p.kids[0])});
    }
    return "?";
}

} // namespace sparsa::dsl
