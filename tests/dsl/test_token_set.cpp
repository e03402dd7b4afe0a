// TokenSet operations checked against std::set on random inputs, plus the run invariants
// (sorted, disjoint, never touching) that the compiler relies on.
#include "dsl/pattern.hpp"
#include "dsl/script.hpp"

#include "engine/error.hpp"

#include <catch2/catch.hpp>

#include <climits>
#include <random>
#include <set>
#include <string>

using namespace sparsa::dsl;
using sparsa::MaskSet;

namespace {

std::set<int64_t> members(const TokenSet& s) {
    std::set<int64_t> out;
    for (const auto& [b, e] : s.runs) {
        for (int64_t t = b; t < e; ++t) out.insert(t);
    }
    return out;
}

// Runs must be non-empty, sorted, and separated by at least one non-member.
bool runs_canonical(const TokenSet& s) {
    for (size_t i = 0; i < s.runs.size(); ++i) {
        if (s.runs[i].first >= s.runs[i].second) return false;
        if (i > 0 && s.runs[i - 1].second >= s.runs[i].first) return false;
    }
    return true;
}

// A random set over [-5, 60) built from a mix of the constructors.
TokenSet random_set(std::mt19937_64& rng, std::set<int64_t>& reference) {
    TokenSet s;
    reference.clear();
    const int parts = static_cast<int>(rng() % 4);
    for (int part = 0; part < parts; ++part) {
        TokenSet t;
        std::set<int64_t> ref;
        switch (rng() % 3) {
        case 0: {
            int64_t b = static_cast<int64_t>(rng() % 65) - 5, e = b + static_cast<int64_t>(rng() % 20) - 3;
            t = token_set_range(b, e);
            for (int64_t x = b; x < e; ++x) ref.insert(x);
            break;
        }
        case 1: {
            int64_t p = 1 + static_cast<int64_t>(rng() % 9), o = static_cast<int64_t>(rng() % 12) - 3;
            int64_t end = static_cast<int64_t>(rng() % 70) - 5;
            int64_t w = rng() % 2 == 0 ? 1 : static_cast<int64_t>(rng() % static_cast<uint64_t>(p + 1));
            t = token_set_every(p, o, end, w);
            for (int64_t x = o; x < end; x += p) {
                for (int64_t j = 0; j < w && x + j < end; ++j) ref.insert(x + j);
            }
            break;
        }
        default: {
            std::vector<int64_t> list;
            for (int i = static_cast<int>(rng() % 12); i > 0; --i) list.push_back(static_cast<int64_t>(rng() % 65) - 5);
            t = token_set_list(list);
            ref.insert(list.begin(), list.end());
        }
        }
        s = token_set_union(s, t);
        reference.insert(ref.begin(), ref.end());
    }
    return s;
}

} // namespace

TEST_CASE("token sets: constructors", "[dsl][token_set]") {
    CHECK(token_set_range(3, 3).runs.empty());
    CHECK(token_set_range(5, 2).runs.empty());
    CHECK(token_set_range(2, 5).size() == 3);
    CHECK(token_set_every(1, 4, 10) == token_set_range(4, 10));
    CHECK(members(token_set_every(3, 1, 11)) == std::set<int64_t>{1, 4, 7, 10});
    CHECK(token_set_every(5, 7, 7).runs.empty());
    CHECK(token_set_list({5, 3, 4, 9, 9, 3}) == TokenSet{{{3, 6}, {9, 10}}});
    CHECK_THROWS_AS(token_set_every(0, 0, 10), sparsa::Error);
    const TokenSet s = token_set_list({0, 17, 99});
    CHECK(s.contains(17));
    CHECK_FALSE(s.contains(18));
    CHECK_FALSE(s.contains(-1));
    CHECK(token_set_clip(token_set_range(-4, 400), 300) == token_set_range(0, 300));
}

// every(p, offset = o, width = w) against its definition: t >= o and (t - o) % p < w, below end.
TEST_CASE("token sets: every with a width, exhaustively against the predicate", "[dsl][token_set]") {
    for (int64_t p = 1; p <= 11; ++p) {
        for (int64_t w = 0; w <= p; ++w) {
            for (int64_t o = 0; o <= 14; ++o) {
                for (int64_t end = 0; end <= 45; ++end) {
                    const TokenSet t = token_set_every(p, o, end, w);
                    std::set<int64_t> expected;
                    for (int64_t x = 0; x < end; ++x) {
                        if (x >= o && (x - o) % p < w) expected.insert(x);
                    }
                    INFO("every(" << p << ", offset = " << o << ", width = " << w << ") below " << end);
                    REQUIRE(members(t) == expected);
                    REQUIRE(runs_canonical(t));
                }
            }
        }
    }
    CHECK(token_set_every(128, 120, 1000, 8) == TokenSet{{{120, 128}, {248, 256}, {376, 384}, {504, 512},
                                                          {632, 640}, {760, 768}, {888, 896}}});
    CHECK(token_set_every(7, 3, 20, 7) == token_set_range(3, 20));  // width = period: one run
    CHECK(token_set_every(7, 3, 20, 0).runs.empty());
    CHECK(token_set_every(3, 1, 11, 1) == token_set_every(3, 1, 11));  // width 1 is the default
    CHECK_THROWS_AS(token_set_every(4, 0, 10, 5), sparsa::Error);
    CHECK_THROWS_AS(token_set_every(4, 0, 10, -1), sparsa::Error);
    // Near the top of int64: the last run is clipped to end and the loop stops without overflow.
    const int64_t big = INT64_MAX - 2;
    CHECK(token_set_every(int64_t{1} << 61, big - 5, big, 4) == TokenSet{{{big - 5, big - 1}}});
}

