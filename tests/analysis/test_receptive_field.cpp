// Receptive fields checked against brute-force boolean matrix products at every layer, in both
// directions: every example script, random mask sets and random scripts, at small n.
#include "dsl/script.hpp"
#include "engine/error.hpp"
#include "plot/plot_png.hpp"
#include "analysis/receptive_field.hpp"
#include "tests/engine/mask_testing.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <random>
#include <sstream>

using namespace sparsa;

namespace {

size_t at(int64_t i) { return static_cast<size_t>(i); }

int64_t count_ones(const std::vector<uint8_t>& v) { return std::count(v.begin(), v.end(), uint8_t{1}); }

MaskSet compile_text(const std::string& text, int64_t n, int32_t block = 0) {
    auto script = dsl::script_parse(text, "<test>");
    dsl::CompileOptions options;
    options.n = n;
    options.block = block;
    options.threads = 1;
    return dsl::script_compile(*script, options).masks;
}

MaskSet compile_file(const std::string& path, int64_t n, int32_t block = 0) {
    dsl::CompileOptions options;
    options.n = n;
    options.block = block;
    options.threads = 1;
    return dsl::script_compile(*dsl::script_load(path), options).masks;
}

// Brute force at block resolution (one node per block): node pairs linked by chains of kept
// blocks, counted in token pairs. [layers + 1] counts.
std::vector<int64_t> block_reference_counts(const MaskSet& set, int64_t layers, bool causal) {
    const int64_t nb = (set.n + set.block - 1) / set.block;
    auto size = [&](int64_t a) { return std::min<int64_t>(set.block, set.n - a * set.block); };
    std::vector<uint8_t> r(at(nb * nb), 0);
    for (int64_t a = 0; a < nb; ++a) r[at(a * nb + a)] = 1;
    auto count = [&] {
        int64_t c = 0;
        for (int64_t a = 0; a < nb; ++a) {
            for (int64_t b = 0; b < nb; ++b) {
                if (!r[at(a * nb + b)]) continue;
                c += a != b ? size(a) * size(b) : causal ? size(a) * (size(a) + 1) / 2 : size(a) * size(a);
            }
        }
        return c;
    };
    std::vector<int64_t> counts{count()};
    for (int64_t l = 1; l <= layers; ++l) {
        std::vector<uint8_t> m(at(nb * nb), 0), next(at(nb * nb), 0);
        const int64_t layer = std::min(l, set.layers) - 1;
        for (int64_t a = 0; a < nb; ++a) m[at(a * nb + a)] = 1;
        for (int64_t h = 0; h < set.heads; ++h) {
            const BlockMask& mask = set.at(layer, h);
            for (int64_t qb = 0; qb < nb; ++qb) {
                for (int64_t e = mask.row_ptr[at(qb)]; e < mask.row_ptr[at(qb) + 1]; ++e) m[at(qb * nb + mask.col_idx[at(e)])] = 1;
            }
        }
        for (int64_t a = 0; a < nb; ++a) {
            for (int64_t j = 0; j < nb; ++j) {
                if (!m[at(a * nb + j)]) continue;
                for (int64_t b = 0; b < nb; ++b) next[at(a * nb + b)] |= r[at(j * nb + b)];
            }
        }
        r.swap(next);
        counts.push_back(count());
    }
    return counts;
}

// Everything the analysis says about `set`, checked against the brute force.
void check_set(const MaskSet& set, const std::string& what, uint64_t seed = 1) {
    INFO(what << ": n = " << set.n << ", block " << set.block << ", " << set.layers << " layers x " << set.heads << " heads");
    const int64_t n = set.n, layers = set.layers;
    std::vector<std::vector<uint64_t>> seen;  // R_l rows from on_layer, l = 1..layers
    ReachOptions options;
    options.threads = 2;
    options.on_layer = [&](int64_t l, const std::vector<uint64_t>& rows, int64_t words) {
        CHECK(l == static_cast<int64_t>(seen.size()) + 1);
        CHECK(words == (n + 63) / 64);
        seen.push_back(rows);
    };
    const ReachCoverage cov = receptive_field_coverage(set, options);
    const int64_t depth = static_cast<int64_t>(cov.connected.size()) - 1;
    REQUIRE(depth >= layers);
    const auto ref = receptive_field_reference(set, depth + 1);

    // Causal sets never connect k > q, and then only k <= q counts.
    bool causal = true;
    for (int64_t q = 0; q < n; ++q) {
        for (int64_t k = q + 1; k < n; ++k) causal = causal && !ref[at(depth + 1)][at(q * n + k)];
    }
    CHECK(cov.causal == causal);  // R_l holds every pair of layers 1..l, so R tells exactly
    CHECK(cov.target_pairs == (cov.causal ? n * (n + 1) / 2 : n * n));

    // Coverage per layer, layers needed, out of reach, never.
    int64_t first_full = -1;
    for (int64_t l = 0; l <= depth; ++l) {
        CHECK(cov.connected[at(l)] == count_ones(ref[at(l)]));
        if (first_full < 0 && count_ones(ref[at(l)]) == cov.target_pairs) first_full = l;
    }
    CHECK(cov.layers_needed == first_full);
    int64_t settled = depth;
    while (settled > 0 && count_ones(ref[at(settled - 1)]) == count_ones(ref[at(depth)])) --settled;
    CHECK(cov.saturation_layers == settled);
    CHECK_FALSE(cov.stopped);
    CHECK(cov.out_of_reach == cov.target_pairs - count_ones(ref[at(layers)]));
    if (cov.layers_needed < 0) {
        CHECK(ref[at(depth + 1)] == ref[at(depth)]);  // a fixed point under the repeated last layer
        CHECK(cov.never_pairs == cov.target_pairs - count_ones(ref[at(depth)]));
        CHECK_FALSE(cov.never_reason.empty());
    } else {
        CHECK(cov.never_pairs == 0);
    }

    // The exact rows after each of the set's layers.
    REQUIRE(static_cast<int64_t>(seen.size()) == layers);
    for (int64_t l = 1; l <= layers; ++l) {
        for (int64_t q = 0; q < n; ++q) {
            for (int64_t k = 0; k < n; ++k) {
                const bool bit = (seen[at(l - 1)][at(q * ((n + 63) / 64) + k / 64)] >> (k % 64)) & 1U;
                if (bit != (ref[at(l)][at(q * n + k)] != 0)) {
                    FAIL_CHECK("layer " << l << ": R[" << q << "][" << k << "] = " << bit);
                    return;
                }
            }
        }
    }

    // One token, both directions: the sets are rows (in) and columns (out) of R_l.
    const ReachGraph graph = reach_graph_make(set);
    std::mt19937_64 rng(seed);
    for (int64_t token : {int64_t{0}, n - 1, n / 2, static_cast<int64_t>(rng() % static_cast<uint64_t>(n))}) {
        for (ReachDirection dir : {ReachDirection::in, ReachDirection::out}) {
            const TokenReach r = receptive_field_token(graph, token, dir, true);
            REQUIRE(static_cast<int64_t>(r.sizes.size()) == layers + 1);
            int64_t to_all = -1;
            for (int64_t l = 0; l <= layers; ++l) {
                int64_t size = 0;
                for (int64_t t = 0; t < n; ++t) {
                    const uint8_t want = dir == ReachDirection::in ? ref[at(l)][at(token * n + t)] : ref[at(l)][at(t * n + token)];
                    const bool got = (r.sets[at(l)][at(t / 64)] >> (t % 64)) & 1U;
                    size += want;
                    if (got != (want != 0)) {
                        FAIL_CHECK("token " << token << " " << reach_direction_name(dir) << ", layer " << l << ": position " << t);
                        return;
                    }
                }
                CHECK(r.sizes[at(l)] == size);
                if (to_all < 0 && size == n) to_all = l;
            }
            CHECK(r.layers_to_all == to_all);
        }
    }

    // Block resolution: exact on the block graph, never under token resolution.
    ReachOptions block_options;
    block_options.resolution = ReachResolution::block;
    const ReachCoverage blk = receptive_field_coverage(set, block_options);
    const int64_t block_depth = static_cast<int64_t>(blk.connected.size()) - 1;
    const auto block_ref = block_reference_counts(set, std::max(block_depth, depth) + 1, cov.causal);
    for (int64_t l = 0; l <= std::max(block_depth, depth) + 1; ++l) {
        const int64_t b = blk.connected[at(std::min(l, block_depth))];
        CHECK(b == block_ref[at(l)]);
        CHECK(b >= cov.connected[at(std::min(l, depth))]);
    }
    if (cov.layers_needed >= 0) CHECK((blk.layers_needed >= 0 && blk.layers_needed <= cov.layers_needed));
    if (blk.layers_needed < 0) CHECK(cov.layers_needed < 0);
    CHECK(blk.out_of_reach <= cov.out_of_reach);
}

// A random mask whose pairs chain slowly: a few random pairs, shifts by a small d, or sparse fill.
BlockMask mask_sparse_random(int64_t n, int32_t block, std::mt19937_64& rng) {
    std::vector<uint8_t> dense(at(n * n), 0);
    const int kind = static_cast<int>(rng() % 5);
    const int64_t d = static_cast<int64_t>(rng() % 7) - 3;
    for (int64_t q = 0; q < n; ++q) {
        for (int64_t k = 0; k < n; ++k) {
            uint8_t v = 0;
            switch (kind) {
            case 0: v = rng() % 1000 < 5; break;                          // ~0.5% of pairs
            case 1: v = k == q + d; break;                                 // a shift: a path graph
            case 2: v = k <= q && rng() % 100 < 3; break;                  // causal, sparse
            case 3: v = (k == q - 1 || k == q + 1) && rng() % 4 != 0; break;  // a broken chain
            default: v = 0; break;                                         // nothing at all
            }
            dense[at(q * n + k)] = v;
        }
    }
    return block_mask_from_dense(n, block, dense.data());
}

} // namespace

