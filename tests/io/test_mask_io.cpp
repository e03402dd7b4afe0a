// Files: CRC-32, .npy and .npz round trips (and numpy's own files), atomic writes, and mask sets
// saved and loaded exactly; damaged files (cut short, flipped bytes, foreign) give clean errors.
//
// Index: [SECTION] helpers, CRC-32, npy, atomic writes, npz, mask sets, damaged mask files,
//        content-based heads
#include "io/atomic_file.hpp"
#include "engine/error.hpp"
#include "io/mask_io.hpp"
#include "io/npy.hpp"
#include "io/npz.hpp"
#include "tests/engine/mask_testing.hpp"

#include <catch2/catch.hpp>

#include <array>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>

using namespace sparsa;
using Catch::Matchers::Contains;
using sparsa::testing::file_bytes;
using sparsa::testing::file_put;
using sparsa::testing::TempDir;

// [SECTION] helpers

namespace {

const std::string kData = std::string(SPARSA_TEST_DIR) + "/io/data/";

// layers x heads masks drawn from `distinct` random ones, so some are shared.
MaskSet random_set(int64_t n, int32_t block, int64_t layers, int64_t heads, int64_t distinct, uint64_t seed) {
    std::vector<std::shared_ptr<const BlockMask>> pool, masks;
    for (int64_t i = 0; i < distinct; ++i) {
        pool.push_back(std::make_shared<const BlockMask>(testing::mask_random(n, block, seed * 131 + static_cast<uint64_t>(i))));
    }
    for (int64_t i = 0; i < layers * heads; ++i) masks.push_back(pool[static_cast<size_t>((i * 7 + static_cast<int64_t>(seed)) % distinct)]);
    MaskSet set = mask_set_make(layers, heads, masks);
    set.script_name = "random.pat";
    set.script_text = "# caf\u00e9 \u2713\nattend = random(seed=" + std::to_string(seed) + ")\n";
    set.params = {{"seed", std::to_string(seed)}, {"z_first", "1"}, {"a_second", "two words"}};
    return set;
}

// Same sizes, script, params, masks, and the same sharing between (layer, head)s.
void require_same_set(const MaskSet& a, const MaskSet& b) {
    REQUIRE(a.n == b.n);
    REQUIRE(a.block == b.block);
    REQUIRE(a.layers == b.layers);
    REQUIRE(a.heads == b.heads);
    REQUIRE(a.script_name == b.script_name);
    REQUIRE(a.script_text == b.script_text);
    REQUIRE(a.params == b.params);
    REQUIRE(a.masks.size() == b.masks.size());
    for (size_t i = 0; i < a.masks.size(); ++i) {
        REQUIRE(*a.masks[i] == *b.masks[i]);
        for (size_t j = 0; j < i; ++j) REQUIRE((a.masks[i] == a.masks[j]) == (b.masks[i] == b.masks[j]));
    }
}

template <typename T> NpyArray array_of(std::vector<int64_t> shape, std::vector<T> values) {
    return npy_array_make<T>(std::move(shape), values);
}

} // namespace

// [SECTION] CRC-32

TEST_CASE("crc32 matches the standard check value and a bitwise reference", "[npz]") {
    CHECK(crc32_update(0, "123456789", 9) == 0xCBF43926U);
    CHECK(crc32_update(0, "", 0) == 0U);
    std::mt19937_64 rng(3);
    std::vector<uint8_t> data(1000);
    for (auto& b : data) b = static_cast<uint8_t>(rng());
    for (size_t len : {1, 7, 8, 9, 15, 16, 17, 63, 64, 999, 1000}) {
        uint32_t ref = 0xFFFFFFFFU;
        for (size_t i = 0; i < len; ++i) {
            ref ^= data[i];
            for (int k = 0; k < 8; ++k) ref = (ref & 1U) ? 0xEDB88320U ^ (ref >> 1) : ref >> 1;
        }
        CHECK(crc32_update(0, data.data(), len) == ~ref);
        const size_t cut = len / 3;
        CHECK(crc32_update(crc32_update(0, data.data(), cut), data.data() + cut, len - cut) == ~ref);
    }
}

// [SECTION] npy

TEST_CASE("npy round trip of every dtype, in memory and on disk", "[npy]") {
    TempDir dir;
    std::vector<NpyArray> arrays = {
        array_of<uint8_t>({2, 3}, {0, 1, 2, 253, 254, 255}),
        array_of<int32_t>({4}, {-2147483647 - 1, -1, 0, 2147483647}),
        array_of<int64_t>({1, 2, 1}, {INT64_MIN, INT64_MAX}),
        array_of<uint64_t>({3}, {0, 1, UINT64_MAX}),
        array_of<float>({2, 2}, {0.5f, -1e-30f, 3.4e38f, -0.0f}),
        array_of<double>({}, {3.141592653589793}),
        array_of<int32_t>({0, 4}, {}),
    };
    NpyArray b;
    b.dtype = NpyDtype::boolean;
    b.shape = {2, 2};
    b.data = {1, 0, 0, 1};
    arrays.push_back(b);
    NpyArray h;
    h.dtype = NpyDtype::float16;
    h.shape = {3};
    h.data = {0x00, 0x3e, 0x00, 0xc0, 0xff, 0x7b};  // 1.5, -2, 65504
    arrays.push_back(h);
    for (const NpyArray& a : arrays) {
        INFO(npy_dtype_name(a.dtype) << " " << npy_shape_text(a.shape));
        const std::vector<uint8_t> bytes = npy_encode(a);
        CHECK((bytes.size() - a.data.size()) % 64 == 0);  // data starts 64-aligned
        CHECK(npy_decode(bytes, "mem") == a);
        npy_save(a, dir.file("a.npy"));
        CHECK(npy_load(dir.file("a.npy")) == a);
        CHECK(file_bytes(dir.file("a.npy")) == bytes);
    }
    CHECK(npy_array_values<float>(arrays[4], "x")[2] == 3.4e38f);
    CHECK_THROWS_WITH(npy_array_values<int64_t>(arrays[1], "x.npy"), "x.npy: dtype is int32, expected int64");
}

