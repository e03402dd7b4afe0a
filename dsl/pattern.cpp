// Pattern builders, the token-level predicate straight from the spec table (the oracle every
// compiler test compares against), and the canonical key that lets equal patterns share a mask.
#include "dsl/pattern.hpp"

#include "dsl/pattern_compile_detail.hpp"
#include "engine/error.hpp"
#include "io/content_spec_rules.hpp"

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
    std::shared_ptr<const ContentSpec> content;
    for (const auto& k : kids) {
        if (!k) throw Error("pattern combinator: an operand is missing (null pattern)");
        if (!k->content) continue;
        const std::string family = std::string(content_kind_name(k->content->kind)) + "(...)";
        if (k->content->kind == ContentKind::favor) {
            throw Error(family + " cannot be combined with another pattern: FAVOR+ approximates dense attention and "
                                 "has no pairs to combine (give it its own attend line)");
        }
        if (kind != PatternKind::union_) {
            throw Error(family + " is content-based: its pairs are known only once Q and K are seen, so it can be "
                                 "united with fixed patterns (|) but not intersected, removed or complemented");
        }
        if (content) throw Error("two content-based families in one pattern (" + content_spec_text(*content) + " and " +
                                 content_spec_text(*k->content) + "): a line may hold one");
        content = k->content;
    }
    auto p = std::make_shared<Pattern>();
    p->kind = kind;
    p->kids = std::move(kids);
    p->content = std::move(content);
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

PatternPtr pattern_random(int64_t r, uint64_t seed, int64_t layer, int64_t head, bool causal_rows,
                          PatternPtr outside) {
    require_at_least("random: r", r, 0);
    auto p = std::make_shared<Pattern>();
    p->kind = PatternKind::random;
    p->a = r;
    p->seed = seed;
    p->layer = layer;
    p->head = head;
    p->causal_rows = causal_rows;
    if (outside && outside->content) {
        throw Error("random: outside must be a fixed pattern; " + std::string(content_kind_name(outside->content->kind)) +
                    "(...) depends on Q and K");
    }
    p->outside = std::move(outside);
    return p;
}

PatternPtr pattern_content(ContentSpec spec) {
    if (std::string problem = content_spec_problem(spec); !problem.empty()) throw Error(problem);
    auto p = std::make_shared<Pattern>();
    p->kind = PatternKind::content;
    p->content = std::make_shared<const ContentSpec>(std::move(spec));
    return p;
}

PatternContentSplit pattern_content_split(const PatternPtr& p) {
    if (!p->content) return {p, nullptr};
    // The operands of the unions that lead to the content leaf, left to right (an explicit
    // stack: a union chain may be thousands deep).
    PatternContentSplit out;
    std::vector<PatternPtr> fixed_parts;
    std::vector<const PatternPtr*> stack{&p};
    while (!stack.empty()) {
        const PatternPtr& at = *stack.back();
        stack.pop_back();
        if (!at->content) {
            fixed_parts.push_back(at);
        } else if (at->kind == PatternKind::content) {
            out.content = at;
        } else {
            for (size_t i = at->kids.size(); i-- > 0;) stack.push_back(&at->kids[i]);
        }
    }
    out.fixed = fixed_parts.empty() ? pattern_empty() : fixed_parts.front();
    for (size_t i = 1; i < fixed_parts.size(); ++i) out.fixed = pattern_union(out.fixed, fixed_parts[i]);
    return out;
}

std::string content_spec_text(const ContentSpec& spec) {
    std::string out = std::string(content_kind_name(spec.kind)) + "(";
    auto add = [&](const std::string& item) { out += (out.back() == '(' ? "" : ", ") + item; };
    auto quoted = [](const std::string& path) { return "\"" + path + "\""; };
    if (spec.kind == ContentKind::favor) {
        add(std::to_string(spec.features));
        if (spec.seed != 0) add("seed = " + std::to_string(spec.seed));
        if (spec.redraw != 0) add("redraw = " + std::to_string(spec.redraw));
        if (!spec.file.empty()) add("file = " + quoted(spec.file));
        return out + ")";
    }
    add(std::to_string(spec.buckets));
    if (spec.rounds != 1) add("rounds = " + std::to_string(spec.rounds));
    add("chunk = " + std::to_string(spec.chunk));
    if (spec.kind == ContentKind::lsh && spec.seed != 0) add("seed = " + std::to_string(spec.seed));
    if (spec.kind == ContentKind::anchors) add("fit = " + quoted(spec.file));
    if (!spec.shared_qk) add("shared_qk = false");
    if (spec.kind == ContentKind::lsh && !spec.file.empty()) add("file = " + quoted(spec.file));
    return out + ")";
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

// A chain thousands of patterns deep is released with a loop: the default destructor would
// recurse once per level. Operands (and random's `outside`) this pattern holds the last
// reference to are taken over (their own operands with them) before they go.
Pattern::~Pattern() {
    std::vector<PatternPtr> pending = std::move(kids);
    if (outside) pending.push_back(std::move(outside));
    while (!pending.empty()) {
        PatternPtr p = std::move(pending.back());
        pending.pop_back();
        if (p.use_count() == 1) {
            // Patterns are made non-const (make_shared<Pattern>) and this is the last owner.
            auto& theirs = const_cast<Pattern&>(*p);
            for (auto& kid : theirs.kids) pending.push_back(std::move(kid));
            theirs.kids.clear();
            if (theirs.outside) pending.push_back(std::move(theirs.outside));
        }
    }
}

// [SECTION] The oracle

namespace {

// A leaf's pairs, straight from the spec's table.
bool leaf_allowed(const Pattern& p, int64_t n, int32_t block, int64_t q, int64_t k) {
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
        std::vector<int32_t> drawn;
        if (p.outside) {
            // The candidates, straight from the definition: the blocks of the row where no pair
            // is allowed by `outside` (each tried pair by pair).
            std::vector<int32_t> candidates;
            for (int64_t c = 0; c < available; ++c) {
                bool taken = false;
                for (int64_t qq = qb * B; qq < std::min(n, qb * B + B) && !taken; ++qq) {
                    for (int64_t kk = c * B; kk < std::min(n, c * B + B) && !taken; ++kk) {
                        taken = pattern_allowed(*p.outside, n, block, qq, kk);
                    }
                }
                if (!taken) candidates.push_back(static_cast<int32_t>(c));
            }
            const int64_t count = static_cast<int64_t>(candidates.size());
            for (int32_t i : random_row_blocks(p.seed, p.layer, p.head, qb, count, p.a)) {
                drawn.push_back(candidates[static_cast<size_t>(i)]);
            }
        } else {
            drawn = random_row_blocks(p.seed, p.layer, p.head, qb, available, p.a);
        }
        return std::find(drawn.begin(), drawn.end(), kb) != drawn.end();
    }
    case PatternKind::content:
        throw Error(content_spec_text(*p.content) + " is content-based: its pairs depend on Q and K and are realised "
                    "when attention runs; it cannot be evaluated on its own");
    case PatternKind::loaded:
        if (p.mask->n != n) {
            throw Error("load: mask was saved for n = " + std::to_string(p.mask->n) +
                        ", compiling for n = " + std::to_string(n));
        }
        return p.mask->allowed(q, k);
    default: break;  // the combinators: pattern_allowed
    }
    return false;
}

} // namespace

