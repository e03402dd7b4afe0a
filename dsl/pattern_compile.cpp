// Compiles a Pattern to its exact, canonical BlockMask one query block row at a time, never
// building an n x n matrix: work grows with the kept blocks plus B*B per uncertain block.
//
// How: for a row qb every node yields sorted runs of key blocks tagged FULL (every valid pair
// allowed) or UNKNOWN (maybe some); blocks outside the runs certainly have no pair. Leaves get
// their runs by key-range arithmetic, combinators by merging runs with a 3-state algebra. At the
// root each UNKNOWN block gets its exact bitmask, evaluated word-wise down the tree.
// random(r, outside = P) keeps P's subtree in the same plan, below the random leaf: P's runs
// (and the bits of its UNKNOWN blocks) are known before the leaf draws, so P's mask is never built.
//
// Index:
//   (the 3-state run lists and their algebra live in pattern_compile_detail.hpp)
//   [SECTION] Plan        the tree flattened once per compile, with per-leaf precomputed data
//                         (every walk of the tree is a loop: patterns may be thousands deep)
//   [SECTION] Leaf spans  key intervals of the simple leaves, shared by hulls and runs
//   [SECTION] Row runs    hull and runs of every node for one query block row
//   [SECTION] Bits        exact bitmasks of UNKNOWN blocks
//   [SECTION] Driver      rows in parallel, output in row order
#include "dsl/pattern.hpp"

#include "dsl/pattern_compile_detail.hpp"
#include "engine/error.hpp"
#include "engine/threads.hpp"

#include <algorithm>
#include <climits>
#include <cstring>
#include <iterator>
#include <string>