TEST_CASE("token sets: operations match std::set on random inputs", "[dsl][token_set]") {
    std::mt19937_64 rng(20240531);
    for (int trial = 0; trial < 3000; ++trial) {
        std::set<int64_t> ra, rb;
        const TokenSet a = random_set(rng, ra), b = random_set(rng, rb);
        INFO("trial " << trial);
        REQUIRE(runs_canonical(a));
        REQUIRE(members(a) == ra);
        CHECK(a.size() == static_cast<int64_t>(ra.size()));

        std::set<int64_t> u = ra, i, d;
        u.insert(rb.begin(), rb.end());
        for (int64_t x : ra) (rb.count(x) ? i : d).insert(x);
        const TokenSet su = token_set_union(a, b), si = token_set_intersect(a, b), sd = token_set_difference(a, b);
        CHECK(runs_canonical(su));
        CHECK(runs_canonical(si));
        CHECK(runs_canonical(sd));
        CHECK(members(su) == u);
        CHECK(members(si) == i);
        CHECK(members(sd) == d);

        const int64_t n = static_cast<int64_t>(rng() % 70);
        std::set<int64_t> clipped;
        for (int64_t x : ra) {
            if (x >= 0 && x < n) clipped.insert(x);
        }
        CHECK(members(token_set_clip(a, n)) == clipped);
        for (int64_t x = -6; x < 62; ++x) {
            if (a.contains(x) != (ra.count(x) != 0)) FAIL("contains(" << x << ") is wrong");
        }
    }
}

namespace {

MaskSet compile_text(const std::string& text, int64_t n, int32_t block = 0) {
    CompileOptions options;
    options.n = n;
    options.block = block;
    return script_compile(*script_parse(text, "test.pat"), options).masks;
}

} // namespace

// The Sparse Transformer's fixed pattern written with every(..., width = c) is fixed(l, c): the
// example file, and the prelude's sparse_transformer_fixed, compile to the masks they gave before.
TEST_CASE("every with a width: the Sparse Transformer's fixed pattern, as before", "[dsl][token_set]") {
    const std::string path = std::string(SPARSA_SOURCE_DIR) + "/examples/patterns/sparse_transformer_fixed.pat";
    const ScriptPtr example = script_load(path);
    for (int64_t n : {1, 100, 1000, 4096, 5000}) {
        CompileOptions options;
        options.n = n;
        const MaskSet got = script_compile(*example, options).masks;
        const MaskSet before = compile_text("block 64\nheads 8\nlayers 6\ncausal\nattend = fixed(128, 8)\n", n);
        REQUIRE(got.masks.size() == before.masks.size());
        for (size_t i = 0; i < got.masks.size(); ++i) CHECK(*got.masks[i] == *before.masks[i]);
    }
    const std::pair<int64_t, int64_t> lc[] = {{128, 8}, {64, 4}, {16, 0}, {16, 16}, {16, 20}, {17, 5}, {1, 1}, {100, 33}};
    for (auto [l, c] : lc) {
        for (int64_t n : {50, 300, 1000}) {
            const std::string args = std::to_string(l) + ", " + std::to_string(c);
            INFO("sparse_transformer_fixed(" << args << ") at n = " << n);
            CHECK(*compile_text("block 16\nattend = sparse_transformer_fixed(" + args + ")\n", n).masks[0] ==
                  *compile_text("block 16\nattend = fixed(" + args + ")\n", n).masks[0]);
        }
    }
}

// patterns = P: head h's summaries are the c tokens ending c * (h % P) before each block's end.
TEST_CASE("every with a width: sparse_transformer_fixed with a summary pattern per head", "[dsl][token_set]") {
    const int64_t n = 300, l = 64, c = 8, P = 4;
    const MaskSet set = compile_text("block 16\nheads 6\nattend = sparse_transformer_fixed(64, 8, patterns = 4)\n", n);
    for (int64_t h = 0; h < 6; ++h) {
        const sparsa::BlockMask& m = *set.masks[static_cast<size_t>(h)];
        for (int64_t q = 0; q < n; ++q) {
            for (int64_t k = 0; k < n; ++k) {
                const int64_t lo = l - c * (1 + h % P), hi = l - c * (h % P);
                const bool expected = q / l == k / l || (k % l >= lo && k % l < hi);
                INFO("head " << h << ", q " << q << ", k " << k);
                REQUIRE(m.allowed(q, k) == expected);
            }
        }
    }
}