TEST_CASE("receptive field: the newest layer multiplies on the left", "[reach]") {
    // n = 3: layer 1 lets 1 attend 0, layer 2 lets 2 attend 1: after two layers 2 has seen 0.
    auto mask_of = [](std::vector<std::pair<int, int>> pairs) {
        std::vector<uint8_t> dense(9, 0);
        for (auto [q, k] : pairs) dense[at(q * 3 + k)] = 1;
        return std::make_shared<const BlockMask>(block_mask_from_dense(3, 16, dense.data()));
    };
    const MaskSet forward = mask_set_make(2, 1, {mask_of({{1, 0}}), mask_of({{2, 1}})});
    const MaskSet backward = mask_set_make(2, 1, {mask_of({{2, 1}}), mask_of({{1, 0}})});
    CHECK(receptive_field_reference(forward, 2)[2][2 * 3 + 0] == 1);
    CHECK(receptive_field_reference(backward, 2)[2][2 * 3 + 0] == 0);
    const ReachGraph g = reach_graph_make(forward), b = reach_graph_make(backward);
    CHECK(receptive_field_token(g, 2, ReachDirection::in).sizes == std::vector<int64_t>{1, 1, 3});
    CHECK(receptive_field_token(b, 2, ReachDirection::in).sizes == std::vector<int64_t>{1, 2, 2});
    CHECK(receptive_field_token(g, 0, ReachDirection::out).sizes == std::vector<int64_t>{1, 2, 3});
    CHECK(receptive_field_token(b, 0, ReachDirection::out).sizes == std::vector<int64_t>{1, 1, 2});
    check_set(forward, "forward");
    check_set(backward, "backward");
    CHECK_THROWS_WITH(receptive_field_token(g, 3, ReachDirection::in), Catch::Contains("use 0 to 2"));
}

