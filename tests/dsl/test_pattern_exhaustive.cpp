// The compiler against the spec: every primitive with a spread of parameters at every n from 1 to
// 300 and B = 16, 32, 64, plus random combination trees and loaded masks. Each compiled mask is
// checked for canonical form and compared pair by pair with pattern_allowed (the oracle).
#include "dsl/pattern.hpp"

#include "engine/error.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>

using namespace sparsa::dsl;
using sparsa::BlockMask;

namespace {

// [SECTION] Checks

// The format's rules (engine/block_mask.hpp): "" when all hold, else the first broken one.
std::string canonical_problem(const BlockMask& m, int64_t n, int32_t B) {
    std::ostringstream why;
    const int64_t K = (n + B - 1) / B, words = int64_t{B} * B / 64;
    if (m.n != n || m.block != B) return "wrong n or block";
    if (static_cast<int64_t>(m.row_ptr.size()) != K + 1 || m.row_ptr[0] != 0) return "bad row_ptr shape";
    if (m.row_ptr.back() != m.kept_blocks() || m.partial_idx.size() != m.col_idx.size()) return "bad sizes";
    if (static_cast<int64_t>(m.bits.size()) % words != 0) return "bits not whole blocks";
    const int64_t partials = static_cast<int64_t>(m.bits.size()) / words;
    std::vector<char> used(static_cast<size_t>(partials), 0);
    for (int64_t qb = 0; qb < K; ++qb) {
        if (m.row_ptr[qb + 1] < m.row_ptr[qb]) return "row_ptr decreases";
        const int64_t qn = std::min<int64_t>(B, n - qb * B);
        for (int64_t i = m.row_ptr[qb]; i < m.row_ptr[qb + 1]; ++i) {
            const int64_t kb = m.col_idx[i];
            if (kb < 0 || kb >= K || (i > m.row_ptr[qb] && m.col_idx[i - 1] >= kb)) {
                why << "row " << qb << ": key blocks not sorted or out of range";
                return why.str();
            }
            const int32_t p = m.partial_idx[i];
            if (p < 0) continue;
            if (p >= partials || used[p]) return "bad or repeated partial index";
            used[p] = 1;
            const int64_t kn = std::min<int64_t>(B, n - kb * B);
            int64_t set = 0;
            for (int64_t bit = 0; bit < int64_t{B} * B; ++bit) {
                if (!((m.partial_bits(p)[bit / 64] >> (bit % 64)) & 1u)) continue;
                if (bit / B >= qn || bit % B >= kn) {
                    why << "block (" << qb << ", " << kb << "): a bit beyond n is set";
                    return why.str();
                }
                ++set;
            }
            if (set == 0 || set == qn * kn) {
                why << "block (" << qb << ", " << kb << ") is partial but " << (set == 0 ? "empty" : "full");
                return why.str();
            }
        }
    }
    for (char u : used) {
        if (!u) return "a bitmask no block uses";
    }
    return "";
}

// The mask as an n x n 0/1 matrix (queries x keys); small n only.
std::vector<uint8_t> expand(const BlockMask& m) {
    const int64_t n = m.n, B = m.block;
    std::vector<uint8_t> a(static_cast<size_t>(n * n), 0);
    for (int64_t qb = 0; qb < m.q_blocks(); ++qb) {
        for (int64_t i = m.row_ptr[qb]; i < m.row_ptr[qb + 1]; ++i) {
            const int64_t kb = m.col_idx[i];
            for (int64_t q = qb * B; q < std::min(n, qb * B + B); ++q) {
                for (int64_t k = kb * B; k < std::min(n, kb * B + B); ++k) {
                    const int64_t bit = (q - qb * B) * B + (k - kb * B);
                    const int32_t p = m.partial_idx[i];
                    a[q * n + k] = p < 0 || ((m.partial_bits(p)[bit / 64] >> (bit % 64)) & 1u);
                }
            }
        }
    }
    return a;
}

std::vector<uint8_t> oracle(const Pattern& p, int64_t n, int32_t B) {
    std::vector<uint8_t> a(static_cast<size_t>(n * n));
    for (int64_t q = 0; q < n; ++q) {
        for (int64_t k = 0; k < n; ++k) a[q * n + k] = pattern_allowed(p, n, B, q, k);
    }
    return a;
}

// random(r, outside = P) straight from its definition, as a mask of whole blocks: on each query
// block row the candidates are the blocks (kb <= qb under causal_rows) where P's n x n matrix
// holds no pair; the draw is random_row_blocks over their count, candidate i being the i-th.
PatternPtr spec_rewrite(const Pattern& p, int64_t n, int32_t B);

std::shared_ptr<const BlockMask> random_outside_spec(const Pattern& p, int64_t n, int32_t B) {
    const std::vector<uint8_t> taken = oracle(*spec_rewrite(*p.outside, n, B), n, B);
    const int64_t K = (n + B - 1) / B;
    auto m = std::make_shared<BlockMask>();
    m->n = n;
    m->block = B;
    m->row_ptr.push_back(0);
    for (int64_t qb = 0; qb < K; ++qb) {
        std::vector<int32_t> candidates;
        for (int64_t kb = 0; kb < (p.causal_rows ? qb + 1 : K); ++kb) {
            bool any = false;
            for (int64_t q = qb * B; q < std::min(n, qb * B + B); ++q) {
                for (int64_t k = kb * B; k < std::min(n, kb * B + B); ++k) any = any || taken[q * n + k];
            }
            if (!any) candidates.push_back(static_cast<int32_t>(kb));
        }
        const auto count = static_cast<int64_t>(candidates.size());
        for (int32_t i : random_row_blocks(p.seed, p.layer, p.head, qb, count, p.a)) {
            m->col_idx.push_back(candidates[static_cast<size_t>(i)]);
            m->partial_idx.push_back(-1);
        }
        m->row_ptr.push_back(static_cast<int64_t>(m->col_idx.size()));
    }
    return m;
}

// p with each random(r, outside = P) replaced by its spec mask (a loaded pattern), so that the
// oracle answers each pair in constant time. Test trees are shallow: recursion is fine here.
PatternPtr spec_rewrite(const Pattern& p, int64_t n, int32_t B) {
    if (p.kind == PatternKind::random && p.outside) return pattern_loaded(random_outside_spec(p, n, B), "spec");
    if (p.kids.empty()) return std::make_shared<const Pattern>(p);
    std::vector<PatternPtr> kids;
    for (const auto& kid : p.kids) kids.push_back(spec_rewrite(*kid, n, B));
    switch (p.kind) {
    case PatternKind::union_: return pattern_union(kids[0], kids[1]);
    case PatternKind::intersect: return pattern_intersect(kids[0], kids[1]);
    case PatternKind::difference: return pattern_difference(kids[0], kids[1]);
    default: return pattern_complement(kids[0]);
    }
}

// Whether the pattern's pairs depend on the block size (band and random count in blocks).
bool depends_on_block(const Pattern& p) {
    if (p.kind == PatternKind::band || p.kind == PatternKind::random) return true;  // and its outside
    for (const auto& k : p.kids) {
        if (depends_on_block(*k)) return true;
    }
    return false;
}

// Compiles p and compares it with the spec: "" when right, else what is wrong and where.
std::string check_compile(const std::string& name, const Pattern& p, int64_t n, int32_t B,
                          const std::vector<uint8_t>& spec, int threads = 1) {
    std::ostringstream why;
    why << name << ", n = " << n << ", B = " << B << ": ";
    const BlockMask m = pattern_compile(p, n, B, threads);
    if (std::string problem = canonical_problem(m, n, B); !problem.empty()) return why.str() + problem;
    try {
        sparsa::block_mask_validate(m, "compiled mask");  // the engine's own check agrees
    } catch (const sparsa::Error& e) {
        return why.str() + e.what();
    }
    const std::vector<uint8_t> got = expand(m);
    if (std::memcmp(got.data(), spec.data(), got.size()) == 0) return "";
    for (size_t i = 0; i < got.size(); ++i) {
        if (got[i] != spec[i]) {
            why << "first differing pair (q = " << i / n << ", k = " << i % n << "): compiled "
                << int(got[i]) << ", spec " << int(spec[i]);
            break;
        }
    }
    return why.str();
}

struct Case {
    std::string name;
    PatternPtr p;
};

// The largest n of the exhaustive sweeps: 300, or SPARSA_EXHAUSTIVE_MAX_N for slow builds
// (sanitizers). The random trees scale with it.
int64_t exhaustive_max_n() {
    const char* env = std::getenv("SPARSA_EXHAUSTIVE_MAX_N");
    const int64_t v = env ? std::atoll(env) : 0;
    return v > 0 ? v : 300;
}

// Every case at every n in 1..max_n and B = 16, 32, 64.
void check_exhaustive(const std::vector<Case>& cases, int64_t max_n = exhaustive_max_n()) {
    for (const Case& c : cases) {
        const bool per_block = depends_on_block(*c.p);
        for (int64_t n = 1; n <= max_n; ++n) {
            std::vector<uint8_t> spec;
            for (int32_t B : {16, 32, 64}) {
                if (spec.empty() || per_block) spec = oracle(*c.p, n, B);
                CHECK(check_compile(c.name, *c.p, n, B, spec) == "");
            }
        }
    }
}

// Token sets with runs, isolated members, members at block edges and beyond every n tested.
std::vector<std::pair<std::string, TokenSet>> sample_sets() {
    return {
        {"{}", TokenSet{}},
        {"first(1)", token_set_range(0, 1)},
        {"first(16)", token_set_range(0, 16)},
        {"5..40", token_set_range(5, 40)},
        {"every(7)", token_set_every(7, 0, 400)},
        {"every(64, offset = 63)", token_set_every(64, 63, 400)},
        {"every(40, offset = 30, width = 3)", token_set_every(40, 30, 400, 3)},
        {"every(64, offset = 56, width = 8)", token_set_every(64, 56, 400, 8)},
        {"every(9, offset = 2, width = 9)", token_set_every(9, 2, 400, 9)},
        {"{0, 17, 99, 299}", token_set_list({0, 17, 99, 299})},
        {"250..400", token_set_range(250, 400)},
        {"every(1)", token_set_every(1, 0, 400)},
    };
}

// [SECTION] Random trees

TokenSet random_set(std::mt19937_64& rng, int64_t scale) {
    switch (rng() % 4) {
    case 0: {
        int64_t b = static_cast<int64_t>(rng() % (scale + 1));
        return token_set_range(b, b + 1 + static_cast<int64_t>(rng() % 70));
    }
    case 1: {
        const int64_t p = 1 + static_cast<int64_t>(rng() % 40);
        const int64_t w = rng() % 2 == 0 ? 1 : static_cast<int64_t>(rng() % static_cast<uint64_t>(p + 1));
        return token_set_every(p, static_cast<int64_t>(rng() % 9), scale + 50, w);
    }
    case 2: {
        std::vector<int64_t> m;
        for (int i = static_cast<int>(rng() % 6); i > 0; --i) m.push_back(static_cast<int64_t>(rng() % (scale + 20)));
        return token_set_list(m);
    }
    default: return token_set_union(token_set_range(0, static_cast<int64_t>(rng() % 20)), token_set_list({scale / 2}));
    }
}

PatternPtr random_leaf(std::mt19937_64& rng, int64_t scale) {
    auto pick = [&](int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(rng() % uint64_t(hi - lo + 1)); };
    switch (rng() % 19) {
    case 0: return pattern_dense();
    case 1: return pattern_empty();
    case 2: return pattern_causal();
    case 3: { int64_t w = pick(-3, scale); return pattern_window(w, w); }
    case 4: return pattern_window(pick(-scale / 2, scale), pick(-scale / 2, scale));
    case 5: return pattern_dilated(pick(0, 12), pick(1, 90));
    case 6: return pattern_strided(pick(1, 90));
    case 7: { int64_t l = pick(1, 90); return pattern_fixed(l, pick(0, l)); }
    case 8: return pattern_chunk(pick(1, scale));
    case 9: return pattern_band(pick(0, 4));
    case 10: return pattern_rows(random_set(rng, scale));
    case 11: return pattern_columns(random_set(rng, scale));
    case 12: return pattern_global(random_set(rng, scale));
    case 13: return pattern_prefix(pick(0, scale));
    case 14: return pattern_segments(random_set(rng, scale));
    case 15: return pattern_window2d(pick(0, 6), pick(1, 70));
    case 16: return pattern_axial(pick(1, 90));
    case 17: return pattern_random(pick(0, 5), rng() % 1000, pick(0, 3), pick(0, 3), rng() % 2 == 0);
    default: return pattern_window(pick(-2, 40), pick(-2, 40));
    }
}

PatternPtr random_tree(std::mt19937_64& rng, int64_t scale, int depth) {
    if (depth == 0 || rng() % 4 == 0) return random_leaf(rng, scale);
    switch (rng() % 7) {
    case 0:
    case 1: return pattern_union(random_tree(rng, scale, depth - 1), random_tree(rng, scale, depth - 1));
    case 2:
    case 3: return pattern_intersect(random_tree(rng, scale, depth - 1), random_tree(rng, scale, depth - 1));
    case 4:
    case 5: return pattern_difference(random_tree(rng, scale, depth - 1), random_tree(rng, scale, depth - 1));
    default: return pattern_complement(random_tree(rng, scale, depth - 1));
    }
}

} // namespace