namespace sparsa::dsl {

namespace {

using detail::ceil_div;
using detail::copy_runs;
using detail::Emitter;
using detail::floor_div;
using detail::kAbsent;
using detail::kFull;
using detail::kUnknown;
using detail::op_union;
using detail::Run;
using detail::RunList;
using detail::State;
using detail::state_at;

// [SECTION] Plan

struct Geometry {
    int64_t n, B, K;  // sequence length, block size, blocks per row and column
    int64_t begin(int64_t blk) const { return blk * B; }
    int64_t size(int64_t blk) const { return std::min(B, n - blk * B); }  // short last block
};

// Pushes the blocks of a leaf whose keys over the row's queries are one interval: keys in
// [c0, c1] are allowed for some query (no key outside is), keys in [f0, f1] for every query
// (f within c; empty when f0 > f1). A block meeting [c0, c1] is UNKNOWN unless all its valid
// keys lie in [f0, f1]: then it is FULL. The short last block counts only its valid keys.
void push_token_interval(Emitter& em, const Geometry& g, int64_t c0, int64_t c1, int64_t f0, int64_t f1) {
    c0 = std::max<int64_t>(c0, 0);
    c1 = std::min(c1, g.n - 1);
    if (c0 > c1) return;
    const int64_t cb0 = c0 / g.B, cb1 = c1 / g.B;
    const int64_t fb0 = std::max<int64_t>(0, ceil_div(f0, g.B));                 // first block starting at or after f0
    const int64_t fb1 = f1 >= g.n - 1 ? g.K - 1 : floor_div(f1 + 1, g.B) - 1;  // last block ending by f1
    if (f0 > f1 || fb0 > fb1) {
        em.push(cb0, cb1 + 1, kUnknown);
        return;
    }
    em.push(cb0, fb0, kUnknown);
    em.push(fb0, fb1 + 1, kFull);
    em.push(fb1 + 1, cb1 + 1, kUnknown);
}

struct Node {
    const Pattern* p = nullptr;
    int parent = -1;
    int kid[2] = {-1, -1};
    int outside = -1;  // random(r, outside = P): the node of P (its subtree follows this node)
    RunList col_runs;  // columns: blocks of S; fixed: blocks of its column part (same every row)
    TokenSet set;      // rows, columns: S within [0, n); segments: starts within [1, n)
    int64_t reach = 0; // dilated, strided, axial: the largest |k - q| that can matter
};

// The largest |i*d| with |i| <= w that fits in a sequence of length n (no overflow: d, w clamped).
int64_t dilated_reach(int64_t w, int64_t d, int64_t n) { return w >= ceil_div(n, d) ? n : w * d; }

// Members of the periodic set {k : k % l >= l - c} below x: fixed's column part.
int64_t fixed_count_below(int64_t x, int64_t l, int64_t c) {
    return (x / l) * c + std::max<int64_t>(0, x % l - (l - c));
}

// What a leaf needs on every row, computed once per compile.
void plan_leaf(Node& nd, const Geometry& g) {
    const Pattern& p = *nd.p;
    switch (p.kind) {
    case PatternKind::content:
        throw Error(content_spec_text(*p.content) + " is content-based: its pairs depend on Q and K and are "
                    "realised when attention runs; it cannot be compiled on its own");
    case PatternKind::loaded:
        if (p.mask->n != g.n) {
            throw Error("load: mask was saved for n = " + std::to_string(p.mask->n) +
                        ", compiling for n = " + std::to_string(g.n));
        }
        break;
    case PatternKind::rows:
    case PatternKind::columns:
        nd.set = token_set_clip(p.set, g.n);
        if (p.kind == PatternKind::columns) {
            Emitter em{nd.col_runs, 0, g.K};
            for (const auto& [b, e] : nd.set.runs) push_token_interval(em, g, b, e - 1, b, e - 1);
        }
        break;
    case PatternKind::segments:
        nd.set = token_set_intersect(p.set, token_set_range(1, g.n));
        break;
    case PatternKind::fixed: {
        Emitter em{nd.col_runs, 0, g.K};
        for (int64_t kb = 0; kb < g.K; ++kb) {
            int64_t k0 = g.begin(kb), k1 = k0 + g.size(kb);
            int64_t m = fixed_count_below(k1, p.a, p.b) - fixed_count_below(k0, p.a, p.b);
            em.push(kb, kb + 1, m == 0 ? kAbsent : m == k1 - k0 ? kFull : kUnknown);
        }
        break;
    }
    case PatternKind::dilated: nd.reach = dilated_reach(p.a, p.b, g.n); break;
    case PatternKind::strided:
    case PatternKind::axial: nd.reach = g.n; break;
    default: break;
    }
}

// Flattens the tree into `nodes` in pre-order (a node's index is below its children's; a shared
// subtree gets one node per occurrence) with an explicit stack: a pattern may be thousands of
// levels deep (a chain of lets), and no walk of it recurses.
void plan(const Pattern& root, const Geometry& g, std::vector<Node>& nodes) {
    struct Pending {
        const Pattern* p;
        int parent, slot;
    };
    std::vector<Pending> stack{{&root, -1, 0}};
    while (!stack.empty()) {
        const Pending t = stack.back();
        stack.pop_back();
        const int id = static_cast<int>(nodes.size());
        nodes.emplace_back();
        nodes[id].p = t.p;
        nodes[id].parent = t.parent;
        if (t.slot == 2) nodes[static_cast<size_t>(t.parent)].outside = id;
        else if (t.parent >= 0) nodes[static_cast<size_t>(t.parent)].kid[t.slot] = id;
        plan_leaf(nodes[id], g);
        if (t.p->outside) stack.push_back({t.p->outside.get(), id, 2});  // slot 2: random's outside
        for (size_t i = std::min<size_t>(t.p->kids.size(), 2); i-- > 0;) {  // kid 0 comes out first
            stack.push_back({t.p->kids[i].get(), id, static_cast<int>(i)});
        }
    }
}

// [SECTION] Leaf spans

struct KeySpan {
    int64_t c0, c1;          // keys some query of the row may attend to lie in [c0, c1]
    int64_t f0 = 1, f1 = 0;  // keys every query attends to (empty unless known)
};

// Keys of the chunks met by queries [q0, q1): chunk(c), fixed's and axial's same-chunk part.
KeySpan chunk_span(int64_t c, int64_t q0, int64_t q1, int64_t n) {
    const int64_t first = q0 / c, last = (q1 - 1) / c;
    const int64_t end = last == 0 ? std::min(c, n) : last * c + c;  // last >= 1 means c < n
    if (first != last) return {first * c, end - 1};
    return {first * c, end - 1, first * c, end - 1};  // one chunk: its keys are all allowed
}

// The first member of `starts` above t, or n: where t's segment ends.
int64_t segment_end(const TokenSet& starts, int64_t t, int64_t n) {
    auto it = std::partition_point(starts.runs.begin(), starts.runs.end(),
                                   [t](const auto& r) { return r.second <= t + 1; });
    return it == starts.runs.end() ? n : std::max(it->first, t + 1);
}

// The last member of `starts` at or below t, or 0: where t's segment begins.
int64_t segment_begin(const TokenSet& starts, int64_t t) {
    auto it = std::partition_point(starts.runs.begin(), starts.runs.end(),
                                   [t](const auto& r) { return r.first <= t; });
    return it == starts.runs.begin() ? 0 : std::min(t, std::prev(it)->second - 1);
}

// The key span of a leaf over the queries [q0, q1): exact for window, dilated(d = 1), chunk,
// prefix and segments; a candidate superset for the others (all keys when nothing cheaper).
KeySpan leaf_span(const Node& nd, const Geometry& g, int64_t q0, int64_t q1) {
    const Pattern& p = *nd.p;
    switch (p.kind) {
    case PatternKind::window:
        if (p.a < -p.b) return {1, 0};  // q - a <= k <= q + b has no k
        return {q0 - p.a, q1 - 1 + p.b, q1 - 1 - p.a, q0 + p.b};
    case PatternKind::dilated:
    case PatternKind::strided: {
        const int64_t d = p.kind == PatternKind::dilated ? p.b : p.a;
        if (d == 1) return {q0 - nd.reach, q1 - 1 + nd.reach, q1 - 1 - nd.reach, q0 + nd.reach};
        return {q0 - nd.reach, q1 - 1 + nd.reach};
    }
    case PatternKind::chunk: return chunk_span(p.a, q0, q1, g.n);
    case PatternKind::prefix:
        return {0, std::max(p.a, q1) - 1, 0, std::max(p.a, q0 + 1) - 1};
    case PatternKind::segments: {
        const int64_t s = segment_begin(nd.set, q0), e = segment_end(nd.set, q1 - 1, g.n);
        if (segment_end(nd.set, q0, g.n) >= q1) return {s, e - 1, s, e - 1};  // one segment
        return {s, e - 1};
    }
    case PatternKind::window2d: {
        const int64_t w = p.b, grid_rows = ceil_div(g.n, w);
        const int64_t y0 = std::max<int64_t>(0, q0 / w - p.a);
        const int64_t y1 = std::min(grid_rows - 1, (q1 - 1) / w + p.a);
        return {y0 * w, y1 * w + w - 1};
    }
    default: return {0, g.n - 1};
    }
}

// [SECTION] Row runs

using BlockRange = std::pair<int64_t, int64_t>;  // key blocks [first, second)

struct RowContext {
    std::vector<RunList> runs;       // per node: its runs on the current row
    std::vector<BlockRange> hulls;   // per node: its hull on the current row
    std::vector<BlockRange> domains; // per node: where its runs are computed on the current row
    RunList part_a, part_b;          // the two halves of fixed and axial
    std::vector<uint64_t> bits;      // per node: words_per_block words of scratch
    std::vector<uint64_t> valid;     // the valid pairs of the current block
    std::vector<uint64_t> zero;      // no pair
    std::vector<std::pair<int64_t, int64_t>> keys;  // per block: key intervals shared by all rows
    std::vector<int64_t> blocks;     // loaded: blocks met by several loaded rows
    std::vector<std::pair<int64_t, int64_t>> taken;  // random(r, outside = P): runs of blocks P keeps on this row
    struct Visit {
        int id;
        State state;
        bool expanded;
    };
    std::vector<Visit> visits;       // bits(): the explicit stack of its walk
    std::vector<const uint64_t*> words_of;  // bits(): per node, its words on the current block
};

struct Compiler {
    Geometry g;
    std::vector<Node> nodes;
    int64_t words = 0;  // words per block bitmask