TEST_CASE("receptive field: union and transpose keep exactly the pairs", "[reach]") {
    for (int32_t block : {16, 32, 64, 128, 256}) {
        for (int64_t n : {int64_t{1}, int64_t{70}, int64_t{200}, int64_t{257}, int64_t{600}}) {
            INFO("n = " << n << ", block " << block);
            const BlockMask a = testing::mask_random(n, block, 11 * static_cast<uint64_t>(n) + block);
            const BlockMask b = testing::mask_random(n, block, 13 * static_cast<uint64_t>(n) + block + 1);
            const BlockMask u = block_mask_union({&a, &b});
            const BlockMask t = block_mask_transpose(a);
            block_mask_validate(u, "union");
            block_mask_validate(t, "transpose");
            CHECK(block_mask_transpose(t) == a);
            bool ok = true;
            for (int64_t q = 0; q < n && ok; ++q) {
                for (int64_t k = 0; k < n && ok; ++k) {
                    ok = u.allowed(q, k) == (a.allowed(q, k) || b.allowed(q, k)) && t.allowed(k, q) == a.allowed(q, k);
                }
            }
            CHECK(ok);
        }
    }
}

TEST_CASE("receptive field: every example, both directions, every layer", "[reach]") {
    const std::filesystem::path dir = std::filesystem::path(SPARSA_SOURCE_DIR) / "examples" / "patterns";
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
        if (entry.path().extension() == ".pat") files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    REQUIRE(files.size() >= 10);
    for (const auto& file : files) {
        dsl::CompileOptions with_content;
        with_content.n = 200;
        with_content.threads = 1;
        with_content.content = true;
        if (!dsl::script_compile(*dsl::script_load(file.string()), with_content).masks.content.empty()) {
            // lsh, anchors, favor: pairs come from Q and K, so there is no receptive field before
            // the input; reach's compile (fixed patterns only) refuses them, saying why
            CHECK_THROWS_WITH(compile_file(file.string(), 200), Catch::Contains("needs every pair beforehand"));
            continue;
        }
        check_set(compile_file(file.string(), 200), file.filename().string());
        check_set(compile_file(file.string(), 257, 16), file.filename().string() + " (block 16)");
        check_set(compile_file(file.string(), 513, 32), file.filename().string() + " (block 32)");
    }
}