// [SECTION] Primitives

TEST_CASE("exhaustive: dense, empty, causal, window", "[dsl][exhaustive]") {
    std::vector<Case> cases = {{"dense", pattern_dense()}, {"empty", pattern_empty()}, {"causal", pattern_causal()}};
    for (int64_t w : {-3, -1, 0, 1, 2, 15, 16, 17, 63, 64, 65, 100, 299, 400}) {
        cases.push_back({"window(" + std::to_string(w) + ")", pattern_window(w, w)});
    }
    const std::pair<int64_t, int64_t> sides[] = {{0, 0}, {3, 0}, {0, 3}, {-2, 5}, {5, -2}, {-3, 2}, {20, -10},
                                                 {-10, 20}, {70, 1}, {1, 70}, {1000, 0}, {0, 1000}, {-64, 128}, {-17, 17}};
    for (auto [l, r] : sides) {
        cases.push_back({"window(left = " + std::to_string(l) + ", right = " + std::to_string(r) + ")", pattern_window(l, r)});
    }
    check_exhaustive(cases);
}

TEST_CASE("exhaustive: dilated, strided", "[dsl][exhaustive]") {
    std::vector<Case> cases;
    for (auto [w, d] : std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {0, 7}, {1, 1}, {3, 2}, {2, 16}, {4, 17}, {1, 40},
                                                              {3, 64}, {2, 65}, {5, 70}, {1, 300}, {50, 3}, {400, 1}}) {
        cases.push_back({"dilated(" + std::to_string(w) + ", " + std::to_string(d) + ")", pattern_dilated(w, d)});
    }
    for (int64_t s : {1, 2, 3, 16, 17, 33, 64, 65, 100, 400}) {
        cases.push_back({"strided(" + std::to_string(s) + ")", pattern_strided(s)});
    }
    check_exhaustive(cases);
}