    // Key blocks [lo, hi) outside which node `id` certainly keeps nothing on row qb (a
    // combinator's from its children's in ctx.hulls).
    BlockRange hull(const RowContext& ctx, int id, int64_t qb) const {
        const Node& nd = nodes[static_cast<size_t>(id)];
        const Pattern& p = *nd.p;
        const int64_t q0 = g.begin(qb), q1 = q0 + g.size(qb);
        auto kid_hull = [&](int i) { return ctx.hulls[static_cast<size_t>(nd.kid[i])]; };
        auto tokens = [&](KeySpan s) -> BlockRange {
            int64_t c0 = std::max<int64_t>(s.c0, 0), c1 = std::min(s.c1, g.n - 1);
            if (c0 > c1) return {0, 0};
            return {c0 / g.B, c1 / g.B + 1};
        };
        switch (p.kind) {
        case PatternKind::empty: return {0, 0};
        case PatternKind::band: return {std::max<int64_t>(0, qb - p.a), std::min(g.K, qb + p.a + 1)};
        case PatternKind::rows: {
            auto it = std::partition_point(nd.set.runs.begin(), nd.set.runs.end(),
                                           [q0](const auto& r) { return r.second <= q0; });
            bool meets = it != nd.set.runs.end() && it->first < q1;
            return meets ? BlockRange{0, g.K} : BlockRange{0, 0};
        }
        case PatternKind::columns:
            if (nd.col_runs.empty()) return {0, 0};
            return {nd.col_runs.front().begin, nd.col_runs.back().end};
        case PatternKind::random:
            if (p.a == 0) return {0, 0};
            return {0, p.causal_rows ? qb + 1 : g.K};
        case PatternKind::union_: {
            const BlockRange a = kid_hull(0), b = kid_hull(1);
            if (a.first >= a.second) return b;
            if (b.first >= b.second) return a;
            return {std::min(a.first, b.first), std::max(a.second, b.second)};
        }
        case PatternKind::intersect: {
            const BlockRange a = kid_hull(0), b = kid_hull(1);
            return {std::max(a.first, b.first), std::min(a.second, b.second)};
        }
        case PatternKind::difference: return kid_hull(0);
        case PatternKind::complement:
        case PatternKind::dense:
        case PatternKind::fixed:
        case PatternKind::axial:
        case PatternKind::loaded: return {0, g.K};
        default: return tokens(leaf_span(nd, g, q0, q1));
        }
    }

    // dilated(w, d) / strided(d) over queries [q0, q1) (reach = the largest |k - q|): with d <= B
    // the reachable blocks are nearly all hit, so all of them are UNKNOWN; with d > B the hit
    // blocks are enumerated offset by offset (each offset i hits keys [q0 + i*d, q1 - 1 + i*d]).
    void push_dilated(Emitter& em, int64_t q0, int64_t q1, int64_t reach, int64_t d) const {
        if (d == 1) {
            push_token_interval(em, g, q0 - reach, q1 - 1 + reach, q1 - 1 - reach, q0 + reach);
            return;
        }
        if (d <= g.B) {
            push_token_interval(em, g, q0 - reach, q1 - 1 + reach, 1, 0);
            return;
        }
        const int64_t t0 = em.lo * g.B, t1 = std::min(em.hi * g.B, g.n);  // domain's keys [t0, t1)
        const int64_t w = reach / d;
        const int64_t i0 = std::max(-w, ceil_div(t0 - (q1 - 1), d));
        const int64_t i1 = std::min(w, floor_div(t1 - 1 - q0, d));
        for (int64_t i = i0; i <= i1; ++i) {
            int64_t k0 = std::max<int64_t>(0, q0 + i * d), k1 = std::min(g.n - 1, q1 - 1 + i * d);
            if (k0 <= k1) em.push(k0 / g.B, k1 / g.B + 1, kUnknown);
        }
    }

