// Evaluated patterns: the language's primitives and combinators with concrete parameters,
// their token-level predicate (the spec's meaning, the oracle of every test), and the compiler
// that turns one into a BlockMask without ever building an n x n matrix.
//
// The evaluator (eval.cpp) produces a Pattern per (layer, head); this file knows no syntax.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/content/content_spec.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace sparsa::dsl {

// [SECTION] Token sets

// A set of token positions as sorted, disjoint, non-touching half-open runs [begin, end).
// Runs are clipped to [0, n) by the evaluator before they reach a pattern.
struct TokenSet {
    std::vector<std::pair<int64_t, int64_t>> runs;

    bool contains(int64_t t) const;   // O(log runs)
    int64_t size() const;             // number of members
    friend bool operator==(const TokenSet&, const TokenSet&) = default;
};

TokenSet token_set_range(int64_t begin, int64_t end);              // begin..end (empty if end <= begin)
// offset + i*period + j < end for i >= 0 and 0 <= j < width (0 <= width <= period; 1: one token
// a period, period: every token from offset on). Throws for period < 1 or width outside that.
TokenSet token_set_every(int64_t period, int64_t offset, int64_t end, int64_t width = 1);
TokenSet token_set_list(std::vector<int64_t> members);             // any order, duplicates allowed
TokenSet token_set_union(const TokenSet& a, const TokenSet& b);
TokenSet token_set_intersect(const TokenSet& a, const TokenSet& b);
TokenSet token_set_difference(const TokenSet& a, const TokenSet& b);
TokenSet token_set_clip(const TokenSet& s, int64_t n);             // members in [0, n)

// [SECTION] Patterns

enum class PatternKind {
    dense, empty,
    window,     // a = left, b = right: q - a <= k <= q + b (causal is window(n, 0))
    dilated,    // a = w, b = d: k = q + i*d, |i| <= w
    strided,    // a = s: (q - k) % s == 0
    fixed,      // a = l, b = c: q / l == k / l, or k % l >= l - c
    chunk,      // a = c: q / c == k / c
    band,       // a = r: |qb - kb| <= r (blocks of the compiled mask)
    rows,       // set: q in S
    columns,    // set: k in S
    prefix,     // a = p: k < p, or k <= q
    segments,   // set: q and k in the same segment; segments start at members of S and at 0
    window2d,   // a = r, b = width: |qx - kx| <= r and |qy - ky| <= r on a row-major grid
    axial,      // b = width: same grid row or same grid column
    random,     // a = r, seed, layer, head, causal_rows, outside: r distinct key blocks per query
                // block, among those where `outside` (if set) keeps no pair
    content,    // content: lsh, anchors or favor, realised from Q and K when attention runs;
                // never compiled (the script's compile splits it off, pattern_content_split)
    loaded,     // mask: the pairs of a saved mask (same n)
    union_, intersect, difference, complement,
};

struct Pattern;
using PatternPtr = std::shared_ptr<const Pattern>;

struct Pattern {
    PatternKind kind = PatternKind::empty;
    int64_t a = 0, b = 0;
    uint64_t seed = 0;
    int64_t layer = 0, head = 0;      // random: keys of its generator
    bool causal_rows = false;         // random: draw only key blocks kb <= qb
    PatternPtr outside;               // random: draw only key blocks where this keeps no pair
    TokenSet set;                     // rows, columns, segments
    std::shared_ptr<const BlockMask> mask; // loaded
    std::string mask_id;              // loaded: where it came from, for pattern_key
    std::vector<PatternPtr> kids;     // union_, intersect, difference (2), complement (1)
    // content: its spec; union_: the spec of the one content leaf below it, if any (content only
    // unites: the builders refuse it under & - ! and in random's outside, and twice in a union)
    std::shared_ptr<const ContentSpec> content;

    Pattern() = default;
    Pattern(const Pattern&) = default;
    Pattern& operator=(const Pattern&) = default;
    ~Pattern();  // releases deep chains of kids without recursion
};