TEST_CASE("exhaustive: fixed, chunk, band, prefix", "[dsl][exhaustive]") {
    std::vector<Case> cases;
    for (auto [l, c] : std::vector<std::pair<int64_t, int64_t>>{{1, 0}, {1, 1}, {4, 1}, {16, 4}, {17, 0}, {17, 17},
                                                              {40, 3}, {64, 64}, {100, 7}, {500, 1}}) {
        cases.push_back({"fixed(" + std::to_string(l) + ", " + std::to_string(c) + ")", pattern_fixed(l, c)});
    }
    for (int64_t c : {1, 2, 7, 16, 17, 64, 100, 400}) cases.push_back({"chunk(" + std::to_string(c) + ")", pattern_chunk(c)});
    for (int64_t r : {0, 1, 2, 5, 1000}) cases.push_back({"band(" + std::to_string(r) + ")", pattern_band(r)});
    for (int64_t p : {0, 1, 16, 17, 100, 400}) cases.push_back({"prefix(" + std::to_string(p) + ")", pattern_prefix(p)});
    check_exhaustive(cases);
}

TEST_CASE("exhaustive: rows, columns, global, segments", "[dsl][exhaustive]") {
    std::vector<Case> cases;
    for (const auto& [name, s] : sample_sets()) {
        cases.push_back({"rows(" + name + ")", pattern_rows(s)});
        cases.push_back({"columns(" + name + ")", pattern_columns(s)});
        cases.push_back({"global(" + name + ")", pattern_global(s)});
        cases.push_back({"segments(" + name + ")", pattern_segments(s)});
    }
    check_exhaustive(cases);
}