TEST_CASE("npy bytes match numpy's, and numpy's files read back", "[npy]") {
    NpzReader numpy(kData + "numpy_arrays.npz");
    const std::map<std::string, NpyArray> mine = {
        {"uint8", array_of<uint8_t>({5}, {0, 1, 2, 3, 4})},
        {"int32", array_of<int32_t>({2, 3}, {-3, -2, -1, 0, 1, 2})},
        {"int64", array_of<int64_t>({2}, {-(int64_t{1} << 40), 7})},
        {"uint64", array_of<uint64_t>({2}, {(uint64_t{1} << 63) + 5, 1})},
        {"float32", array_of<float>({1, 2}, {0.25f, -1e-3f})},
        {"float64", array_of<double>({}, {2.5})},
        {"empty", array_of<int32_t>({0, 4}, {})},
    };
    for (const auto& [name, a] : mine) {
        INFO(name);
        CHECK(numpy.read(name) == a);
    }
    const NpyArray b = numpy.read("bool");
    CHECK(b.dtype == NpyDtype::boolean);
    CHECK(b.data == std::vector<uint8_t>{1, 0, 1});
    const NpyArray h = numpy.read("float16");
    CHECK(h.dtype == NpyDtype::float16);
    CHECK(h.data == std::vector<uint8_t>{0x00, 0x3e, 0x00, 0xc0, 0xff, 0x7b});
    // Byte for byte what np.save writes: compare whole members through a round trip of our own.
    TempDir dir;
    NpzWriter w(dir.file("mine.npz"));
    for (const auto& [name, a] : mine) w.add(name, a);
    w.add("bool", b);
    w.add("float16", h);
    w.commit();
    const std::vector<uint8_t> ours = file_bytes(dir.file("mine.npz")), theirs = file_bytes(kData + "numpy_arrays.npz");
    for (const auto& name : {"uint8", "int32", "int64", "uint64", "float32", "float64", "empty", "bool", "float16"}) {
        const std::vector<uint8_t> member = npy_encode(numpy.read(name));
        INFO(name);
        CHECK(std::search(theirs.begin(), theirs.end(), member.begin(), member.end()) != theirs.end());
        CHECK(std::search(ours.begin(), ours.end(), member.begin(), member.end()) != ours.end());
    }
    CHECK_THROWS_WITH(numpy.read("fortran"), Contains("Fortran order") && Contains("np.ascontiguousarray"));
    CHECK_THROWS_WITH(numpy.read("big_endian"), Contains("dtype '>i4' is big-endian"));
    CHECK_THROWS_WITH(numpy.read("complex"), Contains("dtype '<c8' is not supported (use bool, uint8, int32, int64, uint64, float16, float32 or float64)"));
    CHECK_THROWS_WITH(NpzReader(kData + "numpy_compressed.npz"),
                      Contains("compressed .npz is not supported: save with np.savez, not np.savez_compressed"));
}

TEST_CASE("npy reading rejects bad files with a clear message", "[npy]") {
    const std::vector<uint8_t> good = npy_encode(array_of<int32_t>({2, 3}, {1, 2, 3, 4, 5, 6}));
    auto with_header = [](const std::string& dict) {
        std::string text("\x93NUMPY\x01\x00", 8);
        text += static_cast<char>(dict.size());
        text += '\0';
        text += dict;
        return std::vector<uint8_t>(text.begin(), text.end());
    };
    CHECK_THROWS_WITH(npy_decode({'h', 'e', 'l', 'l', 'o', '!', 1, 0, 0, 0, 0, 0}, "x.npy"), Contains("x.npy: not an npy file"));
    std::vector<uint8_t> v4 = good;
    v4[6] = 4;
    CHECK_THROWS_WITH(npy_decode(v4, "x.npy"), "x.npy: npy format version 4.0 is not supported (sparsa reads 1.0, 2.0 and 3.0)");
    std::vector<uint8_t> cut(good.begin(), good.end() - 4);
    CHECK_THROWS_WITH(npy_decode(cut, "x.npy"), "x.npy: truncated: expected 24 bytes of data, found 20");
    std::vector<uint8_t> longer = good;
    longer.push_back(0);
    CHECK_THROWS_WITH(npy_decode(longer, "x.npy"), Contains("1 bytes after the data"));
    for (size_t len = 0; len < good.size(); ++len) {
        INFO("cut at " << len);
        CHECK_THROWS_AS(npy_decode(std::vector<uint8_t>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(len)), "x.npy"), Error);
    }
    const std::vector<std::pair<std::string, std::string>> headers = {
        {"{'descr': '<i4', 'shape': (1,), }\n", "it needs 'descr', 'fortran_order' and 'shape'"},
        {"{'descr': '<i4', 'fortran_order': False, 'shape': (1,), 'extra': 1}\n", "unknown key 'extra'"},
        {"{'descr': '<i4', 'fortran_order': False, 'shape': (1), }\n", "'shape' (n) is not a tuple"},
        {"{'descr': '<i4', 'fortran_order': False, 'shape': (-1,), }\n", "non-negative integers"},
        {"{'descr': '<i4', 'fortran_order': 0, 'shape': (1,), }\n", "not True or False"},
        {"{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,), }\n", "structured dtypes are not supported"},
        {"{'descr': '<i4', 'descr': '<i4', 'fortran_order': False, 'shape': (1,)}\n", "'descr' given twice"},
        {"{'descr': '<i4', 'fortran_order': False, 'shape': (1,), } x\n", "text after the closing"},
        {"{'descr': '<i4', 'fortran_order': False, 'shape': (99999999999, 99999999999), }\n", "is too large"},
        {"{'descr': '<i4', 'fortran_order': False, 'shape': (1,)\n", "expected ',' or '}'"},
    };
    for (const auto& [dict, message] : headers) {
        INFO(dict);
        CHECK_THROWS_WITH(npy_decode(with_header(dict), "x.npy"), Contains("x.npy: ") && Contains(message));
    }
    // Tolerated: double quotes, no trailing comma, no spaces, 'L' suffixes of Python 2.
    std::vector<uint8_t> ok = with_header("{\"descr\":\"<i4\",\"fortran_order\":False,\"shape\":(1L,)}\n");
    ok.insert(ok.end(), {7, 0, 0, 0});
    CHECK(npy_decode(ok, "x.npy") == array_of<int32_t>({1}, {7}));
    TempDir dir;
    CHECK_THROWS_WITH(npy_load(dir.file("missing.npy")), Contains("cannot read '") && Contains("missing.npy': No such file or directory"));
    CHECK_THROWS_WITH(npy_load(dir.file("")), Contains("it is a folder, not a file"));
}

