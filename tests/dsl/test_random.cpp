// random(r): the draws of random_row_blocks (distinct, sorted, uniform, keyed by seed, layer,
// head and row, pinned by golden values) and the masks compiled from them (any thread count).
#include "dsl/pattern.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <set>

using namespace sparsa::dsl;

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