TEST_CASE("exhaustive: window2d, axial", "[dsl][exhaustive]") {
    std::vector<Case> cases;
    for (auto [r, w] : std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {1, 1}, {1, 4}, {2, 17}, {1, 16}, {3, 20},
                                                              {0, 64}, {5, 100}, {1, 300}, {400, 10}, {2, 70}}) {
        cases.push_back({"window2d(" + std::to_string(r) + ", width = " + std::to_string(w) + ")", pattern_window2d(r, w)});
    }
    for (int64_t w : {1, 2, 16, 17, 40, 64, 100, 400}) {
        cases.push_back({"axial(width = " + std::to_string(w) + ")", pattern_axial(w)});
    }
    check_exhaustive(cases);
}

TEST_CASE("exhaustive: random", "[dsl][exhaustive]") {
    std::vector<Case> cases;
    for (bool causal : {false, true}) {
        for (int64_t r : {0, 1, 3, 100}) {
            cases.push_back({"random(" + std::to_string(r) + ", seed = 7, causal_rows = " + std::to_string(causal) + ")",
                             pattern_random(r, 7, 1, 2, causal)});
        }
    }
    check_exhaustive(cases);
}

TEST_CASE("exhaustive: random(r, outside = P)", "[dsl][exhaustive][random]") {
    const auto bigbird_local = pattern_union(pattern_band(1), pattern_global(token_set_range(0, 32)));
    const std::vector<std::pair<std::string, PatternPtr>> outsides = {
        {"empty", pattern_empty()},
        {"dense", pattern_dense()},
        {"band(1) | global(first(32))", bigbird_local},
        {"window(5)", pattern_window(5, 5)},  // partial blocks: one pair is enough to take a block
        {"window(left = -1, right = 3)", pattern_window(-1, 3)},  // pairs only above the diagonal
        {"causal", pattern_causal()},
        {"columns(every(40, offset = 30, width = 3))", pattern_columns(token_set_every(40, 30, 400, 3))},
        {"!band(2)", pattern_complement(pattern_band(2))},
        {"random(1, outside = band(0)) | window(3)",  // nested: P draws too
         pattern_union(pattern_random(1, 5, 0, 1, false, pattern_band(0)), pattern_window(3, 3))},
    };
    std::vector<Case> cases;
    for (const auto& [name, outside] : outsides) {
        for (bool causal : {false, true}) {
            for (int64_t r : {0, 3, 100}) {
                // As the evaluator passes it: under causal, P & causal.
                const PatternPtr P = causal ? pattern_intersect(outside, pattern_causal()) : outside;
                const std::string rc = "random(" + std::to_string(r) + ", outside = " + name + ")" +
                                       (causal ? " & causal" : "");
                const auto random = pattern_random(r, 7, 1, 2, causal, P);
                cases.push_back({rc, random});
                if (r == 3) cases.push_back({"P | " + rc, pattern_union(P, random)});
            }
        }
    }
    for (const Case& c : cases) {
        for (int64_t n = 1; n <= exhaustive_max_n(); n += n < 70 ? 1 : 23) {
            for (int32_t B : {16, 32, 64}) {
                const std::vector<uint8_t> spec = oracle(*spec_rewrite(*c.p, n, B), n, B);
                CHECK(check_compile(c.name, *c.p, n, B, spec) == "");
                // pattern_allowed reads it the same way (it scans a row's blocks for every pair,
                // and again inside a nested draw: a few small n only).
                if (B == 16 && (n == 1 || n == 20 || n == 33)) CHECK(oracle(*c.p, n, B) == spec);
            }
        }
    }
    // outside = empty is plain random: the same draw, block for block.
    for (bool causal : {false, true}) {
        CHECK(pattern_compile(*pattern_random(3, 9, 2, 5, causal, pattern_empty()), 3000, 32, 1) ==
              pattern_compile(*pattern_random(3, 9, 2, 5, causal), 3000, 32, 1));
    }
}