TEST_CASE("NpyWriter streams rows and checks their count", "[npy]") {
    TempDir dir;
    {
        NpyWriter w(dir.file("rows.npy"), NpyDtype::boolean, {3, 4});
        for (uint8_t r = 0; r < 3; ++r) {
            const uint8_t row[4] = {r, 1, 0, 1};
            w.write(row, 4);
        }
        CHECK_THROWS_WITH(w.write("x", 1), Contains("more data than its shape holds"));
        w.commit();
    }
    const NpyArray a = npy_load(dir.file("rows.npy"));
    CHECK(a.shape == std::vector<int64_t>{3, 4});
    CHECK(a.data == std::vector<uint8_t>{0, 1, 0, 1, 1, 1, 0, 1, 2, 1, 0, 1});
    {
        NpyWriter w(dir.file("short.npy"), NpyDtype::int64, {2});
        w.write("12345678", 8);
        CHECK_THROWS_WITH(w.commit(), Contains("only 8 of its 16 bytes of data were given"));
    }
    CHECK(dir.entries() == std::vector<std::string>{"rows.npy"});  // no short file, no temporary file
}

// [SECTION] atomic writes

TEST_CASE("atomic writes leave the old file or nothing when they fail", "[atomic]") {
    TempDir dir;
    const std::string out = dir.file("out.bin");
    file_put(out, {'o', 'l', 'd'});
    {
        AtomicFile f(out);
        CHECK(f.temp_path().find("/.out.bin.tmp-") != std::string::npos);
        f.write("new", 3);
        CHECK(dir.entries().size() == 2);  // the temporary file beside it
    }  // destroyed without commit
    CHECK(file_bytes(out) == std::vector<uint8_t>{'o', 'l', 'd'});
    CHECK(dir.entries() == std::vector<std::string>{"out.bin"});

    {
        AtomicFile f(out);
        f.write("new", 3);
        f.write_at(0, "N", 1);
        f.commit();
        CHECK_THROWS_WITH(f.write("x", 1), Contains("already committed"));
    }
    CHECK(file_bytes(out) == std::vector<uint8_t>{'N', 'e', 'w'});

    CHECK_THROWS_WITH(AtomicFile(dir.file("no/such/dir/x.npz")),
                      "cannot write '" + dir.file("no/such/dir/x.npz") + "': No such file or directory (does the folder exist?)");
    // The destination is a folder: the rename fails, the temporary file goes.
    std::filesystem::create_directory(dir.file("folder"));
    {
        AtomicFile f(dir.file("folder"));
        f.write("x", 1);
        CHECK_THROWS_WITH(f.commit(), Contains("cannot write '" + dir.file("folder") + "': Is a directory"));
    }
    CHECK(dir.entries() == std::vector<std::string>{"folder", "out.bin"});
    CHECK_THROWS_WITH(AtomicFile(dir.file("folder/")), Contains("give a file name, not a folder"));

    // A mask set that fails validation never replaces the old file.
    MaskSet set = random_set(40, 16, 1, 2, 2, 1);
    auto broken = std::make_shared<BlockMask>(*set.masks[1]);
    broken->row_ptr[0] = 1;
    set.masks[1] = broken;
    CHECK_THROWS_WITH(mask_set_save(set, out), Contains("cannot save '" + out + "': mask of layer 0, head 1: row_ptr[0] = 1"));
    CHECK(file_bytes(out) == std::vector<uint8_t>{'N', 'e', 'w'});
    CHECK(dir.entries() == std::vector<std::string>{"folder", "out.bin"});
}

// [SECTION] npz

TEST_CASE("npz round trip, plain and ZIP64, whole and streamed", "[npz]") {
    TempDir dir;
    for (bool zip64 : {false, true}) {
        const std::string path = dir.file(zip64 ? "z64.npz" : "plain.npz");
        const NpyArray a = array_of<int64_t>({2, 2}, {1, -2, 3, -4}), c = array_of<uint8_t>({0}, {});
        std::vector<uint32_t> big(100000);
        for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint32_t>(i * 2654435761U);
        {
            NpzWriter w(path, zip64);
            w.add("a", a);
            w.begin("big", NpyDtype::int32, {static_cast<int64_t>(big.size())});
            for (size_t i = 0; i < big.size(); i += 1000) w.write(big.data() + i, 1000 * 4);
            w.end();
            w.add("c", c);
            CHECK_THROWS_WITH(w.add("a", a), Contains("array 'a' added twice"));
            w.commit();
        }
        NpzReader r(path);
        CHECK(r.names() == std::vector<std::string>{"a", "big", "c"});
        CHECK(r.has("big"));
        CHECK_FALSE(r.has("b"));
        CHECK(r.read("a") == a);
        CHECK(r.read("c") == c);
        NpyArray whole = r.read("big");
        REQUIRE(whole.data.size() == big.size() * 4);
        CHECK(std::memcmp(whole.data.data(), big.data(), whole.data.size()) == 0);
        NpzReader::Stream s = r.stream("big");
        CHECK(s.header().shape == std::vector<int64_t>{100000});
        std::vector<uint32_t> back(big.size());
        for (size_t i = 0; i < back.size(); i += 777) s.read(back.data() + i, std::min<size_t>(777, back.size() - i) * 4);
        CHECK(back == big);
        CHECK_THROWS_WITH(r.read("b"), Contains(path + ": no array 'b'"));
        CHECK_THROWS_AS(s.read(back.data(), 4), Error);  // past the end
    }
    // Python's zipfile and numpy read these too: tests/io/read_with_numpy.py (ctest).
}

