// random(r): the draws of random_row_blocks (distinct, sorted, uniform, keyed by seed, layer,
// head and row, pinned by golden values) and the masks compiled from them (any thread count);
// random(r, outside = P): exactly min(r, candidates) new blocks per row, and the BigBird example.
#include "dsl/pattern.hpp"
#include "dsl/script.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <set>
#include <string>

using namespace sparsa::dsl;

namespace {

std::vector<int32_t> row_blocks(const sparsa::BlockMask& m, int64_t qb) {
    return {m.col_idx.begin() + m.row_ptr[static_cast<size_t>(qb)], m.col_idx.begin() + m.row_ptr[static_cast<size_t>(qb) + 1]};
}

// Per query block row: how many key blocks `with` keeps that `base` does not (-1 when `with`
// drops a block of base).
std::vector<int64_t> new_blocks_per_row(const sparsa::BlockMask& with, const sparsa::BlockMask& base) {
    std::vector<int64_t> out;
    for (int64_t qb = 0; qb < with.q_blocks(); ++qb) {
        const auto a = row_blocks(with, qb), b = row_blocks(base, qb);
        out.push_back(std::includes(a.begin(), a.end(), b.begin(), b.end())
                          ? static_cast<int64_t>(a.size()) - static_cast<int64_t>(b.size()) : -1);
    }
    return out;
}

} // namespace

TEST_CASE("random_row_blocks: r distinct sorted blocks in range", "[dsl][random]") {
    for (int64_t available : {1, 2, 3, 5, 8, 17, 100, 1000, 100000}) {
        for (int64_t r : {0, 1, 2, 3, 4, 7, 50, 99, 999}) {
            for (int64_t qb = 0; qb < 20; ++qb) {
                const auto drawn = random_row_blocks(7, 1, 2, qb, available, r);
                INFO("available " << available << ", r " << r << ", qb " << qb);
                REQUIRE(static_cast<int64_t>(drawn.size()) == std::min(available, r));
                REQUIRE(std::is_sorted(drawn.begin(), drawn.end()));
                REQUIRE(std::adjacent_find(drawn.begin(), drawn.end()) == drawn.end());
                if (!drawn.empty()) REQUIRE((drawn.front() >= 0 && drawn.back() < available));
                if (available <= r) {
                    for (int64_t i = 0; i < available; ++i) REQUIRE(drawn[static_cast<size_t>(i)] == i);
                }
            }
        }
    }
    CHECK(random_row_blocks(1, 0, 0, 0, 0, 3).empty());
    CHECK(random_row_blocks(1, 0, 0, 0, 10, 0).empty());
}

TEST_CASE("random_row_blocks: golden values (identical on every machine)", "[dsl][random]") {
    using V = std::vector<int32_t>;
    CHECK(random_row_blocks(0, 0, 0, 0, 16384, 3) == V{13472, 15312, 15605});
    CHECK(random_row_blocks(7, 0, 0, 5, 100, 3) == V{28, 32, 53});
    CHECK(random_row_blocks(7, 2, 3, 5, 100, 3) == V{23, 56, 83});
    CHECK(random_row_blocks(123456789, 5, 1, 1000, 1001, 4) == V{358, 424, 571, 802});
    CHECK(random_row_blocks(42, 0, 0, 9, 10, 8) == V{0, 1, 2, 3, 4, 5, 6, 8});  // draws the 2 left out
}

TEST_CASE("random_row_blocks: seeds, layers, heads and rows change the draw", "[dsl][random]") {
    // With 3 of 1000 blocks, two independent draws coincide with probability ~1e-8.
    int same_seed = 0, same_layer = 0, same_head = 0, same_row = 0;
    for (int64_t qb = 0; qb < 200; ++qb) {
        const auto base = random_row_blocks(1, 0, 0, qb, 1000, 3);
        same_seed += base == random_row_blocks(2, 0, 0, qb, 1000, 3);
        same_layer += base == random_row_blocks(1, 1, 0, qb, 1000, 3);
        same_head += base == random_row_blocks(1, 0, 1, qb, 1000, 3);
        same_row += base == random_row_blocks(1, 0, 0, qb + 1, 1000, 3);
        REQUIRE(base == random_row_blocks(1, 0, 0, qb, 1000, 3));  // and a key repeats its draw
    }
    CHECK(same_seed == 0);
    CHECK(same_layer == 0);
    CHECK(same_head == 0);
    CHECK(same_row == 0);
    // Layer and head are not interchangeable.
    CHECK(random_row_blocks(1, 2, 3, 0, 1000, 3) != random_row_blocks(1, 3, 2, 0, 1000, 3));
}