TEST_CASE("exhaustive: random(r, outside = P) in random combination trees", "[dsl][exhaustive][random]") {
    std::mt19937_64 rng(777);
    const int trees = static_cast<int>(exhaustive_max_n());
    for (int tree = 0; tree < trees; ++tree) {
        const int32_t B = int32_t{16} << (rng() % 3);
        const PatternPtr P = random_tree(rng, 200, 1 + static_cast<int>(rng() % 3));
        const auto random = pattern_random(static_cast<int64_t>(rng() % 5), rng() % 1000, 0, 3, rng() % 2 == 0, P);
        const PatternPtr other = random_tree(rng, 200, static_cast<int>(rng() % 3));
        PatternPtr p;
        switch (rng() % 4) {
        case 0: p = pattern_union(P, random); break;
        case 1: p = pattern_intersect(random, other); break;
        case 2: p = pattern_difference(other, random); break;
        default: p = pattern_complement(pattern_union(random, other)); break;
        }
        const std::string name = "tree " + std::to_string(tree) + " " + pattern_key(*p);
        for (int64_t n : {int64_t{1}, int64_t{B} + 1, 2 * int64_t{B} + 1 + static_cast<int64_t>(rng() % (B - 2)),
                          1 + static_cast<int64_t>(rng() % 300)}) {
            CHECK(check_compile(name, *p, n, B, oracle(*spec_rewrite(*p, n, B), n, B)) == "");
        }
    }
}