TEST_CASE("npz reading rejects what is not a plain npz", "[npz]") {
    TempDir dir;
    file_put(dir.file("text.npz"), std::vector<uint8_t>(100, 'x'));
    CHECK_THROWS_WITH(NpzReader(dir.file("text.npz")),
                      dir.file("text.npz") + ": not a zip archive (no end-of-central-directory record): is it an .npz file?");
    file_put(dir.file("empty.npz"), {});
    CHECK_THROWS_WITH(NpzReader(dir.file("empty.npz")), Contains("not a zip archive"));
    CHECK_THROWS_WITH(NpzReader(dir.file("missing.npz")), Contains("No such file or directory"));
    // A member whose data runs past the central directory's start.
    {
        NpzWriter w(dir.file("ok.npz"));
        w.add("row_ptr", array_of<int64_t>({3}, {0, 1, 2}));
        w.commit();
    }
    std::vector<uint8_t> bytes = file_bytes(dir.file("ok.npz"));
    bytes[22] += 100;  // local header: compressed size
    const size_t cd = bytes.size() - 22 - 46 - std::strlen("row_ptr.npy");
    bytes[cd + 20] += 100;  // central directory: compressed and uncompressed size
    bytes[cd + 24] += 100;
    file_put(dir.file("long.npz"), bytes);
    CHECK_THROWS_WITH(NpzReader(dir.file("long.npz")), dir.file("long.npz") + ": truncated: member 'row_ptr.npy' runs past the end of the file");
    // Random garbage after a zip-like start, and random bytes anywhere: errors, never a crash.
    std::mt19937_64 rng(5);
    for (int trial = 0; trial < 200; ++trial) {
        std::vector<uint8_t> junk = file_bytes(dir.file("ok.npz"));
        for (int k = 0; k < 1 + trial % 8; ++k) junk[rng() % junk.size()] = static_cast<uint8_t>(rng());
        file_put(dir.file("junk.npz"), junk);
        try {
            NpzReader r(dir.file("junk.npz"));
            for (const auto& name : r.names()) (void)r.read(name);
        } catch (const Error&) {
        }
    }
}

// [SECTION] mask sets

TEST_CASE("mask sets round trip exactly: every block size, n not divisible by B, sharing", "[mask_io]") {
    TempDir dir;
    uint64_t seed = 1;
    for (int32_t block : {16, 32, 64, 128, 256}) {
        for (int64_t n : {1, 7, 16, 100, 257, 300}) {
            if (block == 256 && n > 300) continue;
            const MaskSet set = random_set(n, block, 1 + seed % 3, 1 + (seed / 3) % 3, 1 + seed % 4, seed);
            ++seed;
            INFO("n = " << n << ", block " << block << ", seed " << seed);
            const std::string path = dir.file("set.npz");
            mask_set_save(set, path, seed % 2 == 0);
            const MaskSet back = mask_set_load(path);
            require_same_set(set, back);
            // Saving what was loaded writes the same bytes: the format is deterministic.
            mask_set_save(back, dir.file("again.npz"), seed % 2 == 0);
            REQUIRE(file_bytes(path) == file_bytes(dir.file("again.npz")));
        }
    }
    CHECK(dir.entries() == std::vector<std::string>{"again.npz", "set.npz"});
}

TEST_CASE("the arrays and the header say what docs/formats.md says", "[mask_io]") {
    TempDir dir;
    const MaskSet set = random_set(100, 16, 2, 3, 4, 9);
    mask_set_save(set, dir.file("s.npz"));
    NpzReader r(dir.file("s.npz"));
    CHECK(r.names() == std::vector<std::string>{"header", "mask_index", "row_ptr", "col_idx", "partial_idx", "bitmask"});
    const NpyArray header = r.read("header");
    const std::string text(header.data.begin(), header.data.end());
    CHECK_THAT(text, Contains("{\"format\":\"sparsa.maskset\",\"version\":2,\"n\":100,\"block\":16,\"layers\":2,\"heads\":3,"));
    CHECK_THAT(text, Contains(",\"params\":{\"seed\":\"9\",\"z_first\":\"1\",\"a_second\":\"two words\"}}"));
    // The concatenated CSR arrays: absolute offsets, global bitmask indices, in first-use order.
    const std::vector<int32_t> index = npy_array_values<int32_t>(r.read("mask_index"), "x");
    CHECK(index == set.unique_index());
    const auto unique = set.unique_masks();
    const int64_t U = static_cast<int64_t>(unique.size()), Q = 7;
    const auto row_ptr = npy_array_values<int64_t>(r.read("row_ptr"), "x");
    const auto col_idx = npy_array_values<int32_t>(r.read("col_idx"), "x");
    const auto partial_idx = npy_array_values<int32_t>(r.read("partial_idx"), "x");
    const NpyArray bitmask = r.read("bitmask");
    REQUIRE(row_ptr.size() == static_cast<size_t>(U * (Q + 1)));
    int64_t kept = 0, partials = 0;
    for (int64_t u = 0; u < U; ++u) {
        const BlockMask& m = *unique[static_cast<size_t>(u)];
        for (int64_t qb = 0; qb <= Q; ++qb) REQUIRE(row_ptr[static_cast<size_t>(u * (Q + 1) + qb)] == kept + m.row_ptr[static_cast<size_t>(qb)]);
        for (size_t e = 0; e < m.col_idx.size(); ++e) {
            REQUIRE(col_idx[static_cast<size_t>(kept) + e] == m.col_idx[e]);
            const int32_t p = m.partial_idx[e];
            REQUIRE(partial_idx[static_cast<size_t>(kept) + e] == (p < 0 ? -1 : p + static_cast<int32_t>(partials)));
        }
        REQUIRE(std::memcmp(bitmask.data.data() + partials * 32, m.bits.data(), m.bits.size() * 8) == 0);
        kept += m.kept_blocks();
        partials += m.partial_blocks();
    }
    CHECK(col_idx.size() == static_cast<size_t>(kept));
    CHECK(bitmask.shape == std::vector<int64_t>{partials, 16 * 16 / 64});
}

