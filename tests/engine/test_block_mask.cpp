// BlockMask and MaskSet: dense conversion against allowed(), stats, the invariant checker on
// each broken rule, and sharing of equal masks.
#include "engine/block_mask.hpp"
#include "engine/error.hpp"
#include "tests/engine/mask_testing.hpp"

#include <catch2/catch.hpp>

#include <functional>

using namespace sparsa;
using Catch::Matchers::Contains;

namespace {

// n = 40, B = 16: blocks of 16, 16 and 8. Kept: (0,0) full, (0,2) one pair, (1,1) causal,
// (2,0) full, (2,2) every pair but (39, 39).
std::vector<uint8_t> handmade_dense() {
    const int64_t n = 40;
    std::vector<uint8_t> d(n * n, 0);
    auto set = [&](int64_t q, int64_t k) { d[static_cast<size_t>(q * n + k)] = 1; };
    for (int64_t q = 0; q < 16; ++q)
        for (int64_t k = 0; k < 16; ++k) set(q, k);
    set(0, 32);
    for (int64_t q = 16; q < 32; ++q)
        for (int64_t k = 16; k <= q; ++k) set(q, k);
    for (int64_t q = 32; q < 40; ++q)
        for (int64_t k = 0; k < 16; ++k) set(q, k);
    for (int64_t q = 32; q < 40; ++q)
        for (int64_t k = 32; k < 40; ++k)
            if (q != 39 || k != 39) set(q, k);
    return d;
}

BlockMask handmade() { return block_mask_from_dense(40, 16, handmade_dense().data()); }

} // namespace

TEST_CASE("block sizes are powers of two from 16 to 256", "[block_mask]") {
    for (int64_t b : {16, 32, 64, 128, 256}) CHECK(block_size_valid(b));
    for (int64_t b : {-16, 0, 1, 8, 24, 48, 100, 512, 1024}) CHECK_FALSE(block_size_valid(b));
}

TEST_CASE("from_dense builds the expected canonical arrays", "[block_mask]") {
    const BlockMask m = handmade();
    CHECK(m.row_ptr == std::vector<int64_t>{0, 2, 3, 5});
    CHECK(m.col_idx == std::vector<int32_t>{0, 2, 1, 0, 2});
    CHECK(m.partial_idx == std::vector<int32_t>{-1, 0, 1, -1, 2});
    CHECK(m.bits.size() == 3 * 4);
    CHECK(m.partial_bits(0)[0] == 1);  // query 0, key 32: bit 0 of block (0, 2)
    CHECK_NOTHROW(block_mask_validate(m, "handmade"));

    const BlockMaskStats s = block_mask_stats(m);
    CHECK(s.kept_blocks == 5);
    CHECK(s.full_blocks == 2);
    CHECK(s.partial_blocks == 3);
    CHECK(s.kept_pairs == 256 + 1 + 136 + 128 + 63);
    CHECK(s.empty_rows == 0);
    CHECK(s.first_empty_row == -1);
    CHECK(s.density == Approx(584.0 / 1600.0));
    CHECK(s.mask_bytes == 4 * 8 + 5 * 4 + 5 * 4 + 12 * 8);

    CHECK(block_valid_pairs(m, 0, 0) == 256);
    CHECK(block_valid_pairs(m, 0, 2) == 128);
    CHECK(block_valid_pairs(m, 2, 2) == 64);
}

TEST_CASE("stats count empty query rows", "[block_mask]") {
    std::vector<uint8_t> d(40 * 40, 0);
    d[0 * 40 + 32] = 1;
    d[20 * 40 + 3] = 1;
    const BlockMaskStats s = block_mask_stats(block_mask_from_dense(40, 16, d.data()));
    CHECK(s.kept_pairs == 2);
    CHECK(s.empty_rows == 38);
    CHECK(s.first_empty_row == 1);

    const BlockMask empty = block_mask_empty(40, 16);
    CHECK_NOTHROW(block_mask_validate(empty, "empty"));
    const BlockMaskStats e = block_mask_stats(empty);
    CHECK(e.kept_blocks == 0);
    CHECK(e.empty_rows == 40);
    CHECK(e.first_empty_row == 0);
    CHECK(e.density == 0.0);
    CHECK_THROWS_WITH(block_mask_empty(0, 16), Contains("n >= 1"));
    CHECK_THROWS_WITH(block_mask_empty(10, 48), Contains("block size 48"));
}