// [SECTION] Loaded masks

TEST_CASE("exhaustive: load, at its own and at other block sizes", "[dsl][exhaustive]") {
    const auto source = pattern_union(pattern_difference(pattern_window(9, 3), pattern_strided(5)),
                                      pattern_columns(token_set_every(37, 2, 400)));
    for (int64_t n = 1; n <= exhaustive_max_n(); ++n) {
        const std::vector<uint8_t> spec = oracle(*source, n, 16);
        for (int32_t saved_block : {16, 64, 128}) {
            auto saved = std::make_shared<const BlockMask>(pattern_compile(*source, n, saved_block, 1));
            const auto loaded = pattern_loaded(saved, "saved.npz");
            for (int32_t B : {16, 32, 64}) {
                CHECK(check_compile("load(block " + std::to_string(saved_block) + ")", *loaded, n, B, spec) == "");
            }
            const auto mixed = pattern_intersect(pattern_complement(loaded), pattern_window(20, 20));
            CHECK(check_compile("!load & window(20)", *mixed, n, 32, oracle(*mixed, n, 32)) == "");
        }
    }
    auto saved = std::make_shared<const BlockMask>(pattern_compile(*source, 100, 16, 1));
    try {
        pattern_compile(*pattern_loaded(saved, "m.npz"), 120, 16, 1);
        FAIL("a mask saved for another n compiled");
    } catch (const sparsa::Error& e) {
        CHECK(std::string(e.what()) == "load: mask was saved for n = 100, compiling for n = 120");
    }
}