// Combinators as the spec writes them, A | B = A or B, A & B = A and B, A - B = A and not B,
// !A = not A (the right operand only when the left does not decide), evaluated with an
// explicit stack instead of recursion: a pattern may be thousands of levels deep.
bool pattern_allowed(const Pattern& root, int64_t n, int32_t block, int64_t q, int64_t k) {
    struct Step {
        const Pattern* p;
        int done;  // operands answered so far
    };
    std::vector<Step> stack{{&root, 0}};
    bool answer = false;  // of the node that finished last
    while (!stack.empty()) {
        Step& step = stack.back();
        const Pattern& p = *step.p;
        if (p.kids.empty()) {
            answer = leaf_allowed(p, n, block, q, k);
            stack.pop_back();
            continue;
        }
        if (step.done == 0) {
            step.done = 1;
            stack.push_back({p.kids[0].get(), 0});
            continue;
        }
        if (step.done == 1 && p.kind != PatternKind::complement) {
            // answer is the left operand's: it decides a union when true, the others when false.
            const bool decided = p.kind == PatternKind::union_ ? answer : !answer;
            if (!decided) {
                step.done = 2;
                stack.push_back({p.kids[1].get(), 0});
                continue;
            }
        } else if (p.kind == PatternKind::complement || p.kind == PatternKind::difference) {
            answer = !answer;  // !A, or A - B with A true: not B
        }
        stack.pop_back();  // union, intersect: the right operand's answer is the answer
    }
    return answer;
}

// The builders keep `content` on every union above a content leaf and refuse it anywhere else.
bool pattern_is_data_dependent(const Pattern& root) { return root.content != nullptr; }

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

// The key of a leaf (a pattern without operands).
std::string leaf_key(const Pattern& p) {
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
    case PatternKind::content:
        return content_spec_text(*p.content) + (p.content->causal ? "&causal" : "");
    case PatternKind::loaded:
        return call("load", {'"' + p.mask_id + '"', "n=" + num(p.mask->n), "block=" + num(p.mask->block),
                             "hash=" + std::to_string(mask_hash(*p.mask))});
    default: return "?";
    }
}

const char* combinator_name(PatternKind kind) {
    switch (kind) {
    case PatternKind::union_: return "union";
    case PatternKind::intersect: return "intersect";
    case PatternKind::difference: return "difference";
    case PatternKind::complement: return "complement";
    default: return "?";
    }
}

} // namespace

// Written front to back into one string (combinators as union(A,B), random's outside as
// random(...,outside=P)) with an explicit stack of what is still to write: linear in the key's length, and no recursion however deep p is.
std::string pattern_key(const Pattern& p) {
    struct Piece {
        const Pattern* p;    // a pattern to write, or null for
        const char* text;    // punctuation: "," or ")"
    };
    std::string out;
    std::vector<Piece> stack{{&p, nullptr}};
    while (!stack.empty()) {
        const Piece piece = stack.back();
        stack.pop_back();
        if (piece.p == nullptr) {
            out += piece.text;
        } else if (piece.p->outside) {
            std::string leaf = leaf_key(*piece.p);  // random(r,seed=...,causal_rows=...)
            leaf.pop_back();                        // its ')' comes after P's key
            out += leaf;
            out += ",outside=";
            stack.push_back({nullptr, ")"});
            stack.push_back({piece.p->outside.get(), nullptr});
        } else if (piece.p->kids.empty()) {
            out += leaf_key(*piece.p);
        } else {
            out += combinator_name(piece.p->kind);
            out += '(';
            stack.push_back({nullptr, ")"});
            for (size_t i = piece.p->kids.size(); i-- > 0;) {
                stack.push_back({piece.p->kids[i].get(), nullptr});
                if (i > 0) stack.push_back({nullptr, ","});
            }
        }
    }
    return out;
}

} // namespace sparsa::dsl
