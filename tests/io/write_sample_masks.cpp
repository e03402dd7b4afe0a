// Writes sample mask sets for the numpy check (read_with_numpy.py): NAME.npz through
// mask_set_save, and NAME.dense.npy, bool [layers, heads, n, n], the pairs each mask allows.
// Also copies the version-1 fixture tests/io/data/mask_set_v1.npz with the dense masks that
// mask_set_load reads from it, so numpy's reading of a version 1 file checks sparsa's. One set has
// content-based heads (version 3): NAME.content.json beside it lists each (layer, head)'s spec as
// sparsa writes it (or null), and the anchors file it names is written beside it too.
// usage: write_sample_masks OUT_DIR
#include "engine/error.hpp"
#include "io/mask_io.hpp"
#include "io/npy.hpp"
#include "tests/engine/mask_testing.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

using namespace sparsa;

struct Sample {
    std::string name;
    int64_t n;
    int32_t block;
    int64_t layers, heads;
    int64_t distinct;       // masks drawn; (layer, head) i uses mask i % distinct
    bool zip64 = false;
    bool extremes = false;  // the first two masks keep nothing and everything
    bool content = false;   // heads get lsh, anchors (with a file) and favor specs, one head none
};

// Content specs for a sample's (layer, head) pairs: i % 4 = 0 lsh, 1 anchors, 2 favor, 3 none;
// NAME.content.json holds what each should read back as, a list per layer of spec or null.
std::vector<std::shared_ptr<const ContentSpec>> content_write(const Sample& s, const std::filesystem::path& dir) {
    const std::string anchors = std::filesystem::absolute(dir / (s.name + ".anchors.npy")).lexically_normal().string();
    npy_save(npy_array_make<float>({1, 4, 2}, {1, 0, 0, 1, -1, 0, 0, -1}), anchors);
    ContentSpec lsh, fit, favor;
    lsh.buckets = 8;
    lsh.rounds = 2;
    lsh.chunk = s.block;
    lsh.seed = 12345678901234567890ull;
    fit.kind = ContentKind::anchors;
    fit.buckets = 4;
    fit.chunk = 7;
    fit.shared_qk = false;
    fit.causal = true;
    fit.file = anchors;
    favor.kind = ContentKind::favor;
    favor.features = 256;
    favor.redraw = 100;
    const std::vector<std::shared_ptr<const ContentSpec>> specs = {
        std::make_shared<const ContentSpec>(lsh), std::make_shared<const ContentSpec>(fit),
        std::make_shared<const ContentSpec>(favor), nullptr};
    std::vector<std::shared_ptr<const ContentSpec>> out;
    std::string json = "[";
    for (int64_t l = 0; l < s.layers; ++l) {
        json += l ? ", [" : "[";
        for (int64_t h = 0; h < s.heads; ++h) {
            const auto& spec = specs[static_cast<size_t>((l * s.heads + h) % 4)];
            out.push_back(spec);
            json += (h ? ", " : "") + (spec ? content_spec_json(*spec) : std::string("null"));
        }
        json += "]";
    }
    std::ofstream(dir / (s.name + ".content.json")) << json << "]\n";
    return out;
}

// NAME.dense.npy of a set: bool [layers, heads, n, n], row by row.
void dense_write(const MaskSet& set, const std::filesystem::path& path) {
    NpyWriter writer(path.string(), NpyDtype::boolean, {set.layers, set.heads, set.n, set.n});
    std::vector<uint8_t> row(static_cast<size_t>(set.n));
    for (const auto& mask : set.masks) {
        for (int64_t q = 0; q < set.n; ++q) {
            block_mask_dense_row(*mask, q, row.data());
            writer.write(row.data(), row.size());
        }
    }
    writer.commit();
}

void version1_copy(const std::filesystem::path& dir) {
    const std::filesystem::path fixture = std::filesystem::path(__FILE__).parent_path() / "data" / "mask_set_v1.npz";
    const MaskSet set = mask_set_load(fixture.string());
    std::filesystem::copy_file(fixture, dir / "version1_b32_n100.npz", std::filesystem::copy_options::overwrite_existing);
    dense_write(set, dir / "version1_b32_n100.dense.npy");
    std::printf("copied %s (format version 1) as version1_b32_n100.npz, with the masks sparsa loads from it\n",
                fixture.string().c_str());
}

void sample_write(const Sample& s, const std::filesystem::path& dir) {
    std::vector<std::vector<uint8_t>> dense;
    for (int64_t i = 0; i < s.distinct; ++i) {
        dense.push_back(testing::dense_random(s.n, s.block, 1000 + static_cast<uint64_t>(i) * 7919 + static_cast<uint64_t>(s.n)));
        if (s.extremes && i < 2) std::fill(dense.back().begin(), dense.back().end(), static_cast<uint8_t>(i));
    }
    std::vector<std::shared_ptr<const BlockMask>> masks;
    for (int64_t i = 0; i < s.layers * s.heads; ++i) {
        const auto& d = dense[static_cast<size_t>(i % s.distinct)];
        masks.push_back(std::make_shared<const BlockMask>(block_mask_from_dense(s.n, s.block, d.data())));
    }
    MaskSet set = mask_set_make(s.layers, s.heads, masks);
    set.script_name = s.name + ".pat";
    set.script_text = "# sample \"" + s.name + "\" \u2713 caf\u00e9\nattend = random(0.5)\n";
    set.params = {{"seed", "1000"}, {"n", std::to_string(s.n)}, {"note", "quotes \" and \\ backslash"}};
    if (s.content) set.content = content_write(s, dir);
    mask_set_save(set, (dir / (s.name + ".npz")).string(), s.zip64);

    NpyWriter writer((dir / (s.name + ".dense.npy")).string(), NpyDtype::boolean, {s.layers, s.heads, s.n, s.n});
    for (int64_t i = 0; i < s.layers * s.heads; ++i) {
        const auto& d = dense[static_cast<size_t>(i % s.distinct)];
        writer.write(d.data(), d.size());
    }
    writer.commit();
    std::printf("wrote %s.npz: n = %lld, block %d, %lld x %lld masks, %zu distinct\n", s.name.c_str(),
                static_cast<long long>(s.n), s.block, static_cast<long long>(s.layers), static_cast<long long>(s.heads),
                set.unique_masks().size());
}

} // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: write_sample_masks OUT_DIR\n");
        return 2;
    }
    try {
        const std::filesystem::path dir(argv[1]);
        std::filesystem::create_directories(dir);
        const std::vector<Sample> samples = {
            {"random_b16_n100", 100, 16, 2, 3, 6, false, false},    // n not divisible by B, all distinct
            {"shared_b64_n256", 256, 64, 3, 4, 3, false, true},     // shared masks, empty and full ones
            {"odd_b32_n77", 77, 32, 1, 2, 2, false, false},
            {"b128_n300", 300, 128, 2, 2, 4, false, false},
            {"b256_n520", 520, 256, 1, 2, 2, false, false},
            {"tiny_n1", 1, 16, 1, 1, 1, false, false},
            {"zip64_b64_n200", 200, 64, 2, 2, 3, true, true},       // ZIP64 records forced
            {"content_b32_n90", 90, 32, 2, 3, 2, false, false, true},  // content-based heads (version 3)
        };
        for (const auto& s : samples) sample_write(s, dir);
        version1_copy(dir);
    } catch (const sparsa::Error& e) {
        std::fprintf(stderr, "write_sample_masks: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "write_sample_masks: %s\n", e.what());
        return 1;
    }
    return 0;
}