TEST_CASE("random_row_blocks: roughly uniform", "[dsl][random]") {
    // Each block is kept with probability r / available; chi-square over the blocks with
    // available - 1 degrees of freedom has mean 19 here; 60 is beyond the 1e-5 tail.
    const int64_t available = 20, r = 3, rows = 20000;
    std::vector<int64_t> count(available, 0);
    for (int64_t qb = 0; qb < rows; ++qb) {
        for (int32_t kb : random_row_blocks(99, 0, 0, qb, available, r)) ++count[static_cast<size_t>(kb)];
    }
    const double expected = double(rows) * r / available;
    double chi2 = 0;
    for (int64_t c : count) chi2 += (c - expected) * (c - expected) / expected;
    CHECK(chi2 < 60.0);

    // The complement path (r > available / 2) is uniform too.
    std::vector<int64_t> count_many(available, 0);
    for (int64_t qb = 0; qb < rows; ++qb) {
        for (int32_t kb : random_row_blocks(99, 0, 0, qb, available, 17)) ++count_many[static_cast<size_t>(kb)];
    }
    const double expected_many = double(rows) * 17 / available;
    double chi2_many = 0;
    for (int64_t c : count_many) chi2_many += (c - expected_many) * (c - expected_many) / expected_many;
    CHECK(chi2_many < 60.0);
}

TEST_CASE("random: compiled masks keep the drawn blocks, causal rows stay causal", "[dsl][random]") {
    const int64_t n = 5000;
    const int32_t B = 32;
    const int64_t K = (n + B - 1) / B;
    for (bool causal : {false, true}) {
        const auto p = pattern_random(3, 11, 1, 2, causal);
        const sparsa::BlockMask m = pattern_compile(*p, n, B, 1);
        REQUIRE(static_cast<int64_t>(m.row_ptr.size()) == K + 1);
        CHECK(m.partial_blocks() == 0);  // whole blocks: never partial
        for (int64_t qb = 0; qb < K; ++qb) {
            std::vector<int32_t> kept(m.col_idx.begin() + m.row_ptr[qb], m.col_idx.begin() + m.row_ptr[qb + 1]);
            INFO("causal " << causal << ", qb " << qb);
            REQUIRE(kept == random_row_blocks(11, 1, 2, qb, causal ? qb + 1 : K, 3));
            if (causal) REQUIRE((kept.empty() || kept.back() <= qb));
        }
    }
}

TEST_CASE("random: same mask across runs and thread counts", "[dsl][random]") {
    const auto p = pattern_union(pattern_random(3, 5, 0, 7, false), pattern_random(2, 6, 1, 0, true));
    const sparsa::BlockMask first = pattern_compile(*p, 100000, 64, 1);
    CHECK(first.kept_blocks() > 0);
    for (int threads : {1, 2, 3, 8}) {
        INFO("threads " << threads);
        CHECK(pattern_compile(*p, 100000, 64, threads) == first);
    }
}

TEST_CASE("random_row_blocks_outside: the plain draw, mapped onto the candidates", "[dsl][random]") {
    using V = std::vector<int32_t>;
    // Candidates of 0..9 without {0, 1, 4, 5, 6}: 2, 3, 7, 8, 9. Taken blocks past `available` count for nothing.
    const std::vector<std::pair<int64_t, int64_t>> taken = {{0, 2}, {4, 7}, {10, 14}, {40, 41}};
    const V candidates = {2, 3, 7, 8, 9};
    for (int64_t r : {0, 1, 2, 3, 4, 5, 9}) {
        V expected;
        for (int32_t i : random_row_blocks(3, 1, 4, 17, 5, r)) expected.push_back(candidates[static_cast<size_t>(i)]);
        CHECK(random_row_blocks_outside(3, 1, 4, 17, 10, r, taken) == expected);
    }
    CHECK(random_row_blocks_outside(3, 1, 4, 17, 10, 9, taken) == candidates);  // fewer than r: all
    CHECK(random_row_blocks_outside(3, 1, 4, 17, 10, 3, {}) == random_row_blocks(3, 1, 4, 17, 10, 3));
    CHECK(random_row_blocks_outside(3, 1, 4, 17, 4, 3, {{0, 4}}).empty());  // no candidate
    CHECK(random_row_blocks_outside(3, 1, 4, 17, 4, 9, {{1, 2}, {3, 9}}) == V{0, 2});
}