    void leaf_runs(RowContext& ctx, int id, int64_t qb, Emitter& em) const {
        const Node& nd = nodes[static_cast<size_t>(id)];
        const Pattern& p = *nd.p;
        const int64_t q0 = g.begin(qb), q1 = q0 + g.size(qb);
        switch (p.kind) {
        case PatternKind::dense: em.push(em.lo, em.hi, kFull); break;
        case PatternKind::empty: break;
        case PatternKind::dilated:
        case PatternKind::strided:
            push_dilated(em, q0, q1, nd.reach, p.kind == PatternKind::dilated ? p.b : p.a);
            break;
        case PatternKind::fixed:
        case PatternKind::axial: {
            // Both are a same-chunk part united with a part that repeats along the keys.
            const int64_t c = p.kind == PatternKind::fixed ? p.a : p.b;
            KeySpan s = chunk_span(c, q0, q1, g.n);
            Emitter a{ctx.part_a, em.lo, em.hi}, b{ctx.part_b, em.lo, em.hi};
            ctx.part_a.clear();
            ctx.part_b.clear();
            push_token_interval(a, g, s.c0, s.c1, s.f0, s.f1);
            if (p.kind == PatternKind::fixed) copy_runs(b, nd.col_runs);
            else push_dilated(b, q0, q1, nd.reach, c);
            detail::runs_merge(ctx.part_a, ctx.part_b, op_union, em.out);
            break;
        }
        case PatternKind::band: em.push(qb - p.a, qb + p.a + 1, kFull); break;
        case PatternKind::rows: {
            // Every key for the queries in S: FULL when the whole query block is in one run.
            auto it = std::partition_point(nd.set.runs.begin(), nd.set.runs.end(),
                                           [q0](const auto& r) { return r.second <= q0; });
            bool all = it != nd.set.runs.end() && it->first <= q0 && it->second >= q1;
            em.push(em.lo, em.hi, all ? kFull : kUnknown);  // the hull already ruled out "none"
            break;
        }
        case PatternKind::columns: copy_runs(em, nd.col_runs); break;
        case PatternKind::window2d: {
            // Per key grid row ky, the query grid rows within r of it and their x positions.
            const int64_t w = p.b, r = p.a, grid_rows = ceil_div(g.n, w);
            const int64_t ya = q0 / w, yb = (q1 - 1) / w;
            const int64_t ky0 = std::max({int64_t{0}, ya - r, em.lo * g.B / w});
            const int64_t ky1 = std::min({grid_rows - 1, yb + r, (std::min(em.hi * g.B, g.n) - 1) / w});
            auto keys = [&](int64_t ky, int64_t x0, int64_t x1) {  // keys ky*w + [x0, x1], x clipped
                int64_t k0 = ky * w + std::max<int64_t>(0, x0), k1 = std::min(ky * w + std::min(x1, w - 1), g.n - 1);
                if (k0 <= k1) em.push(k0 / g.B, k1 / g.B + 1, kUnknown);
            };
            for (int64_t ky = ky0; ky <= ky1; ++ky) {
                const int64_t ra = std::max(ya, ky - r), rb = std::min(yb, ky + r);
                const int64_t xa = std::max(q0, ra * w) - ra * w;           // first query's x in row ra
                const int64_t xb = std::min(q1, (rb + 1) * w) - 1 - rb * w; // last query's x in row rb
                if (ra == rb) keys(ky, xa - r, xb + r);
                else if (rb == ra + 1) { keys(ky, 0, xb + r); keys(ky, xa - r, w - 1); }
                else keys(ky, 0, w - 1);  // a whole grid row of queries: every x
            }
            break;
        }
        case PatternKind::random: {
            const int64_t available = p.causal_rows ? qb + 1 : g.K;
            if (nd.outside >= 0) {
                outside_taken(ctx, nd.outside, qb, available);
                for (int32_t kb : random_row_blocks_outside(p.seed, p.layer, p.head, qb, available, p.a, ctx.taken)) {
                    em.push(kb, kb + 1, kFull);
                }
                break;
            }
            if (p.a >= available) {
                em.push(0, available, kFull);
                break;
            }
            for (int32_t kb : random_row_blocks(p.seed, p.layer, p.head, qb, available, p.a)) {
                em.push(kb, kb + 1, kFull);
            }
            break;
        }
        case PatternKind::loaded: loaded_runs(ctx, p, q0, q1, em); break;
        default: {
            KeySpan s = leaf_span(nd, g, q0, q1);
            push_token_interval(em, g, s.c0, s.c1, s.f0, s.f1);
            break;
        }
        }
    }

