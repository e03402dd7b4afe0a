// TokenSet operations checked against std::set on random inputs, plus the run invariants
// (sorted, disjoint, never touching) that the compiler relies on.
#include "dsl/pattern.hpp"

#include "engine/error.hpp"

#include <catch2/catch.hpp>

#include <random>
#include <set>

using namespace sparsa::dsl;

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
            t = token_set_every(p, o, end);
            for (int64_t x = o; x < end; x += p) ref.insert(x);
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
