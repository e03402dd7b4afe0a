// The files of content-based heads (io/content_files.hpp): anchors files written and read back,
// .npy rotations, content_files_load for a mask set's specs (relative paths against the script's
// folder), and each bad file refused with its path and what to do.
#include "io/content_files.hpp"

#include "engine/content/buckets.hpp"
#include "engine/content/content_attention.hpp"
#include "engine/content/random_numbers.hpp"
#include "engine/error.hpp"
#include "io/npy.hpp"
#include "io/npz.hpp"
#include "tests/engine/content/content_testing.hpp"
#include "tests/engine/mask_testing.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

using namespace sparsa;
using namespace sparsa::testing;
using Catch::Matchers::Contains;

namespace {

ContentArray unit_rows(int64_t rounds, int64_t k, int64_t d, uint64_t seed) {
    ContentArray a{"", {rounds, k, d}, random_normals(seed, 0, 0, 0, rounds * k * d)};
    for (int64_t r = 0; r < rounds * k; ++r) {
        double norm = 0;
        for (int64_t t = 0; t < d; ++t) norm += double{a.values[static_cast<size_t>(r * d + t)]} * a.values[static_cast<size_t>(r * d + t)];
        for (int64_t t = 0; t < d; ++t) a.values[static_cast<size_t>(r * d + t)] /= static_cast<float>(std::sqrt(norm));
    }
    return a;
}

void write_npz(const std::string& path, const std::vector<std::pair<std::string, NpyArray>>& members) {
    NpzWriter out(path);
    for (const auto& [name, array] : members) out.add(name, array);
    out.commit();
}

NpyArray text_array(const std::string& text) {
    return npy_array_make<uint8_t>({static_cast<int64_t>(text.size())}, std::vector<uint8_t>(text.begin(), text.end()));
}

} // namespace

TEST_CASE("anchors files: written and read back (values, header), and used by content_attention through content_files_load", "[content][files]") {
    TempDir dir;
    const ContentArray a = unit_rows(2, 5, 8, 3);
    AnchorsInfo info;
    info.q_shape = {1, 2, 50, 8};
    info.k_shape = {1, 2, 50, 8};
    info.rows = 200;
    info.seed = 9;
    info.iterations = 4;
    info.mean_cosine = {0.5, 0.25};
    anchors_save(dir.file("a.npz"), a, info);
    AnchorsInfo back;
    const ContentArray loaded = anchors_load(dir.file("a.npz"), &back);
    CHECK(loaded.shape == a.shape);
    CHECK(loaded.values == a.values);
    CHECK(loaded.path == dir.file("a.npz"));
    CHECK(back.q_shape == info.q_shape);
    CHECK(back.rows == 200);
    CHECK(back.seed == 9);
    CHECK(back.iterations == 4);
    CHECK(back.mean_cosine == info.mean_cosine);

    // A mask set naming the anchors file (relative: taken against the folder) and a rotations file.
    std::vector<float> rot = random_normals(1, 0, 1, 0, 8 * 2);
    npy_save(npy_array_make<float>({1, 8, 2}, rot), dir.file("rot.npy"));
    const int64_t n = 60;
    const MaskSet set = set_with_content({block_mask_empty(n, 16), block_mask_empty(n, 16)},
                                         {spec_make(ContentKind::anchors, 5, 2, 16, false, 0, true, "a.npz"),
                                          spec_make(ContentKind::lsh, 4, 1, 16, false, 0, true, dir.file("rot.npy"))});
    const ContentArrays arrays = content_files_load(set, dir.file(""));
    REQUIRE(arrays.size() == 2);
    CHECK(arrays.at("a.npz").values == a.values);
    CHECK(arrays.at(dir.file("rot.npy")).values == rot);
    CHECK(arrays.at(dir.file("rot.npy")).shape == std::vector<int64_t>{1, 8, 2});
    const TensorShape shape{1, 2, n, 8};
    ContentOptions options;
    options.arrays = &arrays;
    check_against_reference(tensor_random(shape, 1), tensor_random(shape, 2), tensor_random(shape, 3), tensor_random(shape, 4),
                            set, options);
    // The file's rotation is the one used: the seed's numbers for head 1 give the same attention.
    const MaskSet seeded = set_with_content({block_mask_empty(n, 16), block_mask_empty(n, 16)},
                                            {spec_make(ContentKind::anchors, 5, 2, 16, false, 0, true, "a.npz"),
                                             spec_make(ContentKind::lsh, 4, 1, 16, false, 1)});
    CHECK(content_attention_forward(tensor_random(shape, 1), tensor_random(shape, 2), tensor_random(shape, 3), set, 0, options).o.data ==
          content_attention_forward(tensor_random(shape, 1), tensor_random(shape, 2), tensor_random(shape, 3), seeded, 0, options).o.data);
}