TEST_CASE("random dense masks convert exactly, at every block size", "[block_mask]") {
    uint64_t seed = 1;
    for (int32_t block : {16, 32, 64, 128, 256}) {
        for (int64_t n : {1, 5, 16, 17, 63, 64, 100, 130, 257, 300}) {
            if (n > 2 * block + 50 && block >= 128) continue;  // keep the test quick
            const std::vector<uint8_t> dense = testing::dense_random(n, block, seed++);
            const BlockMask m = block_mask_from_dense(n, block, dense.data());
            INFO("n = " << n << ", block " << block);
            REQUIRE_NOTHROW(block_mask_validate(m, "random"));
            int64_t pairs = 0, empty = 0, first_empty = -1;
            std::vector<uint8_t> row(static_cast<size_t>(n));
            bool all_match = true;
            for (int64_t q = 0; q < n; ++q) {
                block_mask_dense_row(m, q, row.data());
                int64_t in_row = 0;
                for (int64_t k = 0; k < n; ++k) {
                    const uint8_t want = dense[static_cast<size_t>(q * n + k)];
                    all_match = all_match && m.allowed(q, k) == (want != 0) && row[static_cast<size_t>(k)] == want;
                    in_row += want;
                }
                pairs += in_row;
                if (in_row == 0 && empty++ == 0) first_empty = q;
            }
            REQUIRE(all_match);
            const BlockMaskStats s = block_mask_stats(m);
            CHECK(s.kept_pairs == pairs);
            CHECK(s.empty_rows == empty);
            CHECK(s.first_empty_row == first_empty);
            CHECK(s.full_blocks + s.partial_blocks == s.kept_blocks);
            CHECK(s.partial_blocks == m.partial_blocks());
            CHECK_FALSE(m.allowed(-1, 0));
            CHECK_FALSE(m.allowed(0, n));
        }
    }
}

TEST_CASE("validate names each broken invariant", "[block_mask]") {
    struct Case {
        const char* name;
        std::function<void(BlockMask&)> damage;
        const char* message;
    };
    const std::vector<Case> cases = {
        {"n < 1", [](BlockMask& m) { m.n = 0; }, "n = 0 (a mask needs n >= 1)"},
        {"block size", [](BlockMask& m) { m.block = 48; }, "block size 48 is not valid"},
        {"row_ptr size", [](BlockMask& m) { m.row_ptr.pop_back(); }, "row_ptr has 3 entries, expected q_blocks + 1 = 4"},
        {"row_ptr start", [](BlockMask& m) { m.row_ptr[0] = 1; }, "row_ptr[0] = 1 (must be 0)"},
        {"row_ptr order", [](BlockMask& m) { m.row_ptr = {0, 3, 2, 5}; }, "query block 1: row_ptr decreases (3 then 2)"},
        {"row_ptr bound", [](BlockMask& m) { m.row_ptr = {0, 2, 6, 5}; }, "query block 1: row_ptr 6 is beyond the 5 kept blocks"},
        {"row_ptr end", [](BlockMask& m) { m.row_ptr[3] = 4; }, "row_ptr ends at 4 but there are 5 kept blocks"},
        {"partial_idx size", [](BlockMask& m) { m.partial_idx.pop_back(); }, "partial_idx has 4 entries but col_idx has 5"},
        {"bits size", [](BlockMask& m) { m.bits.push_back(0); }, "bits has 13 words, not a multiple of B * B / 64 = 4"},
        {"col_idx high", [](BlockMask& m) { m.col_idx[1] = 3; }, "query block 0: key block 3 is out of range [0, 3)"},
        {"col_idx negative", [](BlockMask& m) { m.col_idx[2] = -1; }, "query block 1: key block -1 is out of range"},
        {"col_idx order", [](BlockMask& m) { std::swap(m.col_idx[0], m.col_idx[1]); }, "query block 0: key blocks not strictly ascending (2 then 0"},
        {"col_idx twice", [](BlockMask& m) { m.col_idx[4] = 0; }, "query block 2: key blocks not strictly ascending (0 then 0"},
        {"partial_idx < -1", [](BlockMask& m) { m.partial_idx[1] = -2; }, "query block 0, key block 2: partial_idx -2 is neither -1 (full) nor one of the 3 bitmasks"},
        {"partial_idx range", [](BlockMask& m) { m.partial_idx[1] = 3; }, "partial_idx 3 is neither -1 (full) nor one of the 3 bitmasks"},
        {"partial_idx order", [](BlockMask& m) { std::swap(m.partial_idx[1], m.partial_idx[2]); }, "query block 0, key block 2: partial_idx 1 where 0 was expected"},
        {"bitmask unused", [](BlockMask& m) { m.partial_idx[4] = -1; }, "3 bitmasks but only 2 partial blocks use them"},
        {"bitmask extra", [](BlockMask& m) { m.bits.insert(m.bits.end(), 4, 1); }, "4 bitmasks but only 3 partial blocks use them"},
        {"bits beyond n", [](BlockMask& m) { m.bits[8] |= uint64_t{1} << 10; }, "query block 2, key block 2: bitmask 2 has bits set for pairs beyond n = 40"},
        {"bits beyond n (row)", [](BlockMask& m) { m.bits[8 + 2] |= uint64_t{1} << 0; }, "bitmask 2 has bits set for pairs beyond n = 40"},
        {"empty partial", [](BlockMask& m) { m.bits[0] = 0; }, "query block 0, key block 2: partial block allows no pair (canonical form: drop empty blocks)"},
        {"full partial", [](BlockMask& m) { m.bits[9] |= uint64_t{1} << 55; }, "query block 2, key block 2: partial block allows every valid pair (canonical form: mark it full, partial_idx -1)"},
    };
    for (const auto& c : cases) {
        INFO(c.name);
        BlockMask m = handmade();
        c.damage(m);
        CHECK_THROWS_AS(block_mask_validate(m, "test mask"), Error);
        CHECK_THROWS_WITH(block_mask_validate(m, "test mask"), Contains("test mask: ") && Contains(c.message));
    }
}