TEST_CASE("receptive field: random mask sets", "[reach]") {
    std::mt19937_64 rng(2024);
    for (int round = 0; round < 150; ++round) {
        const int32_t block = int32_t{16} << (rng() % 5);
        const int64_t n = std::vector<int64_t>{1, 2, 17, 64, 100, 150}[rng() % 6];
        const int64_t layers = 1 + static_cast<int64_t>(rng() % 5), heads = 1 + static_cast<int64_t>(rng() % 3);
        std::vector<std::shared_ptr<const BlockMask>> masks;
        for (int64_t i = 0; i < layers * heads; ++i) {
            if (i > 0 && rng() % 3 == 0) {
                masks.push_back(masks[at(static_cast<int64_t>(rng() % static_cast<uint64_t>(i)))]);  // a repeat
            } else if (rng() % 4 == 0) {
                masks.push_back(std::make_shared<const BlockMask>(testing::mask_random(n, block, rng())));
            } else {
                masks.push_back(std::make_shared<const BlockMask>(mask_sparse_random(n, block, rng)));
            }
        }
        check_set(mask_set_make(layers, heads, std::move(masks)), "random set " + std::to_string(round), rng());
    }
}

TEST_CASE("receptive field: random scripts", "[reach]") {
    std::mt19937_64 rng(7);
    auto pick = [&](int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1)); };
    auto primitive = [&]() -> std::string {
        switch (pick(0, 8)) {
        case 0: return "window(" + std::to_string(pick(0, 20)) + ")";
        case 1: return "window(left = " + std::to_string(pick(0, 9)) + ", right = " + std::to_string(pick(0, 3)) + ")";
        case 2: return "dilated(" + std::to_string(pick(1, 4)) + ", " + std::to_string(pick(1, 9)) + ")";
        case 3: return "strided(" + std::to_string(pick(2, 70)) + ")";
        case 4: return "global(first(" + std::to_string(pick(0, 3)) + "))";
        case 5: return "random(" + std::to_string(pick(1, 2)) + ", seed = " + std::to_string(pick(0, 99)) + ")";
        case 6: return "chunk(" + std::to_string(pick(1, 60)) + ")";
        case 7: return "columns({" + std::to_string(pick(0, 150)) + "})";
        default: return "window(" + std::to_string(pick(1, 6)) + ") - window(0)";
        }
    };
    for (int round = 0; round < 100; ++round) {
        std::ostringstream text;
        const int64_t layers = pick(1, 6);
        text << "block " << (16 << pick(0, 2)) << "\nheads " << pick(1, 3) << "\nlayers " << layers << "\n";
        if (pick(0, 3) == 0) text << "causal\n";
        text << "attend = " << primitive() << (pick(0, 1) ? " | " + primitive() : "") << "\n";
        if (pick(0, 1)) text << "attend[layer " << pick(0, layers - 1) << "] = " << primitive() << "\n";
        if (pick(0, 2) == 0) text << "attend[head 0] = " << primitive() << "\n";
        const int64_t n = pick(1, 160);
        check_set(compile_text(text.str(), n), "script:\n" + text.str(), rng());
    }
}