TEST_CASE("a mask file grows with the kept blocks, not with the square of the blocks", "[mask_io]") {
    // One query block row keeps every key block (a global token), the others only their diagonal
    // block: version 1 padded every row to the widest one (Flex arrays [L, H, Q, W], 8 MiB here).
    TempDir dir;
    const int64_t Q = 1024;
    auto mask = std::make_shared<BlockMask>();
    mask->n = Q * 16;
    mask->block = 16;
    mask->row_ptr.push_back(0);
    for (int64_t qb = 0; qb < Q; ++qb) {
        for (int64_t kb = 0; kb < Q; ++kb) {
            if (qb != 0 && kb != qb) continue;
            mask->col_idx.push_back(static_cast<int32_t>(kb));
            mask->partial_idx.push_back(-1);
        }
        mask->row_ptr.push_back(static_cast<int64_t>(mask->col_idx.size()));
    }
    MaskSet set = mask_set_make(2, 2, {mask, mask, mask, mask});
    mask_set_save(set, dir.file("wide.npz"));
    const int64_t kept = 2 * Q - 1;
    // row_ptr [1, Q + 1] int64, col_idx and partial_idx [kept] int32, no bitmask; then the
    // header, mask_index and the zip's records.
    const int64_t arrays = (Q + 1) * 8 + kept * 8;
    const int64_t size = static_cast<int64_t>(std::filesystem::file_size(dir.file("wide.npz")));
    CHECK(size > arrays);
    CHECK(size < arrays + 2048);
    require_same_set(set, mask_set_load(dir.file("wide.npz")));
}

TEST_CASE("mask_set_save refuses what it cannot write faithfully", "[mask_io]") {
    TempDir dir;
    MaskSet set = random_set(40, 16, 1, 1, 1, 2);
    set.params.emplace_back("seed", "again");
    CHECK_THROWS_WITH(mask_set_save(set, dir.file("x.npz")), Contains("param 'seed' is given twice"));
    set = random_set(40, 16, 1, 1, 1, 2);
    set.script_text = "caf\xe9";
    CHECK_THROWS_WITH(mask_set_save(set, dir.file("x.npz")), Contains("not valid UTF-8"));
    set = random_set(40, 16, 1, 2, 1, 2);
    set.masks.pop_back();
    CHECK_THROWS_WITH(mask_set_save(set, dir.file("x.npz")), Contains("1 masks for 1 layers x 2 heads"));
    CHECK(dir.entries().empty());
}

// [SECTION] damaged mask files

namespace {

// Every array of a mask file, to damage one and write them back in the same order.
std::vector<std::pair<std::string, NpyArray>> arrays_read(const std::string& path) {
    NpzReader r(path);
    std::vector<std::pair<std::string, NpyArray>> out;
    for (const auto& name : r.names()) out.emplace_back(name, r.read(name));
    return out;
}

void arrays_write(const std::vector<std::pair<std::string, NpyArray>>& arrays, const std::string& path) {
    NpzWriter w(path);
    for (const auto& [name, a] : arrays) w.add(name, a);
    w.commit();
}

// Sets the last partial_idx entry that is not -1 (full).
void set_last_partial(NpyArray& partial_idx, int32_t value) {
    for (size_t at = partial_idx.data.size(); at >= 4; at -= 4) {
        int32_t p = 0;
        std::memcpy(&p, partial_idx.data.data() + at - 4, 4);
        if (p != -1) {
            std::memcpy(partial_idx.data.data() + at - 4, &value, 4);
            return;
        }
    }
    throw std::runtime_error("no partial block");
}

NpyArray& array_named(std::vector<std::pair<std::string, NpyArray>>& arrays, const std::string& name) {
    for (auto& [n, a] : arrays) {
        if (n == name) return a;
    }
    throw std::runtime_error("no array " + name);
}

// A damage that replaces the first `from` in the JSON header with `to`.
std::function<void(std::vector<std::pair<std::string, NpyArray>>&)> header_with(const std::string& from, const std::string& to) {
    return [from, to](std::vector<std::pair<std::string, NpyArray>>& a) {
        NpyArray& h = array_named(a, "header");
        std::string text(h.data.begin(), h.data.end());
        const size_t at = text.find(from);
        if (at == std::string::npos) throw std::runtime_error("no " + from + " in the header");
        text.replace(at, from.size(), to);
        h = npy_array_make<uint8_t>({static_cast<int64_t>(text.size())}, std::vector<uint8_t>(text.begin(), text.end()));
    };
}

} // namespace

TEST_CASE("a mask file cut short or with a flipped byte never loads wrong", "[mask_io]") {
    TempDir dir;
    const MaskSet set = random_set(40, 16, 2, 2, 3, 4);
    const std::string path = dir.file("m.npz"), bad = dir.file("bad.npz");
    mask_set_save(set, path);
    const std::vector<uint8_t> bytes = file_bytes(path);
    for (size_t len = 0; len < bytes.size(); ++len) {
        file_put(bad, std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(len)));
        INFO("cut at " << len << " of " << bytes.size());
        REQUIRE_THROWS_AS(mask_set_load(bad), Error);
    }
    file_put(bad, std::vector<uint8_t>(bytes.begin(), bytes.begin() + 1000));
    CHECK_THROWS_WITH(mask_set_load(bad), bad + ": truncated: the zip archive has no end-of-central-directory record "
                                                 "(was the write cut short? write the file again)");
    // A flipped byte either is caught or lies in a field that changes nothing (a timestamp).
    int64_t caught = 0;
    for (size_t i = 0; i < bytes.size(); ++i) {
        std::vector<uint8_t> flipped = bytes;
        flipped[i] ^= 0x5A;
        file_put(bad, flipped);
        INFO("byte " << i << " of " << bytes.size());
        try {
            require_same_set(set, mask_set_load(bad));
        } catch (const Error&) {
            ++caught;
        }
    }
    CHECK(caught > static_cast<int64_t>(bytes.size()) * 85 / 100);
    // A flip inside a member's data is a CRC error naming the member.
    const auto at = std::search(bytes.begin(), bytes.end(), std::begin("bitmask.npy"), std::end("bitmask.npy") - 1);
    std::vector<uint8_t> flipped = bytes;
    flipped[static_cast<size_t>(at - bytes.begin()) + 11 + 130] ^= 1;
    file_put(bad, flipped);
    CHECK_THROWS_WITH(mask_set_load(bad), Contains(bad + ": member 'bitmask.npy' is corrupt (CRC-32 "));
}