TEST_CASE("equal masks hash equal; dense rows of a short last block", "[block_mask]") {
    const BlockMask a = handmade(), b = handmade();
    CHECK(block_mask_hash(a) == block_mask_hash(b));
    BlockMask c = a;
    c.bits[0] = 3;
    CHECK(block_mask_hash(a) != block_mask_hash(c));
    std::vector<uint8_t> row(40);
    block_mask_dense_row(a, 39, row.data());
    CHECK(std::count(row.begin(), row.end(), uint8_t{1}) == 16 + 7);
}

TEST_CASE("mask_set_make shares equal masks by content, in first-use order", "[block_mask]") {
    auto x1 = std::make_shared<const BlockMask>(testing::mask_random(50, 16, 7));
    auto x2 = std::make_shared<const BlockMask>(testing::mask_random(50, 16, 7));  // equal content, other pointer
    auto y = std::make_shared<const BlockMask>(testing::mask_random(50, 16, 8));
    auto z = std::make_shared<const BlockMask>(block_mask_empty(50, 16));
    REQUIRE(*x1 == *x2);
    REQUIRE_FALSE(*x1 == *y);
    const MaskSet set = mask_set_make(2, 3, {y, x1, x2, z, y, x2});
    CHECK(set.n == 50);
    CHECK(set.block == 16);
    CHECK(set.masks[1] == set.masks[2]);  // one pointer now
    CHECK(set.masks[0] == set.masks[4]);
    CHECK(set.unique_masks().size() == 3);
    CHECK(set.unique_index() == std::vector<int32_t>{0, 1, 1, 2, 0, 1});
    CHECK(*set.unique_masks()[0] == *y);
    CHECK(&set.at(1, 1) == set.masks[4].get());

    // A set built by hand with equal masks behind two pointers still counts them once.
    MaskSet by_hand = set;
    by_hand.masks = {x1, x2, y, y, z, x1};
    CHECK(by_hand.unique_masks().size() == 3);
    CHECK(by_hand.unique_index() == std::vector<int32_t>{0, 0, 1, 1, 2, 0});

    CHECK_THROWS_WITH(mask_set_make(2, 2, {x1, x1, x1}), Contains("3 masks given for 2 layers x 2 heads"));
    CHECK_THROWS_WITH(mask_set_make(0, 2, {}), Contains("need at least one of each"));
    CHECK_THROWS_WITH(mask_set_make(1, 2, {x1, nullptr}), Contains("mask 1 is missing"));
    auto other = std::make_shared<const BlockMask>(block_mask_empty(50, 32));
    CHECK_THROWS_WITH(mask_set_make(1, 2, {x1, other}), Contains("mask 1 has n = 50, block 32"));
}