TEST_CASE("receptive field: window(32) over 24 layers at n = 8192 needs 256", "[reach]") {
    const int64_t n = 8192;
    const MaskSet set = compile_text("layers 24\nattend = window(32)\n", n);
    const ReachWarning w = receptive_field_unreached(set);
    const ReachCoverage& c = w.coverage;
    CHECK(c.resolution == ReachResolution::token);
    // After l layers, q has seen exactly the keys with |q - k| <= 32 l: connected pairs in closed form.
    auto pairs_within = [&](int64_t d) {
        int64_t s = 0;
        for (int64_t q = 0; q < n; ++q) s += std::min(n - 1, q + d) - std::max<int64_t>(0, q - d) + 1;
        return s;
    };
    REQUIRE(c.connected.size() == 257);
    for (int64_t l = 0; l <= 256; ++l) CHECK(c.connected[at(l)] == pairs_within(32 * l));
    CHECK(c.layers_needed == 256);  // 32 * 256 >= 8191 > 32 * 255
    CHECK(c.out_of_reach == n * n - pairs_within(32 * 24));
    CHECK(w.warn);
    CHECK(w.message.find("within 24 layers") != std::string::npos);
    CHECK(w.message.find("it would need 256 layers; token resolution") != std::string::npos);

    const TokenReach r = receptive_field_token(reach_graph_make(set), 0, ReachDirection::out);
    for (int64_t l = 0; l <= 24; ++l) CHECK(r.sizes[at(l)] == 32 * l + 1);
    const TokenReach mid = receptive_field_token(reach_graph_make(set), 4000, ReachDirection::in);
    for (int64_t l = 0; l <= 24; ++l) CHECK(mid.sizes[at(l)] == 64 * l + 1);

    // Block resolution (64-token blocks link their neighbours): fewer layers, never more.
    ReachOptions options;
    options.resolution = ReachResolution::block;
    const ReachCoverage b = receptive_field_coverage(set, options);
    CHECK(b.layers_needed == 127);
    for (int64_t l = 0; l <= 256; ++l) CHECK(b.connected[at(std::min<int64_t>(l, 127))] >= c.connected[at(l)]);

    // A bound on the layers: stopped while still connecting, the counts so far unchanged.
    ReachOptions capped;
    capped.max_layers = 30;
    const ReachCoverage s = receptive_field_coverage(set, capped);
    CHECK(s.stopped);
    CHECK(s.layers_needed == -1);
    REQUIRE(s.connected.size() == 31);
    for (int64_t l = 0; l <= 30; ++l) CHECK(s.connected[at(l)] == c.connected[at(l)]);
    const ReachWarning slow = receptive_field_unreached(compile_text("layers 2\nattend = window(1)\n", n));
    CHECK(slow.warn);
    CHECK(slow.message.find("(more than 514 layers would be needed; token resolution)") != std::string::npos);
}