// [SECTION] Combinations

TEST_CASE("exhaustive: random combination trees", "[dsl][exhaustive]") {
    std::mt19937_64 rng(12345);
    const int trees = static_cast<int>(10 * exhaustive_max_n());
    for (int tree = 0; tree < trees; ++tree) {
        const int32_t B = int32_t{16} << (rng() % 3);
        const PatternPtr p = random_tree(rng, 200, 1 + static_cast<int>(rng() % 4));
        const std::string name = "tree " + std::to_string(tree) + " " + pattern_key(*p);
        std::vector<int64_t> ns = {1, B - 1, B, B + 1, 2 * B + 1 + static_cast<int64_t>(rng() % (B - 2)),
                                   1 + static_cast<int64_t>(rng() % 300)};
        for (int64_t n : ns) CHECK(check_compile(name, *p, n, B, oracle(*p, n, B)) == "");
    }
}

TEST_CASE("large blocks: B = 128 and 256 around their edges", "[dsl][exhaustive]") {
    const std::vector<Case> cases = {
        {"window(100)", pattern_window(100, 100)},
        {"window(left = 300, right = -20)", pattern_window(300, -20)},
        {"dilated(3, 150)", pattern_dilated(3, 150)},
        {"axial(width = 40) - chunk(90)", pattern_difference(pattern_axial(40), pattern_chunk(90))},
        {"segments(every(130)) | band(1)", pattern_union(pattern_segments(token_set_every(130, 1, 800)), pattern_band(1))},
        {"!window2d(2, width = 30) & random(2)", pattern_intersect(pattern_complement(pattern_window2d(2, 30)),
                                                                    pattern_random(2, 3, 0, 0, false))},
    };
    for (const Case& c : cases) {
        for (int32_t B : {128, 256}) {
            for (int64_t n : {1, 127, 128, 129, 255, 256, 257, 700}) {
                CHECK(check_compile(c.name, *c.p, n, B, oracle(*c.p, n, B)) == "");
            }
        }
    }
}

// [SECTION] Determinism, errors, keys

TEST_CASE("compile: the same mask on 1, 2, 3 and 8 threads at n = 100,000", "[dsl][determinism]") {
    const std::vector<PatternPtr> patterns = {
        pattern_union(pattern_union(pattern_window(256, 256), pattern_global(token_set_range(0, 64))),
                      pattern_random(3, 0, 0, 0, false)),
        pattern_union(pattern_difference(pattern_dilated(20, 70), pattern_window(500, 500)),
                      pattern_segments(token_set_every(7000, 0, 100000))),
        pattern_union(pattern_intersect(pattern_window2d(3, 316), pattern_complement(pattern_axial(316))),
                      pattern_columns(token_set_every(999, 5, 100000))),
        pattern_intersect(pattern_fixed(1000, 16), pattern_causal()),
    };
    for (const auto& p : patterns) {
        const BlockMask one = pattern_compile(*p, 100000, 64, 1);
        INFO(pattern_key(*p));
        CHECK(canonical_problem(one, 100000, 64) == "");
        for (int threads : {2, 3, 8}) CHECK(pattern_compile(*p, 100000, 64, threads) == one);
    }
}