    // ctx.taken = runs of the key blocks below `available` where node `id` (random's outside P,
    // its runs computed) keeps a pair on row qb: its FULL runs whole (no walk over their blocks),
    // and the blocks of its UNKNOWN runs whose bits hold a pair.
    void outside_taken(RowContext& ctx, int id, int64_t qb, int64_t available) const {
        ctx.taken.clear();
        auto take = [&](int64_t b, int64_t e) {
            if (!ctx.taken.empty() && ctx.taken.back().second == b) ctx.taken.back().second = e;
            else ctx.taken.emplace_back(b, e);
        };
        for (const Run& r : ctx.runs[static_cast<size_t>(id)]) {
            const int64_t end = std::min(r.end, available);
            if (r.state == kFull && r.begin < end) take(r.begin, end);
            if (r.state == kFull) continue;
            for (int64_t kb = r.begin; kb < end; ++kb) {
                if (block_any(ctx, id, block_ref(qb, kb))) take(kb, kb + 1);
            }
        }
    }

    // A loaded mask of block B': its kept blocks mapped onto ours. When B' is a multiple of B
    // our block lies inside one of theirs and keeps its state; otherwise the blocks it meets are
    // UNKNOWN and the bits decide.
    void loaded_runs(RowContext& ctx, const Pattern& p, int64_t q0, int64_t q1, Emitter& em) const {
        const BlockMask& m = *p.mask;
        const int64_t bl = m.block;
        const int64_t key_lo = em.lo * g.B;
        auto row_blocks = [&](int64_t r, auto&& emit) {
            auto first = m.col_idx.begin() + m.row_ptr[static_cast<size_t>(r)];
            auto last = m.col_idx.begin() + m.row_ptr[static_cast<size_t>(r) + 1];
            for (auto it = std::lower_bound(first, last, key_lo / bl); it != last; ++it) {
                const int64_t k0 = *it * bl, k1 = std::min(k0 + bl, g.n) - 1;
                if (k0 / g.B >= em.hi) break;
                emit(k0 / g.B, k1 / g.B + 1, m.partial_idx[static_cast<size_t>(it - m.col_idx.begin())] < 0);
            }
        };
        if (bl % g.B == 0) {
            row_blocks(q0 / bl, [&](int64_t b, int64_t e, bool full) { em.push(b, e, full ? kFull : kUnknown); });
            return;
        }
        ctx.blocks.clear();
        for (int64_t r = q0 / bl; r <= (q1 - 1) / bl; ++r) {
            row_blocks(r, [&](int64_t b, int64_t e, bool) { for (int64_t kb = b; kb < e; ++kb) ctx.blocks.push_back(kb); });
        }
        std::sort(ctx.blocks.begin(), ctx.blocks.end());
        for (int64_t kb : ctx.blocks) em.push(kb, kb + 1, kUnknown);
    }

    // Computes ctx.runs of every node for row qb in three loops over the nodes (plan numbers a
    // parent before its children; no recursion, however deep the pattern): hulls from the
    // children up; domains from the root down, each node's key blocks its parent's narrowed to
    // its own hull (so an intersection with a narrow pattern never walks the whole row of the
    // other side; random's outside P gets the whole row, which its candidates depend on); then
    // runs from the children up, each within its domain.
    void eval(RowContext& ctx, int64_t qb) const {
        const size_t count = nodes.size();
        ctx.hulls.resize(count);
        ctx.domains.resize(count);
        for (size_t id = count; id-- > 0;) ctx.hulls[id] = hull(ctx, static_cast<int>(id), qb);
        for (size_t id = 0; id < count; ++id) {
            const int parent = nodes[id].parent;
            BlockRange outer = parent < 0 ? BlockRange{0, g.K} : ctx.domains[static_cast<size_t>(parent)];
            if (parent >= 0 && nodes[static_cast<size_t>(parent)].outside == static_cast<int>(id) && outer.first < outer.second) {
                outer = {0, g.K};  // random needs all of P's row to count its candidates
            }
            ctx.domains[id] = {std::max(outer.first, ctx.hulls[id].first), std::min(outer.second, ctx.hulls[id].second)};
        }
        for (size_t id = count; id-- > 0;) {
            RunList& out = ctx.runs[id];
            out.clear();
            const auto [lo, hi] = ctx.domains[id];
            if (lo >= hi) continue;
            const Node& nd = nodes[id];
            const RunList& a = ctx.runs[static_cast<size_t>(std::max(nd.kid[0], 0))];
            const RunList& b = ctx.runs[static_cast<size_t>(std::max(nd.kid[1], 0))];
            switch (nd.p->kind) {
            case PatternKind::union_: detail::runs_merge(a, b, op_union, out); break;
            case PatternKind::intersect: detail::runs_merge(a, b, detail::op_intersect, out); break;
            case PatternKind::difference: detail::runs_merge(a, b, detail::op_difference, out); break;
            case PatternKind::complement: detail::runs_complement(a, lo, hi, out); break;
            default: {
                Emitter em{out, lo, hi};
                leaf_runs(ctx, static_cast<int>(id), qb, em);
            }
            }
        }
    }