TEST_CASE("receptive field: the warning says why pairs never connect", "[reach]") {
    // Two documents that never see each other, each needing 10 layers of window(10).
    const MaskSet docs = compile_text("layers 3\nattend = window(10) & chunk(100)\n", 200);
    ReachWarning w = receptive_field_unreached(docs);
    CHECK(w.warn);
    CHECK(w.coverage.never_pairs == 2 * 100 * 100);
    CHECK(w.coverage.saturation_layers == 10);
    CHECK(w.message.find("for lack of layers: 10 layers would connect those; the other 50.0% never connect: "
                         "query 0 never sees key 100: no chain") != std::string::npos);
    // Enough layers for all that ever connects: no warning, though the documents stay apart.
    CHECK_FALSE(receptive_field_unreached(compile_text("layers 10\nattend = window(10) & chunk(100)\n", 200)).warn);
    const ReachCoverage blind = receptive_field_coverage(compile_text("layers 2\nattend = global(first(1)) - rows({5})\n", 64));
    CHECK(blind.never_reason == "1 query attends no key but itself in any layer (e.g. query 5)");
    const ReachCoverage unseen = receptive_field_coverage(compile_text("attend = window(1) - columns({3})\n", 64));
    CHECK(unseen.never_reason.find("1 key is attended by no other query in any layer (e.g. key 3)") != std::string::npos);
    const MaskSet connected = compile_text("layers 2\nattend = window(1) | global(first(1))\n", 9000);
    w = receptive_field_unreached(connected);  // block resolution: connected, so no warning
    CHECK(w.coverage.resolution == ReachResolution::block);
    CHECK_FALSE(w.warn);
    const MaskSet causal = compile_text("layers 2\ncausal\nattend = dense\n", 300);
    CHECK_FALSE(receptive_field_unreached(causal).warn);  // k > q is not a pair a causal model can connect
    CHECK(receptive_field_coverage(causal).layers_needed == 1);
}

TEST_CASE("plot: a PNG with axes, text and the curve", "[reach][plot]") {
    Plot p;
    p.title = "coverage: window(32), n = 8192";
    p.x_label = "layer";
    p.y_label = "pairs connected";
    p.x_max = 10;
    p.x_integer = true;
    p.y_percent = true;
    p.series.push_back({"token resolution", {0, 5, 10}, {0, 0.5, 1}, 0xd62728});
    p.markers.push_back({4, "layers 4"});
    const std::vector<uint8_t> rgb = plot_render(p, 400, 300);
    REQUIRE(rgb.size() == 400u * 300u * 3u);
    CHECK(rgb[0] == 255);  // background in the corner
    int64_t red = 0, dark = 0;
    for (size_t i = 0; i < rgb.size(); i += 3) {
        red += rgb[i] == 0xd6 && rgb[i + 1] == 0x27 && rgb[i + 2] == 0x28;
        dark += rgb[i] < 0x50 && rgb[i + 1] < 0x50 && rgb[i + 2] < 0x50;
    }
    CHECK(red > 300);    // the curve and its legend square
    CHECK(dark > 1000);  // axes and text
    const std::vector<uint8_t> png = plot_png_encode(p, 400, 300);
    REQUIRE(png.size() > 8);
    CHECK(png[1] == 'P');
    CHECK(png[2] == 'N');
    CHECK(png[3] == 'G');
    CHECK_THROWS_WITH(plot_render(p, 10, 10), Catch::Contains("use 200 to 8192 wide"));
}