TEST_CASE("foreign, newer and inconsistent mask files are refused by name", "[mask_io]") {
    TempDir dir;
    const MaskSet set = random_set(100, 32, 2, 2, 3, 6);
    const std::string path = dir.file("m.npz"), bad = dir.file("bad.npz");
    mask_set_save(set, path);

    CHECK_THROWS_WITH(mask_set_load(kData + "numpy_arrays.npz"),
                      kData + "numpy_arrays.npz: not a sparsa mask file (no 'header' array): was it written by `sparsa compile`?");
    CHECK_THROWS_WITH(mask_set_load(kData + "numpy_compressed.npz"), Contains("compressed .npz is not supported"));
    npy_save(array_of<int32_t>({2, 3}, {1, 2, 3, 4, 5, 6}), dir.file("one.npy"));
    CHECK_THROWS_WITH(mask_set_load(dir.file("one.npy")), dir.file("one.npy") + ": an .npy file (one array), not a mask set (.npz): "
                                                                             "give a file written by `sparsa compile SCRIPT --n N -o FILE.npz`");
    std::vector<uint8_t> short_npy = {0x93, 'N', 'U', 'M'};
    file_put(dir.file("short.npz"), short_npy);
    CHECK_THROWS_WITH(mask_set_load(dir.file("short.npz")), Contains("not a zip archive"));

    struct Case {
        const char* name;
        std::function<void(std::vector<std::pair<std::string, NpyArray>>&)> damage;
        std::string message;
    };
    const std::vector<Case> cases = {
        {"format", header_with("sparsa.maskset", "other.thing"), "not a sparsa mask file (its header has no \"format\": \"sparsa.maskset\")"},
        {"json", header_with("{", "["), "array 'header': not valid JSON"},
        {"block", header_with("\"block\":32", "\"block\":48"), "header block size 48 is not valid"},
        {"n", header_with("\"n\":100", "\"n\":130"), "array 'row_ptr': shape is [3, 5], expected"},
        {"unique", header_with("\"unique_masks\":3", "\"unique_masks\":9"), "out of range [1, 4]"},
        // Non-negative JSON integers parse as unsigned; the lower bounds hold for them too.
        {"layers 0", header_with("\"layers\":2", "\"layers\":0"), "header field 'layers' = 0 is out of range [1, 2147483647]"},
        {"heads 0", header_with("\"heads\":2", "\"heads\":0"), "header field 'heads' = 0 is out of range [1, 1073741823]"},
        {"n 0", header_with("\"n\":100", "\"n\":0"), "header field 'n' = 0 is out of range [1, "},
        {"block 0", header_with("\"block\":32", "\"block\":0"), "header field 'block' = 0 is out of range [16, 256]"},
        {"unique 0", header_with("\"unique_masks\":3", "\"unique_masks\":0"), "header field 'unique_masks' = 0 is out of range [1, 4]"},
        {"params", header_with("\"seed\":\"6\"", "\"seed\":6"), "header param 'seed' is not a string"},
        {"missing", [](auto& a) { a.erase(a.begin() + 4); }, "no 'partial_idx' array (the file is incomplete"},
        {"dtype", [](auto& a) { array_named(a, "mask_index") = array_of<int64_t>({2, 2}, {0, 1, 2, 0}); }, "array 'mask_index': dtype is int64, expected int32"},
        {"shape", [](auto& a) { array_named(a, "mask_index") = array_of<int32_t>({4}, {0, 1, 2, 0}); }, "array 'mask_index': shape is [4], expected [layers, heads] = [2, 2]"},
        {"index range", [](auto& a) { array_named(a, "mask_index").data[4] = 7; }, "array 'mask_index': layer 0, head 1 uses mask 7, not one of the 3 masks"},
        {"index unused", [](auto& a) { array_named(a, "mask_index").data[8] = 0; }, "mask 2 is used by no (layer, head)"},
        {"row_ptr", [](auto& a) { array_named(a, "row_ptr").data[8 * 5] ^= 1; }, "array 'row_ptr': mask 1 starts at"},
        {"col_idx", [](auto& a) { array_named(a, "col_idx").data[0] = 99; }, "key block 99 is out of range"},
        {"partial_idx", [](auto& a) { set_last_partial(array_named(a, "partial_idx"), 0x7f7f7f7f); }, "points at bitmask 2139062143"},
        {"bitmask extra", [](auto& a) { auto& b = array_named(a, "bitmask"); b.shape[0] += 1; b.data.resize(b.data.size() + 128, 0); }, "array 'bitmask': 1 bitmasks no block uses"},
    };
    for (const auto& c : cases) {
        INFO(c.name);
        auto arrays = arrays_read(path);
        c.damage(arrays);
        arrays_write(arrays, bad);
        CHECK_THROWS_AS(mask_set_load(bad), Error);
        CHECK_THROWS_WITH(mask_set_load(bad), Contains(bad + ": ") && Contains(c.message));
    }
    // The undamaged arrays written back load fine: the cases fail for their damage alone.
    arrays_write(arrays_read(path), bad);
    require_same_set(set, mask_set_load(bad));
}