    // [SECTION] Bits

    struct BlockRef {
        int64_t qb, kb, q0, qn, k0, kn;
    };

    // Sets bits [b, e) of a block's flat bitmask (bit i*B + j: query row i, key column j).
    static void set_bits(uint64_t* w, int64_t b, int64_t e) {
        if (b >= e) return;
        const int64_t wb = b >> 6, we = (e - 1) >> 6;
        const uint64_t first = ~uint64_t{0} << (b & 63), last = ~uint64_t{0} >> (63 - ((e - 1) & 63));
        if (wb == we) {
            w[wb] |= first & last;
            return;
        }
        w[wb] |= first;
        for (int64_t x = wb + 1; x < we; ++x) w[x] = ~uint64_t{0};
        w[we] |= last;
    }

    // Sets row i's keys [k_lo, k_hi] (absolute, inclusive), clipped to the block's valid keys.
    void set_keys(uint64_t* w, const BlockRef& blk, int64_t i, int64_t k_lo, int64_t k_hi) const {
        k_lo = std::max(k_lo, blk.k0);
        k_hi = std::min(k_hi, blk.k0 + blk.kn - 1);
        if (k_lo <= k_hi) set_bits(w, i * g.B + (k_lo - blk.k0), i * g.B + (k_hi - blk.k0) + 1);
    }

    // Keys k = q + i*d with |k - q| <= reach, for row i of the block.
    void set_dilated(uint64_t* w, const BlockRef& blk, int64_t i, int64_t reach, int64_t d) const {
        const int64_t q = blk.q0 + i;
        if (d == 1) return set_keys(w, blk, i, q - reach, q + reach);
        const int64_t first = std::max(blk.k0, q - reach), last = std::min(blk.k0 + blk.kn - 1, q + reach);
        for (int64_t k = q + ceil_div(first - q, d) * d; k <= last; k += d) {
            set_bits(w, i * g.B + (k - blk.k0), i * g.B + (k - blk.k0) + 1);
        }
    }

    // Key intervals [first, last] of the block shared by all its rows: columns' S, fixed's
    // periodic column part.
    void block_column_keys(const Node& nd, const BlockRef& blk, std::vector<std::pair<int64_t, int64_t>>& keys) const {
        const Pattern& p = *nd.p;
        const int64_t k_end = blk.k0 + blk.kn;
        auto add = [&](int64_t b, int64_t e) {  // keys [b, e) clipped to the block
            b = std::max(b, blk.k0);
            e = std::min(e, k_end);
            if (b < e) keys.emplace_back(b, e - 1);
        };
        keys.clear();
        if (p.kind == PatternKind::columns) {
            auto it = std::partition_point(nd.set.runs.begin(), nd.set.runs.end(),
                                           [&](const auto& r) { return r.second <= blk.k0; });
            for (; it != nd.set.runs.end() && it->first < k_end; ++it) add(it->first, it->second);
        } else {
            for (int64_t m = blk.k0 / p.a; m * p.a < k_end; ++m) add(m * p.a + p.a - p.b, m * p.a + p.a);
        }
    }

    // The bits of a leaf on a block where its runs say UNKNOWN, row by row.
    void leaf_bits(RowContext& ctx, const Node& nd, const BlockRef& blk, uint64_t* w) const {
        const Pattern& p = *nd.p;
        if (p.kind == PatternKind::loaded && p.mask->block == g.B) {
            // Same block size: this block is partial in the loaded mask; its bits are ours.
            const int64_t at = detail::mask_find(*p.mask, blk.qb, blk.kb);
            std::memcpy(w, p.mask->partial_bits(p.mask->partial_idx[static_cast<size_t>(at)]),
                        static_cast<size_t>(words) * sizeof(uint64_t));
            return;
        }
        if (p.kind == PatternKind::columns || p.kind == PatternKind::fixed) block_column_keys(nd, blk, ctx.keys);
        for (int64_t i = 0; i < blk.qn; ++i) {
            const int64_t q = blk.q0 + i;
            // Row i's keys in q's chunk of size c (chunk, fixed, and axial's grid row).
            auto same_chunk = [&](int64_t c) { set_keys(w, blk, i, q / c * c, q / c * c + std::min(c, g.n) - 1); };
            switch (p.kind) {
            case PatternKind::window: set_keys(w, blk, i, q - p.a, q + p.b); break;
            case PatternKind::dilated: set_dilated(w, blk, i, nd.reach, p.b); break;
            case PatternKind::strided: set_dilated(w, blk, i, nd.reach, p.a); break;
            case PatternKind::chunk: same_chunk(p.a); break;
            case PatternKind::fixed:
            case PatternKind::columns:
                if (p.kind == PatternKind::fixed) same_chunk(p.a);
                for (const auto& [first, last] : ctx.keys) set_keys(w, blk, i, first, last);
                break;
            case PatternKind::rows:
                if (nd.set.contains(q)) set_keys(w, blk, i, blk.k0, blk.k0 + blk.kn - 1);
                break;
            case PatternKind::prefix: set_keys(w, blk, i, 0, std::max(p.a, q + 1) - 1); break;
            case PatternKind::segments:
                set_keys(w, blk, i, segment_begin(nd.set, q), segment_end(nd.set, q, g.n) - 1);
                break;
            case PatternKind::window2d: {
                const int64_t wd = p.b, r = p.a, qy = q / wd, qx = q % wd;
                const int64_t ky1 = std::min(qy + r, (blk.k0 + blk.kn - 1) / wd);
                for (int64_t ky = std::max(qy - r, blk.k0 / wd); ky <= ky1; ++ky) {
                    set_keys(w, blk, i, ky * wd + std::max<int64_t>(0, qx - r), ky * wd + std::min(wd - 1, qx + r));
                }
                break;
            }
            case PatternKind::axial:
                same_chunk(p.b);
                set_dilated(w, blk, i, nd.reach, p.b);
                break;
            default:  // a leaf that is never UNKNOWN, or a loaded mask of another block size
                for (int64_t j = 0; j < blk.kn; ++j) {
                    if (pattern_allowed(p, g.n, static_cast<int32_t>(g.B), q, blk.k0 + j)) {
                        set_bits(w, i * g.B + j, i * g.B + j + 1);
                    }
                }
            }
        }
    }