TEST_CASE("bad content files are refused naming the path: not anchors, newer version, bad JSON, not unit rows, float64, NaN, missing", "[content][files]") {
    TempDir dir;
    const ContentArray a = unit_rows(1, 3, 4, 1);
    const NpyArray good = npy_array_make<float>(a.shape, a.values);
    const std::string header = R"({"format": "sparsa-anchors", "version": 1})";
    write_npz(dir.file("no_header.npz"), {{"anchors", good}});
    CHECK_THROWS_WITH(anchors_load(dir.file("no_header.npz")), Contains("no_header.npz: not a sparsa anchors file") && Contains("sparsa anchors fit"));
    write_npz(dir.file("other.npz"), {{"header", text_array(R"({"format": "sparsa-masks", "version": 1})")}, {"anchors", good}});
    CHECK_THROWS_WITH(anchors_load(dir.file("other.npz")), Contains("other.npz: not a sparsa anchors file"));
    write_npz(dir.file("newer.npz"), {{"header", text_array(R"({"format": "sparsa-anchors", "version": 2})")}, {"anchors", good}});
    CHECK_THROWS_WITH(anchors_load(dir.file("newer.npz")), Contains("newer sparsa") && Contains("version 2"));
    write_npz(dir.file("json.npz"), {{"header", text_array("{not json")}, {"anchors", good}});
    CHECK_THROWS_WITH(anchors_load(dir.file("json.npz")), Contains("json.npz: 'header' is not valid JSON"));
    std::vector<float> twice = a.values;
    for (float& x : twice) x *= 2;
    write_npz(dir.file("norm.npz"), {{"header", text_array(header)}, {"anchors", npy_array_make<float>(a.shape, twice)}});
    CHECK_THROWS_WITH(anchors_load(dir.file("norm.npz")), Contains("anchor [0, 0] has norm 2") && Contains("unit rows"));
    write_npz(dir.file("f64.npz"), {{"header", text_array(header)}, {"anchors", npy_array_make<double>(a.shape, std::vector<double>(a.values.begin(), a.values.end()))}});
    CHECK_THROWS_WITH(anchors_load(dir.file("f64.npz")), Contains("float64") && Contains("astype(numpy.float32)"));
    write_npz(dir.file("rank2.npz"), {{"header", text_array(header)}, {"anchors", npy_array_make<float>({3, 4}, a.values)}});
    CHECK_THROWS_WITH(anchors_load(dir.file("rank2.npz")), Contains("[3, 4]") && Contains("[rounds, k, d]"));
    std::vector<float> nan = a.values;
    nan[5] = NAN;
    npy_save(npy_array_make<float>({3, 4}, nan), dir.file("nan.npy"));
    CHECK_THROWS_WITH(content_npy_load(dir.file("nan.npy")), Contains("nan.npy") && Contains("NaN or Inf"));
    const MaskSet set = set_with_content({block_mask_empty(20, 16)}, {spec_make(ContentKind::lsh, 4, 1, 16, false, 0, true, "gone.npy")});
    CHECK_THROWS_WITH(content_files_load(set, dir.file("")), Contains("gone.npy"));
}