TEST_CASE("version 1 files load; newer versions are refused with the command that writes them again", "[mask_io]") {
    // mask_set_v1.npz was written by the version-1 writer (sparsa at commit d3e2ad2) from
    // random_set(100, 32, 2, 2, 3, 6): the CSR arrays and bitmasks, then FlexAttention's
    // kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices and "flex_kv_width".
    // This build cannot write it again; keep the file.
    const std::string v1 = kData + "mask_set_v1.npz";
    const MaskSet want = random_set(100, 32, 2, 2, 3, 6);
    {
        NpzReader r(v1);
        REQUIRE(r.names().size() == 10);
        const NpyArray h = r.read("header");
        REQUIRE_THAT(std::string(h.data.begin(), h.data.end()), Contains("\"version\":1,") && Contains("\"flex_kv_width\":4}"));
    }
    const MaskSet loaded = mask_set_load(v1);
    require_same_set(want, loaded);
    // Saved again, it is a version-2 file of the same masks, without the Flex arrays.
    TempDir dir;
    mask_set_save(loaded, dir.file("v2.npz"));
    CHECK(NpzReader(dir.file("v2.npz")).names().size() == 6);
    require_same_set(want, mask_set_load(dir.file("v2.npz")));
    CHECK(std::filesystem::file_size(dir.file("v2.npz")) < std::filesystem::file_size(v1));

    // A newer version: the message names the file and gives the command, filled in from the header.
    const std::string bad = dir.file("newer.npz");
    for (const auto& [from, to, command] : std::vector<std::array<std::string, 3>>{
             {"\"version\":2", "\"version\":4", "sparsa compile random.pat --n 100 -o " + bad},
             {"\"version\":2", "\"version\":99", "sparsa compile random.pat --n 100 -o " + bad},
         }) {
        auto arrays = arrays_read(dir.file("v2.npz"));
        header_with(from, to)(arrays);
        arrays_write(arrays, bad);
        const std::string version = to.substr(to.find(':') + 1);
        INFO(to);
        CHECK_THROWS_WITH(mask_set_load(bad), bad + ": written by a newer sparsa (mask format version " + version +
                                                  "; this build reads versions 1 to 3): compile the script again with this sparsa (" +
                                                  command + ") or update sparsa");
    }
    // Without a script name or n in the header the command keeps its placeholders.
    auto arrays = arrays_read(dir.file("v2.npz"));
    header_with("\"version\":2", "\"version\":4")(arrays);
    header_with("\"script_name\":\"random.pat\"", "\"script_name\":\"\"")(arrays);
    header_with("\"n\":100", "\"n\":\"100\"")(arrays);
    arrays_write(arrays, bad);
    CHECK_THROWS_WITH(mask_set_load(bad), Contains("(sparsa compile SCRIPT --n N -o " + bad + ")"));
    // Version 0 and a version that is not an integer are damage, not the future.
    for (const char* version : {"0", "-1", "\"2\"", "2.5"}) {
        auto a = arrays_read(dir.file("v2.npz"));
        header_with("\"version\":2", std::string("\"version\":") + version)(a);
        arrays_write(a, bad);
        INFO(version);
        CHECK_THROWS_WITH(mask_set_load(bad), Contains(bad + ": header field 'version'"));
    }
}

// [SECTION] content-based heads

namespace {

std::shared_ptr<const ContentSpec> spec_make(ContentKind kind, int64_t count, uint64_t seed, const std::string& file = {}) {
    ContentSpec spec;
    spec.kind = kind;
    spec.seed = seed;
    spec.file = file;
    if (kind == ContentKind::favor) {
        spec.features = count;
        spec.redraw = 3;
    } else {
        spec.buckets = count;
        spec.rounds = 2;
        spec.chunk = 48;
        spec.shared_qk = kind == ContentKind::anchors;
    }
    spec.causal = kind != ContentKind::lsh;
    return std::make_shared<const ContentSpec>(spec);
}

std::vector<uint8_t> bytes_of(const std::string& text) { return {text.begin(), text.end()}; }

bool spec_equal(const ContentSpec& a, const ContentSpec& b) {
    return a.kind == b.kind && a.buckets == b.buckets && a.rounds == b.rounds && a.chunk == b.chunk && a.seed == b.seed &&
           a.shared_qk == b.shared_qk && a.features == b.features && a.redraw == b.redraw && a.causal == b.causal &&
           a.file == b.file;
}

// 2 layers x 3 heads: lsh on three heads (one spec and an equal copy), anchors with a file, favor,
// and a fixed head.
MaskSet content_set(const std::string& anchors_file) {
    MaskSet set = random_set(100, 16, 2, 3, 3, 5);
    const auto lsh = spec_make(ContentKind::lsh, 8, uint64_t{1} << 63);
    set.content = {lsh, spec_make(ContentKind::anchors, 4, 0, anchors_file), lsh,
                   spec_make(ContentKind::favor, 64, 7), nullptr, std::make_shared<const ContentSpec>(*lsh)};
    return set;
}

} // namespace

TEST_CASE("content-based heads round trip: specs, sharing, and the header docs/formats.md describes", "[mask_io][content]") {
    TempDir dir;
    file_put(dir.file("anchors.npz"), bytes_of("the anchors file's bytes"));
    const MaskSet want = content_set(dir.file("anchors.npz"));
    mask_set_save(want, dir.file("c.npz"));
    const MaskSet got = mask_set_load(dir.file("c.npz"));
    require_same_set(want, got);
    REQUIRE(got.content.size() == 6);
    for (size_t i = 0; i < 6; ++i) {
        INFO(i);
        REQUIRE((got.content[i] == nullptr) == (want.content[i] == nullptr));
        if (want.content[i]) CHECK(spec_equal(*got.content[i], *want.content[i]));
    }
    // Equal specs come back as one (0, 2 and 5 were equal; 5 was its own copy).
    CHECK(got.content[0] == got.content[2]);
    CHECK(got.content[0] == got.content[5]);
    CHECK(got.content[0] != got.content[3]);

    // The header: version 3, the distinct specs in first-use order, an index per (layer, head).
    const NpyArray h = NpzReader(dir.file("c.npz")).read("header");
    const std::string text(h.data.begin(), h.data.end());
    CHECK(text.find("\"version\":3") != std::string::npos);
    const std::string crc = std::to_string(crc32_update(0, "the anchors file's bytes", 24));
    CHECK(text.find("\"content\":[{\"kind\":\"lsh\",\"buckets\":8,\"rounds\":2,\"chunk\":48,\"seed\":9223372036854775808,"
                    "\"shared_qk\":false,\"causal\":false,\"file\":\"\"},{\"kind\":\"anchors\",\"k\":4,\"rounds\":2,\"chunk\":48,"
                    "\"shared_qk\":true,\"causal\":true,\"fit\":\"" + dir.file("anchors.npz") + "\",\"file_bytes\":24,"
                    "\"file_crc32\":" + crc + "},{\"kind\":\"favor\",\"features\":64,\"seed\":7,\"redraw\":3,\"causal\":true,"
                    "\"file\":\"\"}],\"content_index\":[[0,1,0],[2,-1,0]]") != std::string::npos);
    CHECK(content_spec_json(*want.content[3]) ==
          "{\"kind\":\"favor\",\"features\":64,\"seed\":7,\"redraw\":3,\"causal\":true,\"file\":\"\"}");

    // A set without content stays version 2 (older sparsa reads it), and loads with none.
    MaskSet plain = want;
    plain.content.assign(6, nullptr);
    mask_set_save(plain, dir.file("plain.npz"));
    const NpyArray ph = NpzReader(dir.file("plain.npz")).read("header");
    CHECK(std::string(ph.data.begin(), ph.data.end()).find("\"version\":2,") != std::string::npos);
    CHECK(mask_set_load(dir.file("plain.npz")).content.empty());
}