// P | random(r, outside = P) keeps, on every row, P's blocks and exactly min(r, candidates) more,
// the candidates being the row's blocks (kb <= qb under causal) that P does not keep.
TEST_CASE("random outside: exactly min(r, candidates) new blocks on every row", "[dsl][random]") {
    const int64_t n = 5000;
    const int32_t B = 32;
    const int64_t K = (n + B - 1) / B;
    const std::vector<PatternPtr> outsides = {
        pattern_empty(), pattern_dense(), pattern_window(100, 100), pattern_dilated(3, 300),
        pattern_segments(token_set_every(700, 0, n)), pattern_axial(71),
        pattern_union(pattern_band(0), pattern_global(token_set_every(999, 5, n, 40))),
        pattern_complement(pattern_band(3)), pattern_window(-1, 5),
    };
    for (const auto& outside : outsides) {
        for (bool causal : {false, true}) {
            for (int64_t r : {1, 3, 7}) {
                const PatternPtr P = causal ? pattern_intersect(outside, pattern_causal()) : outside;
                const sparsa::BlockMask base = pattern_compile(*P, n, B, 2);
                const sparsa::BlockMask with = pattern_compile(*pattern_union(P, pattern_random(r, 4, 0, 1, causal, P)), n, B, 2);
                const std::vector<int64_t> gained = new_blocks_per_row(with, base);
                for (int64_t qb = 0; qb < K; ++qb) {
                    const auto kept = row_blocks(base, qb);
                    const int64_t available = causal ? qb + 1 : K;
                    const auto taken = std::count_if(kept.begin(), kept.end(), [&](int32_t kb) { return kb < available; });
                    INFO(pattern_key(*P) << ", r = " << r << ", row " << qb);
                    REQUIRE(gained[static_cast<size_t>(qb)] == std::min<int64_t>(r, available - taken));
                }
            }
        }
    }
}

TEST_CASE("random outside: the BigBird example gains exactly 3 new blocks on every non-global row", "[dsl][random][bigbird]") {
    const ScriptPtr example = script_load(std::string(SPARSA_SOURCE_DIR) + "/examples/patterns/bigbird.pat");
    // Its sliding and global blocks alone, and the draw before `outside` (anywhere in the row).
    const std::string head = "block 64\nheads 8\nlayers 6\n";
    const ScriptPtr local = script_parse(head + "attend = band(1) | global(first(2 * B))\n", "local.pat");
    const ScriptPtr anywhere = script_parse(head + "attend = band(1) | global(first(2 * B)) | random(3, seed = 7)\n", "anywhere.pat");
    for (int64_t n : {4096, 1000, 16384}) {
        CompileOptions options;
        options.n = n;
        const Compiled with = script_compile(*example, options), base = script_compile(*local, options),
                       before = script_compile(*anywhere, options);
        const int64_t K = (n + 63) / 64;
        REQUIRE(with.masks.layers * with.masks.heads == 48);
        int64_t added = 0, added_before = 0, rows_short_before = 0;
        for (int64_t i = 0; i < 48; ++i) {
            const auto gained = new_blocks_per_row(*with.masks.masks[static_cast<size_t>(i)], *base.masks.masks[0]);
            const auto gained_before = new_blocks_per_row(*before.masks.masks[static_cast<size_t>(i)], *base.masks.masks[0]);
            for (int64_t qb = 0; qb < K; ++qb) {
                INFO("n = " << n << ", (layer, head) " << i / 8 << ", " << i % 8 << ", query block " << qb);
                REQUIRE(gained[static_cast<size_t>(qb)] == (qb < 2 ? 0 : 3));  // the global rows keep every block already
                added += gained[static_cast<size_t>(qb)];
                if (qb >= 2) {
                    added_before += gained_before[static_cast<size_t>(qb)];
                    rows_short_before += gained_before[static_cast<size_t>(qb)] < 3;
                }
            }
        }
        CHECK(added == 48 * (K - 2) * 3);
        // Before, draws that fell on the band or the globals added nothing: rows gained fewer.
        CHECK(rows_short_before > 0);
        CHECK(added_before < added);
        // The figures of the change, pinned (the draw is the same on every machine).
        const std::map<int64_t, std::pair<int64_t, int64_t>> figures_before = {
            {4096, {8224, 671}}, {1000, {1422, 443}}, {16384, {35865, 703}}};
        CHECK(std::make_pair(added_before, rows_short_before) == figures_before.at(n));
    }
}