    BlockRef block_ref(int64_t qb, int64_t kb) const { return {qb, kb, g.begin(qb), g.size(qb), g.begin(kb), g.size(kb)}; }

    // Sets ctx.valid to the valid pairs of the block (its rows and keys below n).
    void valid_fill(RowContext& ctx, const BlockRef& blk) const {
        std::fill(ctx.valid.begin(), ctx.valid.end(), 0);
        for (int64_t i = 0; i < blk.qn; ++i) set_bits(ctx.valid.data(), i * g.B, i * g.B + blk.kn);
    }

    // Whether node `root` allows some pair of the block (where its runs say UNKNOWN).
    bool block_any(RowContext& ctx, int root, const BlockRef& blk) const {
        valid_fill(ctx, blk);
        const uint64_t* w = bits(ctx, blk, root);
        return std::any_of(w, w + words, [](uint64_t x) { return x != 0; });
    }

    // The bits of node `root` (the pattern's root unless given) on one block. A node is FULL or
    // absent there by its runs (then the block's all-valid or all-zero words stand for it), or
    // UNKNOWN: then its children are too, or FULL or absent, and its words follow from theirs
    // (or, for a leaf, from its predicate). Walks the UNKNOWN nodes children first with an
    // explicit stack (a pattern may be thousands of levels deep). ctx.valid must hold the
    // block's valid pairs.
    const uint64_t* bits(RowContext& ctx, const BlockRef& blk, int root = 0) const {
        ctx.words_of.resize(nodes.size());
        ctx.visits.clear();
        auto visit = [&](int id) {
            const State s = state_at(ctx.runs[static_cast<size_t>(id)], blk.kb);
            ctx.visits.push_back({id, s, false});
        };
        visit(root);
        while (!ctx.visits.empty()) {
            RowContext::Visit& v = ctx.visits.back();
            const Node& nd = nodes[static_cast<size_t>(v.id)];
            const uint64_t*& result = ctx.words_of[static_cast<size_t>(v.id)];
            if (v.state != kUnknown) {
                result = v.state == kFull ? ctx.valid.data() : ctx.zero.data();
                ctx.visits.pop_back();
                continue;
            }
            if (nd.kid[0] >= 0 && !v.expanded) {
                v.expanded = true;  // come back when the children's words are known
                const int kid0 = nd.kid[0], kid1 = nd.kid[1];
                if (kid1 >= 0) visit(kid1);
                visit(kid0);
                continue;
            }
            uint64_t* w = ctx.bits.data() + v.id * words;
            const uint64_t* x = nd.kid[0] >= 0 ? ctx.words_of[static_cast<size_t>(nd.kid[0])] : nullptr;
            const uint64_t* y = nd.kid[1] >= 0 ? ctx.words_of[static_cast<size_t>(nd.kid[1])] : nullptr;
            switch (nd.p->kind) {
            case PatternKind::union_: for (int64_t i = 0; i < words; ++i) w[i] = x[i] | y[i]; break;
            case PatternKind::intersect: for (int64_t i = 0; i < words; ++i) w[i] = x[i] & y[i]; break;
            case PatternKind::difference: for (int64_t i = 0; i < words; ++i) w[i] = x[i] & ~y[i]; break;
            case PatternKind::complement:
                for (int64_t i = 0; i < words; ++i) w[i] = ctx.valid[static_cast<size_t>(i)] & ~x[i];
                break;
            default:
                std::fill(w, w + words, 0);
                leaf_bits(ctx, nd, blk, w);
            }
            result = w;
            ctx.visits.pop_back();
        }
        return ctx.words_of[static_cast<size_t>(root)];
    }
};

// [SECTION] Driver

// The compiled rows [row_begin, row_end): row lengths, kept blocks, partial flags, bitmasks.
struct RowsOut {
    std::vector<int64_t> row_len;
    std::vector<int32_t> col;
    std::vector<uint8_t> partial;
    std::vector<uint64_t> bits;
};

void compile_rows(const Compiler& c, int64_t row_begin, int64_t row_end, RowsOut& out) {
    RowContext ctx;
    ctx.runs.resize(c.nodes.size());
    ctx.bits.resize(c.nodes.size() * static_cast<size_t>(c.words));
    ctx.valid.resize(static_cast<size_t>(c.words));
    ctx.zero.assign(static_cast<size_t>(c.words), 0);
    for (int64_t qb = row_begin; qb < row_end; ++qb) {
        c.eval(ctx, qb);
        const size_t before = out.col.size();
        for (const Run& r : ctx.runs[0]) {
            for (int64_t kb = r.begin; kb < r.end; ++kb) {
                if (r.state == kFull) {
                    out.col.push_back(static_cast<int32_t>(kb));
                    out.partial.push_back(0);
                    continue;
                }
                const Compiler::BlockRef blk = c.block_ref(qb, kb);
                c.valid_fill(ctx, blk);
                const uint64_t* w = c.bits(ctx, blk);
                bool any = false, full = true;  // leaves never set bits beyond n
                for (int64_t i = 0; i < c.words; ++i) {
                    any |= w[i] != 0;
                    full &= w[i] == ctx.valid[static_cast<size_t>(i)];
                }
                if (!any) continue;  // no pair after all: dropped
                out.col.push_back(static_cast<int32_t>(kb));
                out.partial.push_back(full ? 0 : 1);
                if (!full) out.bits.insert(out.bits.end(), w, w + c.words);
            }
        }
        out.row_len.push_back(static_cast<int64_t>(out.col.size() - before));
    }
}

} // namespace

BlockMask pattern_compile(const Pattern& p, int64_t n, int32_t block, int threads) {
    if (n < 1) {
        throw Error("compile: n = " + std::to_string(n) + " is not a sequence length (use n >= 1)");
    }
    if (!block_size_valid(block)) {
        throw Error("compile: block size " + std::to_string(block) +
                    " is not a power of two from 16 to 256 (use 16, 32, 64, 128 or 256)");
    }
    Compiler c;
    c.g = {n, block, (n + block - 1) / block};
    if (c.g.K > INT32_MAX || n >= detail::kUnbounded / 4) {
        throw Error("compile: n = " + std::to_string(n) + " is too long for block size " +
                    std::to_string(block) + " (key block indices must fit in 32 bits)");
    }
    c.words = int64_t{block} * block / 64;
    plan(p, c.g, c.nodes);

    // Rows go in contiguous pieces, each compiled alone and concatenated in row order, so the
    // result is the same for any number of threads.
    const int workers = threads > 0 ? threads : thread_count();
    const int64_t pieces = std::min<int64_t>(c.g.K, int64_t{workers} * 4);
    std::vector<RowsOut> outs(static_cast<size_t>(pieces));
    parallel_for(pieces, workers, [&](int64_t begin, int64_t end) {
        for (int64_t piece = begin; piece < end; ++piece) {
            compile_rows(c, c.g.K * piece / pieces, c.g.K * (piece + 1) / pieces, outs[static_cast<size_t>(piece)]);
        }
    });

    // Where each piece starts in the output (rows, kept blocks, bitmasks), then every piece
    // copies itself there in parallel.
    std::vector<int64_t> row_at(static_cast<size_t>(pieces) + 1, 0), kept_at = row_at, partial_at = row_at;
    for (int64_t i = 0; i < pieces; ++i) {
        const RowsOut& o = outs[static_cast<size_t>(i)];
        row_at[i + 1] = row_at[i] + static_cast<int64_t>(o.row_len.size());
        kept_at[i + 1] = kept_at[i] + static_cast<int64_t>(o.col.size());
        partial_at[i + 1] = partial_at[i] + static_cast<int64_t>(o.bits.size()) / c.words;
    }
    BlockMask mask;
    mask.n = n;
    mask.block = block;
    mask.row_ptr.resize(static_cast<size_t>(c.g.K) + 1);
    mask.col_idx.resize(static_cast<size_t>(kept_at.back()));
    mask.partial_idx.resize(static_cast<size_t>(kept_at.back()));
    mask.bits.resize(static_cast<size_t>(partial_at.back() * c.words));
    parallel_for(pieces, workers, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            RowsOut& o = outs[static_cast<size_t>(i)];
            int64_t at = kept_at[i], partial = partial_at[i];
            for (size_t r = 0; r < o.row_len.size(); ++r) {
                mask.row_ptr[static_cast<size_t>(row_at[i]) + r + 1] = at + o.row_len[r];
                at += o.row_len[r];
            }
            std::copy(o.col.begin(), o.col.end(), mask.col_idx.begin() + kept_at[i]);
            for (size_t k = 0; k < o.partial.size(); ++k) {
                mask.partial_idx[static_cast<size_t>(kept_at[i]) + k] = o.partial[k] ? static_cast<int32_t>(partial++) : -1;
            }
            std::copy(o.bits.begin(), o.bits.end(), mask.bits.begin() + partial_at[i] * c.words);
            o = RowsOut{};  // free each piece once copied
        }
    });
    return mask;
}

} // namespace sparsa::dsl