PatternPtr pattern_dense();
PatternPtr pattern_empty();
PatternPtr pattern_causal();                         // k <= q
PatternPtr pattern_window(int64_t left, int64_t right);
PatternPtr pattern_dilated(int64_t w, int64_t d);    // d >= 1, w >= 0
PatternPtr pattern_strided(int64_t s);               // s >= 1
PatternPtr pattern_fixed(int64_t l, int64_t c);      // l >= 1, 0 <= c <= l
PatternPtr pattern_chunk(int64_t c);                 // c >= 1
PatternPtr pattern_band(int64_t r);                  // r >= 0
PatternPtr pattern_rows(TokenSet s);
PatternPtr pattern_columns(TokenSet s);
PatternPtr pattern_global(TokenSet s);               // rows(S) | columns(S)
PatternPtr pattern_prefix(int64_t p);                // p >= 0
PatternPtr pattern_segments(TokenSet starts);
PatternPtr pattern_window2d(int64_t r, int64_t width); // r >= 0, width >= 1
PatternPtr pattern_axial(int64_t width);             // width >= 1
// outside: null, or the pattern whose blocks are left out of the draw (the evaluator passes
// P & causal under the `causal` statement; this function takes it as given).
PatternPtr pattern_random(int64_t r, uint64_t seed, int64_t layer, int64_t head, bool causal_rows,
                          PatternPtr outside = nullptr);
// A content-based family (lsh, anchors, favor). Throws sparsa::Error for a spec that breaks a
// rule of docs/pattern-language.md (content_spec_problem, io/mask_io.hpp).
PatternPtr pattern_content(ContentSpec spec);
PatternPtr pattern_loaded(std::shared_ptr<const BlockMask> mask, std::string id);
// The combinators. A content-based operand is allowed only under a union, once per pattern,
// and never with favor: these throw sparsa::Error otherwise (the evaluator says so first, with a
// caret on the operator).
PatternPtr pattern_union(PatternPtr a, PatternPtr b);
PatternPtr pattern_intersect(PatternPtr a, PatternPtr b);
PatternPtr pattern_difference(PatternPtr a, PatternPtr b);
PatternPtr pattern_complement(PatternPtr a);

// A pattern cut into its fixed part (the union of every operand but the content leaf; `empty`
// when there is none) and its content leaf (null when p has none, and then fixed is p).
struct PatternContentSplit {
    PatternPtr fixed;
    PatternPtr content;
};
PatternContentSplit pattern_content_split(const PatternPtr& p);

// The family as a script writes it, with the defaults left out:
// "lsh(64, rounds = 2, chunk = 64, seed = 1)", "favor(256)", "anchors(32, fit = \"/abs/a.npz\")".
std::string content_spec_text(const ContentSpec& spec);

// The key blocks random(r) draws for query block qb: r distinct blocks (all of them when fewer
// than r are available) from [0, available), sorted. A counter-based generator keyed by
// (seed, layer, head, qb): the same on every machine, in any order, on any thread count.
std::vector<int32_t> random_row_blocks(uint64_t seed, int64_t layer, int64_t head, int64_t qb,
                                       int64_t available, int64_t r);

// random(r, outside = P) for query block qb: the same draw over the candidates, the blocks of
// [0, available) outside `taken` (P's kept blocks of the row as runs [begin, end): sorted,
// disjoint; they may reach past available), numbered in increasing order. Sorted. Work:
// O(runs + r), or O(available) when more than half the candidates are drawn (the output is
// that large then).
std::vector<int32_t> random_row_blocks_outside(uint64_t seed, int64_t layer, int64_t head, int64_t qb, int64_t available,
                                               int64_t r, const std::vector<std::pair<int64_t, int64_t>>& taken);

// Whether query q may attend to key k under p, straight from the spec (0 <= q, k < n; block is
// the B that band and random count in). The oracle: slow and obviously right.
bool pattern_allowed(const Pattern& p, int64_t n, int32_t block, int64_t q, int64_t k);

// True when p contains a content-based family (its pairs depend on Q and K).
bool pattern_is_data_dependent(const Pattern& p);

// A canonical text of p: equal keys mean equal patterns (used to compile each distinct
// pattern once and share its mask between heads).
std::string pattern_key(const Pattern& p);

// Compiles p for sequence length n and block size B into its exact, canonical BlockMask.
// Time and memory grow with the kept blocks (plus B*B for each partial block); rows are
// compiled on `threads` threads (0: the core count, or SPARSA_THREADS) with identical results.
// Throws sparsa::Error for a content-based pattern (lsh, anchors, favor: split it off first with
// pattern_content_split) or a loaded mask of another n.
BlockMask pattern_compile(const Pattern& p, int64_t n, int32_t block, int threads = 0);

} // namespace sparsa::dsl