TEST_CASE("a content spec's file is referred to, not copied: changed is refused, missing loads", "[mask_io][content]") {
    TempDir dir;
    file_put(dir.file("anchors.npz"), bytes_of("fitted anchors, version 1"));
    mask_set_save(content_set(dir.file("anchors.npz")), dir.file("c.npz"));
    file_put(dir.file("anchors.npz"), bytes_of("fitted anchors, version 2"));  // same size, other bytes
    CHECK_THROWS_WITH(mask_set_load(dir.file("c.npz")),
                      Contains(dir.file("c.npz") + ": content spec 1: " + dir.file("anchors.npz") +
                               " changed since the masks were saved (25 bytes") &&
                          Contains("compile the script again (sparsa compile random.pat --n 100 -o " + dir.file("c.npz") + ")"));
    std::filesystem::remove(dir.file("anchors.npz"));
    CHECK(mask_set_load(dir.file("c.npz")).content[1]->file == dir.file("anchors.npz"));
    // Saving needs the file: the header records what it was.
    CHECK_THROWS_WITH(mask_set_save(content_set(dir.file("anchors.npz")), dir.file("d.npz")),
                      Contains("layer 0, head 1: the file its anchors names cannot be read") &&
                          Contains("mask files refer to it, they do not copy it"));
    CHECK_FALSE(std::filesystem::exists(dir.file("d.npz")));
}

TEST_CASE("mask_set_save refuses content it cannot write faithfully", "[mask_io][content]") {
    TempDir dir;
    MaskSet set = random_set(100, 16, 1, 2, 2, 3);
    set.content = {spec_make(ContentKind::lsh, 8, 0)};
    CHECK_THROWS_WITH(mask_set_save(set, dir.file("a.npz")), Contains("the set has 1 content specs for 2 (layer, head) pairs"));
    set.content = {nullptr, spec_make(ContentKind::lsh, 7, 0)};
    CHECK_THROWS_WITH(mask_set_save(set, dir.file("a.npz")), Contains("layer 0, head 1: lsh: buckets = 7 is odd"));
    set.content = {spec_make(ContentKind::favor, 0, 0), nullptr};
    CHECK_THROWS_WITH(mask_set_save(set, dir.file("a.npz")), Contains("favor: features = 0 is below 1"));
    CHECK(dir.entries().empty());
}

TEST_CASE("damaged, older and newer content headers are refused by name", "[mask_io][content]") {
    TempDir dir;
    MaskSet set = random_set(100, 16, 1, 2, 2, 3);
    set.content = {spec_make(ContentKind::lsh, 8, 4), nullptr};
    mask_set_save(set, dir.file("c.npz"));
    const std::string bad = dir.file("bad.npz");
    struct Damage {
        std::string from, to, message;
    };
    for (const Damage& d : std::vector<Damage>{
             {"\"kind\":\"lsh\"", "\"kind\":\"sinkhorn\"",
              "content spec 0 is of kind 'sinkhorn', which this sparsa does not know (it knows lsh, anchors and favor): update sparsa"},
             {"\"chunk\":48", "\"chunk\":48,\"temperature\":2", "content spec 0 (lsh) has a field 'temperature' this sparsa does not know"},
             {"\"buckets\":8", "\"buckets\":9", "content spec 0: lsh: buckets = 9 is odd"},
             {"\"buckets\":8", "\"buckets\":\"8\"", "content spec 0: field 'buckets' is missing or not an integer"},
             {"\"seed\":4", "\"seed\":-4", "field 'seed' is missing or not an integer from 0 to 2^64 - 1"},
             {"\"shared_qk\":false", "\"shared_qk\":0", "field 'shared_qk' is missing or not true/false"},
             {"\"content_index\":[[0,-1]]", "\"content_index\":[[0,1]]",
              "'content_index' at layer 0, head 1 is 1, not -1 (none) or a spec from 0 to 0"},
             {"\"content_index\":[[0,-1]]", "\"content_index\":[[-1,-1]]", "content spec 0 is used by no (layer, head)"},
             {"\"content_index\":[[0,-1]]", "\"content_index\":[[0]]", "'content_index' row 0 must list 2 heads"},
             {"\"content_index\":[[0,-1]]", "\"content_index\":[]", "'content_index' must be a list of 1 rows"},
             {"\"content\":[{", "\"content\":[7,{", "content spec 0 is not a JSON object"},
             {"\"version\":3", "\"version\":2", "header has content-based heads ('content') but says version 2"},
         }) {
        auto arrays = arrays_read(dir.file("c.npz"));
        header_with(d.from, d.to)(arrays);
        arrays_write(arrays, bad);
        INFO(d.to);
        CHECK_THROWS_WITH(mask_set_load(bad), Contains(bad) && Contains(d.message));
    }
    // Version 3 promises content: a header without it is damage.
    mask_set_save(random_set(100, 16, 1, 2, 2, 3), dir.file("plain.npz"));
    auto arrays = arrays_read(dir.file("plain.npz"));
    header_with("\"version\":2", "\"version\":3")(arrays);
    arrays_write(arrays, bad);
    CHECK_THROWS_WITH(mask_set_load(bad), Contains("a version 3 header without 'content' and 'content_index'"));
}