TEST_CASE("compile: errors a user can act on", "[dsl][errors]") {
    sparsa::ContentSpec spec;
    spec.buckets = 8;
    spec.rounds = 2;
    spec.chunk = 16;
    spec.seed = 1;
    const auto lsh = pattern_union(pattern_window(4, 4), pattern_content(spec));
    CHECK(pattern_is_data_dependent(*lsh));
    CHECK_FALSE(pattern_is_data_dependent(*pattern_complement(pattern_window(4, 4))));
    CHECK_THROWS_WITH(pattern_compile(*lsh, 100, 16),
                      "lsh(8, rounds = 2, chunk = 16, seed = 1) is content-based: its pairs depend on Q and K and are "
                      "realised when attention runs; it cannot be compiled on its own");
    CHECK_THROWS_AS(pattern_compile(*pattern_dense(), 0, 16), sparsa::Error);
    CHECK_THROWS_AS(pattern_compile(*pattern_dense(), 100, 48), sparsa::Error);
    CHECK_THROWS_AS(pattern_compile(*pattern_dense(), 100, 512), sparsa::Error);
    CHECK_THROWS_AS(pattern_dilated(3, 0), sparsa::Error);
    CHECK_THROWS_AS(pattern_fixed(4, 5), sparsa::Error);
    CHECK_THROWS_AS(pattern_strided(0), sparsa::Error);
    // lsh inside random's outside is refused when it is built: its blocks cannot be known without Q and K.
    CHECK_THROWS_WITH(pattern_random(2, 0, 0, 0, false, lsh), Catch::Contains("outside must be a fixed pattern; lsh(...)"));
}

TEST_CASE("pattern_key: canonical text of everything that changes the pairs", "[dsl][key]") {
    CHECK(pattern_key(*pattern_union(pattern_window(3, 3), pattern_columns(token_set_range(0, 64)))) ==
          "union(window(3,3),columns([0,64)))");
    CHECK(pattern_key(*pattern_causal()) == "causal");
    CHECK(pattern_key(*pattern_window(2, -1)) == "window(2,-1)");
    CHECK(pattern_key(*pattern_window(int64_t{1} << 62, 0)) == "causal");
    CHECK(pattern_key(*pattern_global(token_set_list({1, 2, 9}))) == "union(rows([1,3)|[9,10)),columns([1,3)|[9,10)))");
    CHECK(pattern_key(*pattern_random(3, 7, 1, 2, true)) == "random(3,seed=7,layer=1,head=2,causal_rows=1)");
    CHECK(pattern_key(*pattern_random(3, 7, 1, 2, true)) != pattern_key(*pattern_random(3, 7, 1, 2, false)));
    CHECK(pattern_key(*pattern_random(3, 7, 1, 2, true)) != pattern_key(*pattern_random(3, 8, 1, 2, true)));
    CHECK(pattern_key(*pattern_random(3, 7, 1, 2, true)) != pattern_key(*pattern_random(3, 7, 2, 1, true)));
    CHECK(pattern_key(*pattern_random(3, 7, 1, 2, false, pattern_band(1))) ==
          "random(3,seed=7,layer=1,head=2,causal_rows=0,outside=band(1))");
    CHECK(pattern_key(*pattern_random(3, 7, 1, 2, false, pattern_union(pattern_band(1), pattern_random(1, 0, 1, 2, false)))) ==
          "random(3,seed=7,layer=1,head=2,causal_rows=0,outside=union(band(1),random(1,seed=0,layer=1,head=2,causal_rows=0)))");
    CHECK(pattern_key(*pattern_random(3, 7, 1, 2, false, pattern_band(1))) !=
          pattern_key(*pattern_random(3, 7, 1, 2, false, pattern_band(2))));
    auto a = std::make_shared<const BlockMask>(pattern_compile(*pattern_window(1, 1), 100, 16, 1));
    auto b = std::make_shared<const BlockMask>(pattern_compile(*pattern_window(2, 2), 100, 16, 1));
    CHECK(pattern_key(*pattern_loaded(a, "m.npz")) != pattern_key(*pattern_loaded(b, "m.npz")));
    CHECK(pattern_key(*pattern_loaded(a, "m.npz")) == pattern_key(*pattern_loaded(a, "m.npz")));
    CHECK(pattern_key(*pattern_loaded(a, "m.npz")).rfind("load(\"m.npz\",n=100,block=16,hash=", 0) == 0);
}
