// MaskSet <-> .npz (docs/formats.md): concatenated CSR arrays and bitmasks of the distinct masks
// and a JSON header; arrays are streamed so none is held twice. The file grows with the kept
// blocks: FlexAttention's padded [L, H, Q, W] arrays (version 1 wrote them, gigabytes at
// n = 1M) are built in memory by python/sparsa/flex.py instead. Content-based heads (issue 14)
// are a list of specs in the header (version 3).
//
// Index: [SECTION] content specs, [SECTION] save, [SECTION] load
#include "io/mask_io.hpp"

#include "engine/error.hpp"
#include "io/npz.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>

namespace sparsa {

namespace {

using Json = nlohmann::ordered_json;  // keeps the params in their order
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

size_t to_size(int64_t i) { return static_cast<size_t>(i); }

// The (layer, head) of the first use of each distinct mask, for messages.
std::string first_use(const std::vector<int32_t>& index, int64_t heads, int64_t u) {
    const auto it = std::find(index.begin(), index.end(), static_cast<int32_t>(u));
    const int64_t i = it - index.begin();
    return "layer " + std::to_string(i / heads) + ", head " + std::to_string(i % heads);
}

} // namespace

// [SECTION] content specs

namespace {

Json content_spec_object(const ContentSpec& spec) {
    switch (spec.kind) {
    case ContentKind::lsh:
        return {{"kind", "lsh"},     {"buckets", spec.buckets},     {"rounds", spec.rounds},  {"chunk", spec.chunk},
                {"seed", spec.seed}, {"shared_qk", spec.shared_qk}, {"causal", spec.causal}, {"file", spec.file}};
    case ContentKind::anchors:
        return {{"kind", "anchors"},           {"k", spec.buckets},     {"rounds", spec.rounds}, {"chunk", spec.chunk},
                {"shared_qk", spec.shared_qk}, {"causal", spec.causal}, {"fit", spec.file}};
    case ContentKind::favor:
        return {{"kind", "favor"},       {"features", spec.features}, {"seed", spec.seed},
                {"redraw", spec.redraw}, {"causal", spec.causal},     {"file", spec.file}};
    }
    throw Error(content_spec_problem(spec));
}

// The file a spec names, as the header records it: its size and CRC-32 (zlib.crc32 of its bytes).
struct FileFingerprint {
    uint64_t bytes = 0;
    uint32_t crc32 = 0;
};
FileFingerprint file_fingerprint(const std::string& path) {
    const InputFile file(path);
    FileFingerprint out;
    out.bytes = file.size();
    std::vector<uint8_t> piece(size_t{1} << 20);
    for (uint64_t at = 0; at < out.bytes; at += piece.size()) {
        const size_t bytes = static_cast<size_t>(std::min<uint64_t>(piece.size(), out.bytes - at));
        file.read_at(at, piece.data(), bytes);
        out.crc32 = crc32_update(out.crc32, piece.data(), bytes);
    }
    return out;
}

// A spec read back from the header; `what` names the file and the spec ("m.npz: content spec 1").
ContentSpec content_spec_read(const Json& j, const std::string& what) {
    if (!j.is_object()) throw Error(what + " is not a JSON object");
    if (!j.contains("kind") || !j["kind"].is_string()) throw Error(what + ": field 'kind' is missing or not a string");
    const std::string kind = j["kind"].get<std::string>();
    ContentSpec spec;
    std::vector<std::string> fields;
    if (kind == "lsh") {
        spec.kind = ContentKind::lsh;
        fields = {"kind", "buckets", "rounds", "chunk", "seed", "shared_qk", "causal", "file"};
    } else if (kind == "anchors") {
        spec.kind = ContentKind::anchors;
        fields = {"kind", "k", "rounds", "chunk", "shared_qk", "causal", "fit"};
    } else if (kind == "favor") {
        spec.kind = ContentKind::favor;
        fields = {"kind", "features", "seed", "redraw", "causal", "file"};
    } else {
        throw Error(what + " is of kind '" + kind +
                    "', which this sparsa does not know (it knows lsh, anchors and favor): update sparsa, or compile the "
                    "script again with this one");
    }
    for (const auto& [key, value] : j.items()) {
        if (key == "file_bytes" || key == "file_crc32") continue;  // checked by the caller
        if (std::find(fields.begin(), fields.end(), key) == fields.end()) {
            throw Error(what + " (" + kind + ") has a field '" + key +
                        "' this sparsa does not know: update sparsa, or compile the script again with this one");
        }
    }
    auto integer = [&](const char* key, int64_t& out) {
        if (!j.contains(key) || !j[key].is_number_integer()) throw Error(what + ": field '" + key + "' is missing or not an integer");
        if (j[key].is_number_unsigned() && j[key].get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
            throw Error(what + ": field '" + key + "' = " + j[key].dump() + " is too large");
        }
        out = j[key].get<int64_t>();
    };
    auto boolean = [&](const char* key, bool& out) {
        if (!j.contains(key) || !j[key].is_boolean()) throw Error(what + ": field '" + key + "' is missing or not true/false");
        out = j[key].get<bool>();
    };
    auto text = [&](const char* key, std::string& out) {
        if (!j.contains(key) || !j[key].is_string()) throw Error(what + ": field '" + key + "' is missing or not a string");
        out = j[key].get<std::string>();
    };
    auto seed = [&] {
        if (!j.contains("seed") || !j["seed"].is_number_integer() || (!j["seed"].is_number_unsigned() && j["seed"].get<int64_t>() < 0)) {
            throw Error(what + ": field 'seed' is missing or not an integer from 0 to 2^64 - 1");
        }
        spec.seed = j["seed"].get<uint64_t>();
    };
    boolean("causal", spec.causal);
    if (spec.kind == ContentKind::favor) {
        integer("features", spec.features);
        integer("redraw", spec.redraw);
        seed();
        text("file", spec.file);
    } else {
        integer(spec.kind == ContentKind::lsh ? "buckets" : "k", spec.buckets);
        integer("rounds", spec.rounds);
        integer("chunk", spec.chunk);
        boolean("shared_qk", spec.shared_qk);
        if (spec.kind == ContentKind::lsh) seed();
        text(spec.kind == ContentKind::lsh ? "file" : "fit", spec.file);
    }
    if (std::string problem = content_spec_problem(spec); !problem.empty()) throw Error(what + ": " + problem);
    return spec;
}

} // namespace

std::string content_spec_json(const ContentSpec& spec) { return content_spec_object(spec).dump(); }

// [SECTION] save

void mask_set_save(const MaskSet& set, const std::string& path, bool force_zip64) {
    const std::string what = "cannot save '" + path + "'";
    if (set.layers < 1 || set.heads < 1 || set.layers > kInt32Max / set.heads ||
        static_cast<int64_t>(set.masks.size()) != set.layers * set.heads) {
        throw Error(what + ": the set has " + std::to_string(set.masks.size()) + " masks for " + std::to_string(set.layers) +
                    " layers x " + std::to_string(set.heads) + " heads (need one per layer and head)");
    }
    for (size_t i = 0; i < set.masks.size(); ++i) {
        if (!set.masks[i]) throw Error(what + ": mask " + std::to_string(i) + " is missing (null)");
        if (set.masks[i]->n != set.n || set.masks[i]->block != set.block) {
            throw Error(what + ": mask " + std::to_string(i) + " has n = " + std::to_string(set.masks[i]->n) + ", block " +
                        std::to_string(set.masks[i]->block) + " but the set has n = " + std::to_string(set.n) +
                        ", block " + std::to_string(set.block));
        }
    }
    // One grouping pass (it hashes every mask): distinct masks are numbered in first-use order,
    // so unique[u] is the first mask whose index is u.
    const std::vector<int32_t> index = set.unique_index();
    std::vector<std::shared_ptr<const BlockMask>> unique;
    for (size_t i = 0; i < index.size(); ++i) {
        if (index[i] == static_cast<int32_t>(unique.size())) unique.push_back(set.masks[i]);
    }
    const int64_t U = static_cast<int64_t>(unique.size());
    int64_t total_kept = 0, total_partials = 0;
    for (int64_t u = 0; u < U; ++u) {
        block_mask_validate(*unique[to_size(u)], what + ": mask of " + first_use(index, set.heads, u));
        total_kept += unique[to_size(u)]->kept_blocks();
        total_partials += unique[to_size(u)]->partial_blocks();
    }
    if (total_partials > kInt32Max) {
        throw Error(what + ": " + std::to_string(total_partials) + " partial blocks in all is more than partial_idx (int32) can index");
    }

    Json params = Json::object();
    for (const auto& [key, value] : set.params) {
        if (params.contains(key)) throw Error(what + ": param '" + key + "' is given twice (give each key once)");
        params[key] = value;
    }
    // Content-based heads: the distinct specs (equal ones once, in first-use order) and, per
    // (layer, head), the index of its spec or -1.
    if (!set.content.empty() && static_cast<int64_t>(set.content.size()) != set.layers * set.heads) {
        throw Error(what + ": the set has " + std::to_string(set.content.size()) + " content specs for " +
                    std::to_string(set.layers * set.heads) + " (layer, head) pairs (need none or one per pair)");
    }
    Json specs = Json::array(), content_index = Json::array();
    std::map<std::string, int64_t> spec_index;
    for (int64_t l = 0; l < set.layers && !set.content.empty(); ++l) {
        Json row = Json::array();
        for (int64_t h = 0; h < set.heads; ++h) {
            const auto& spec = set.content[to_size(l * set.heads + h)];
            if (!spec) {
                row.push_back(-1);
                continue;
            }
            const std::string where = what + ": layer " + std::to_string(l) + ", head " + std::to_string(h);
            if (std::string problem = content_spec_problem(*spec); !problem.empty()) throw Error(where + ": " + problem);
            const std::string key = content_spec_json(*spec);
            auto [it, added] = spec_index.emplace(key, static_cast<int64_t>(specs.size()));
            if (added) {
                Json object = content_spec_object(*spec);
                if (!spec->file.empty()) {
                    FileFingerprint print;
                    try {
                        print = file_fingerprint(spec->file);
                    } catch (const Error& e) {
                        throw Error(where + ": the file its " + content_kind_name(spec->kind) +
                                    " names cannot be read (" + e.what() + "); mask files refer to it, they do not copy it");
                    }
                    object["file_bytes"] = print.bytes;
                    object["file_crc32"] = print.crc32;
                }
                specs.push_back(std::move(object));
            }
            row.push_back(it->second);
        }
        content_index.push_back(std::move(row));
    }
    const bool has_content = !specs.empty();
    Json header = {{"format", kMaskFormatName},  {"version", has_content ? kMaskFormatVersion : int64_t{2}}, {"n", set.n},
                   {"block", set.block},         {"layers", set.layers},          {"heads", set.heads},
                   {"unique_masks", U},          {"script_name", set.script_name}, {"script", set.script_text},
                   {"params", params}};
    if (has_content) {
        header["content"] = std::move(specs);
        header["content_index"] = std::move(content_index);
    }
    std::string header_text;
    try {
        header_text = header.dump();
    } catch (const Json::exception&) {
        throw Error(what + ": the script name, script text or a param is not valid UTF-8 (save the script as UTF-8)");
    }

    const int64_t Q = set.n > 0 ? (set.n + set.block - 1) / set.block : 0, L = set.layers, H = set.heads;
    const int64_t words = int64_t{set.block} * set.block / 64;
    NpzWriter out(path, force_zip64);
    out.add("header", npy_array_make<uint8_t>({static_cast<int64_t>(header_text.size())},
                                              std::vector<uint8_t>(header_text.begin(), header_text.end())));
    out.add("mask_index", npy_array_make<int32_t>({L, H}, index));

    // CSR arrays of the distinct masks, concatenated: offsets become absolute, bitmask indices global.
    out.begin("row_ptr", NpyDtype::int64, {U, Q + 1});
    int64_t base = 0;
    for (const auto& m : unique) {
        std::vector<int64_t> row_ptr = m->row_ptr;
        for (int64_t& v : row_ptr) v += base;
        out.write(row_ptr.data(), row_ptr.size() * sizeof(int64_t));
        base += m->kept_blocks();
    }
    out.end();
    out.begin("col_idx", NpyDtype::int32, {total_kept});
    for (const auto& m : unique) out.write(m->col_idx.data(), m->col_idx.size() * sizeof(int32_t));
    out.end();
    out.begin("partial_idx", NpyDtype::int32, {total_kept});
    int64_t partial_base = 0;
    for (const auto& m : unique) {
        std::vector<int32_t> partial_idx = m->partial_idx;
        for (int32_t& p : partial_idx) p = p < 0 ? -1 : static_cast<int32_t>(p + partial_base);
        out.write(partial_idx.data(), partial_idx.size() * sizeof(int32_t));
        partial_base += m->partial_blocks();
    }
    out.end();
    out.begin("bitmask", NpyDtype::uint64, {total_partials, words});
    for (const auto& m : unique) out.write(m->bits.data(), m->bits.size() * sizeof(uint64_t));
    out.end();

    out.commit();
}

// [SECTION] load

namespace {

// Whether `path` starts as an .npy file does ("\x93NUMPY"); false when it cannot be read.
bool file_is_npy(const std::string& path) {
    try {
        const InputFile file(path);
        char magic[6] = {};
        if (file.size() < sizeof magic) return false;
        file.read_at(0, magic, sizeof magic);
        return std::memcmp(magic, "\x93NUMPY", sizeof magic) == 0;
    } catch (const Error&) {
        return false;
    }
}

// The archive, or an error that says what the file is when it is an .npy (a single array: the
// container's own message, "not a zip archive", would not say what to give instead).
NpzReader npz_open(const std::string& path) {
    try {
        return NpzReader(path);
    } catch (const Error&) {
        if (file_is_npy(path)) {
            throw Error(path + ": an .npy file (one array), not a mask set (.npz): give a file written by "
                               "`sparsa compile SCRIPT --n N -o FILE.npz`");
        }
        throw;
    }
}

// Reads and checks the arrays of one file; every message names the file and the array.
class MaskFileReader {
public:
    explicit MaskFileReader(const std::string& path) : path_(path), npz_(npz_open(path)) {}

    // An array's stream, after checking its dtype and shape.
    NpzReader::Stream open(const std::string& name, NpyDtype dtype, const std::vector<int64_t>& shape,
                           const std::string& expected) const {
        require(name);
        NpzReader::Stream s = npz_.stream(name);
        check(name, s.header(), dtype, shape, expected);
        return s;
    }
    NpyArray read(const std::string& name, NpyDtype dtype, const std::vector<int64_t>& shape, const std::string& expected) const {
        check(name, header_of(name), dtype, shape, expected);
        return npz_.read(name);
    }
    // An array's dtype and shape, without reading its data.
    NpyHeader header_of(const std::string& name) const {
        require(name);
        return npz_.stream(name).header();
    }
    // The first dimension of a 1-d or 2-d array, which the header does not give.
    int64_t length_of(const std::string& name, size_t dims) const {
        const NpyHeader h = header_of(name);
        if (h.shape.size() != dims) fail(name, "shape is " + npy_shape_text(h.shape) + ", expected " + std::to_string(dims) + " dimension(s)");
        return h.shape[0];
    }
    bool has(const std::string& name) const { return npz_.has(name); }
    [[noreturn]] void fail(const std::string& name, const std::string& why) const {
        throw Error(path_ + ": array '" + name + "': " + why);
    }
    const std::string& path() const { return path_; }

private:
    void require(const std::string& name) const {
        if (!npz_.has(name)) {
            throw Error(path_ + ": no '" + name + "' array (the file is incomplete: write it again with `sparsa compile`)");
        }
    }
    void check(const std::string& name, const NpyHeader& h, NpyDtype dtype, const std::vector<int64_t>& shape,
               const std::string& expected) const {
        if (h.dtype != dtype) fail(name, std::string("dtype is ") + npy_dtype_name(h.dtype) + ", expected " + npy_dtype_name(dtype));
        if (h.shape != shape) {
            fail(name, "shape is " + npy_shape_text(h.shape) + ", expected " + expected + " = " + npy_shape_text(shape));
        }
    }

    std::string path_;
    NpzReader npz_;
};

template <typename T> std::vector<T> stream_values(NpzReader::Stream& s, int64_t count) {
    std::vector<T> values(to_size(count));
    s.read(values.data(), values.size() * sizeof(T));
    return values;
}

// A header field that must be an integer in [lo, hi].
int64_t json_integer(const Json& header, const char* key, int64_t lo, int64_t hi, const std::string& what) {
    if (!header.contains(key) || !header[key].is_number_integer()) {
        throw Error(what + ": header field '" + key + "' is missing or not an integer");
    }
    // JSON parsers store a non-negative integer as unsigned: check both bounds in each form (a
    // "layers": 0 that slipped past `lo` would divide by zero below).
    const Json& v = header[key];
    const bool in_range = v.is_number_unsigned()
                              ? v.get<uint64_t>() <= static_cast<uint64_t>(hi) && (lo <= 0 || v.get<uint64_t>() >= static_cast<uint64_t>(lo))
                              : v.get<int64_t>() >= lo && v.get<int64_t>() <= hi;
    if (!in_range) {
        throw Error(what + ": header field '" + key + "' = " + v.dump() + " is out of range [" + std::to_string(lo) + ", " +
                    std::to_string(hi) + "]");
    }
    return v.get<int64_t>();
}

std::string json_string(const Json& header, const char* key, const std::string& what) {
    if (!header.contains(key) || !header[key].is_string()) throw Error(what + ": header field '" + key + "' is missing or not a string");
    return header[key].get<std::string>();
}

// The command that writes `path` again in this build's format, with the script and n from the
// header where it has them: "sparsa compile bigbird.pat --n 4096 -o masks.npz".
std::string recompile_command(const Json& header, const std::string& path) {
    const bool named = header.contains("script_name") && header["script_name"].is_string() &&
                       !header["script_name"].get<std::string>().empty();
    const bool sized = header.contains("n") && header["n"].is_number_integer();
    return "sparsa compile " + (named ? header["script_name"].get<std::string>() : std::string("SCRIPT")) + " --n " +
           (sized ? header["n"].dump() : std::string("N")) + " -o " + path;
}

// Version 3's content-based heads: empty when the file has none, else one spec (or null) per
// (layer, head), equal ones shared. A spec's file that exists but differs from the one saved
// (size, CRC-32) is refused: its heads would not be what was compiled.
std::vector<std::shared_ptr<const ContentSpec>> content_read(const Json& header, int64_t version, int64_t L, int64_t H,
                                                             const std::string& path) {
    const bool has = header.contains("content") || header.contains("content_index");
    if (!has) {
        if (version >= 3) throw Error(path + ": a version 3 header without 'content' and 'content_index' (write it again with `sparsa compile`)");
        return {};
    }
    if (version < 3) {
        throw Error(path + ": header has content-based heads ('content') but says version " + std::to_string(version) +
                    " (content needs version 3): write it again with `sparsa compile`");
    }
    const Json& list = header["content"];
    const Json& index = header.contains("content_index") ? header["content_index"] : Json();
    if (!list.is_array() || list.empty()) throw Error(path + ": header field 'content' is not a non-empty list of specs");
    std::vector<std::shared_ptr<const ContentSpec>> specs;
    for (size_t s = 0; s < list.size(); ++s) {
        const std::string what = path + ": content spec " + std::to_string(s);
        ContentSpec spec = content_spec_read(list[s], what);
        if (!spec.file.empty() && (list[s].contains("file_bytes") || list[s].contains("file_crc32"))) {
            const Json& bytes = list[s].contains("file_bytes") ? list[s]["file_bytes"] : Json();
            const Json& crc = list[s].contains("file_crc32") ? list[s]["file_crc32"] : Json();
            if (!bytes.is_number_unsigned() || !crc.is_number_unsigned()) {
                throw Error(what + ": fields 'file_bytes' and 'file_crc32' must both be non-negative integers");
            }
            std::error_code error;
            if (std::filesystem::exists(spec.file, error)) {
                FileFingerprint now;
                try {
                    now = file_fingerprint(spec.file);
                } catch (const Error& e) {
                    throw Error(what + ": " + e.what());
                }
                if (now.bytes != bytes.get<uint64_t>() || now.crc32 != crc.get<uint64_t>()) {
                    throw Error(what + ": " + spec.file + " changed since the masks were saved (" + bytes.dump() +
                                " bytes, CRC-32 " + crc.dump() + "; now " + std::to_string(now.bytes) + " bytes, CRC-32 " +
                                std::to_string(now.crc32) + "): compile the script again (" + recompile_command(header, path) + ")");
                }
            }
        }
        specs.push_back(std::make_shared<const ContentSpec>(std::move(spec)));
    }
    if (!index.is_array() || static_cast<int64_t>(index.size()) != L) {
        throw Error(path + ": header field 'content_index' must be a list of " + std::to_string(L) + " rows (one per layer)");
    }
    std::vector<std::shared_ptr<const ContentSpec>> out(to_size(L * H));
    std::vector<bool> used(specs.size(), false);
    for (int64_t l = 0; l < L; ++l) {
        const Json& row = index[to_size(l)];
        if (!row.is_array() || static_cast<int64_t>(row.size()) != H) {
            throw Error(path + ": header field 'content_index' row " + std::to_string(l) + " must list " + std::to_string(H) +
                        " heads");
        }
        for (int64_t h = 0; h < H; ++h) {
            const Json& v = row[to_size(h)];
            const int64_t count = static_cast<int64_t>(specs.size());
            if (!v.is_number_integer() || v.get<int64_t>() < -1 || v.get<int64_t>() >= count) {
                throw Error(path + ": header field 'content_index' at layer " + std::to_string(l) + ", head " + std::to_string(h) +
                            " is " + v.dump() + ", not -1 (none) or a spec from 0 to " + std::to_string(count - 1));
            }
            if (v.get<int64_t>() < 0) continue;
            out[to_size(l * H + h)] = specs[to_size(v.get<int64_t>())];
            used[to_size(v.get<int64_t>())] = true;
        }
    }
    if (auto it = std::find(used.begin(), used.end(), false); it != used.end()) {
        throw Error(path + ": content spec " + std::to_string(it - used.begin()) + " is used by no (layer, head)");
    }
    return out;
}

} // namespace

MaskSet mask_set_load(const std::string& path) {
    MaskFileReader file(path);
    if (!file.has("header")) {
        throw Error(path + ": not a sparsa mask file (no 'header' array): was it written by `sparsa compile`?");
    }
    // [SECTION] the JSON header
    const int64_t header_bytes = file.length_of("header", 1);
    NpyArray header_array = file.read("header", NpyDtype::uint8, {header_bytes}, "[bytes]");
    Json header;
    try {
        header = Json::parse(header_array.data.begin(), header_array.data.end());
    } catch (const Json::exception& e) {
        file.fail("header", std::string("not valid JSON (") + e.what() + ")");
    }
    if (!header.is_object() || !header.contains("format") || header["format"] != kMaskFormatName) {
        throw Error(path + ": not a sparsa mask file (its header has no \"format\": \"" + kMaskFormatName +
                    "\"): was it written by `sparsa compile`?");
    }
    const int64_t version = json_integer(header, "version", 1, std::numeric_limits<int64_t>::max(), path);
    if (version > kMaskFormatVersion) {
        throw Error(path + ": written by a newer sparsa (mask format version " + std::to_string(version) +
                    "; this build reads versions 1 to " + std::to_string(kMaskFormatVersion) +
                    "): compile the script again with this sparsa (" + recompile_command(header, path) + ") or update sparsa");
    }
    // Version 1 also stored FlexAttention's arrays and "flex_kv_width"; they are derived from
    // the CSR arrays, so they are skipped here and the masks load from the CSR arrays alone.
    MaskSet set;
    set.block = static_cast<int32_t>(json_integer(header, "block", kMinBlock, kMaxBlock, path));
    if (!block_size_valid(set.block)) {
        throw Error(path + ": header block size " + std::to_string(set.block) + " is not valid (16, 32, 64, 128 or 256)");
    }
    set.n = json_integer(header, "n", 1, kInt32Max * int64_t{set.block}, path);
    set.layers = json_integer(header, "layers", 1, kInt32Max, path);
    set.heads = json_integer(header, "heads", 1, kInt32Max / set.layers, path);
    const int64_t U = json_integer(header, "unique_masks", 1, set.layers * set.heads, path);
    set.script_name = json_string(header, "script_name", path);
    set.script_text = json_string(header, "script", path);
    if (!header.contains("params") || !header["params"].is_object()) throw Error(path + ": header field 'params' is missing or not an object");
    for (const auto& [key, value] : header["params"].items()) {
        if (!value.is_string()) throw Error(path + ": header param '" + key + "' is not a string");
        set.params.emplace_back(key, value.get<std::string>());
    }
    const int64_t Q = (set.n + set.block - 1) / set.block, L = set.layers, H = set.heads;
    const int64_t words = int64_t{set.block} * set.block / 64;
    set.content = content_read(header, version, L, H, path);

    // [SECTION] which mask each (layer, head) uses
    const std::vector<int32_t> index =
        npy_array_values<int32_t>(file.read("mask_index", NpyDtype::int32, {L, H}, "[layers, heads]"), path);
    std::vector<bool> used(to_size(U), false);
    for (size_t i = 0; i < index.size(); ++i) {
        if (index[i] < 0 || index[i] >= U) {
            file.fail("mask_index", "layer " + std::to_string(i / to_size(H)) + ", head " + std::to_string(i % to_size(H)) +
                                        " uses mask " + std::to_string(index[i]) + ", not one of the " + std::to_string(U) + " masks");
        }
        used[to_size(index[i])] = true;
    }
    if (auto it = std::find(used.begin(), used.end(), false); it != used.end()) {
        file.fail("mask_index", "mask " + std::to_string(it - used.begin()) + " is used by no (layer, head)");
    }

    // [SECTION] the distinct masks, from the concatenated CSR arrays
    const int64_t total_kept = file.length_of("col_idx", 1);
    NpzReader::Stream row_ptr_s = file.open("row_ptr", NpyDtype::int64, {U, Q + 1}, "[unique_masks, q_blocks + 1]");
    NpzReader::Stream col_s = file.open("col_idx", NpyDtype::int32, {total_kept}, "[total kept blocks]");
    NpzReader::Stream partial_s = file.open("partial_idx", NpyDtype::int32, {total_kept}, "[total kept blocks] (as col_idx)");
    const int64_t total_partials = file.length_of("bitmask", 2);
    NpzReader::Stream bits_s = file.open("bitmask", NpyDtype::uint64, {total_partials, words},
                                         "[total partial blocks, block * block / 64]");

    std::vector<std::shared_ptr<const BlockMask>> unique;
    int64_t kept_base = 0, partial_base = 0;
    for (int64_t u = 0; u < U; ++u) {
        auto mask = std::make_shared<BlockMask>();
        mask->n = set.n;
        mask->block = set.block;
        mask->row_ptr = stream_values<int64_t>(row_ptr_s, Q + 1);
        const int64_t first = mask->row_ptr.front(), last = mask->row_ptr.back();
        if (first != kept_base) {
            file.fail("row_ptr", "mask " + std::to_string(u) + " starts at " + std::to_string(first) + " where mask " +
                                     std::to_string(u - 1) + " ended (" + std::to_string(kept_base) + ")");
        }
        if (last < first || last > total_kept) {
            file.fail("row_ptr", "mask " + std::to_string(u) + " ends at " + std::to_string(last) + ", outside [" +
                                     std::to_string(first) + ", " + std::to_string(total_kept) + "] (col_idx has " +
                                     std::to_string(total_kept) + " entries)");
        }
        for (int64_t& v : mask->row_ptr) v -= first;  // block_mask_validate checks the rest
        mask->col_idx = stream_values<int32_t>(col_s, last - first);
        mask->partial_idx = stream_values<int32_t>(partial_s, last - first);
        const int64_t partials = std::count_if(mask->partial_idx.begin(), mask->partial_idx.end(), [](int32_t p) { return p != -1; });
        if (partials > total_partials - partial_base) {
            file.fail("partial_idx", "mask " + std::to_string(u) + " has more partial blocks than 'bitmask' holds");
        }
        for (int32_t& p : mask->partial_idx) {
            if (p == -1) continue;
            if (p < partial_base || p >= partial_base + partials) {
                file.fail("partial_idx", "mask " + std::to_string(u) + " points at bitmask " + std::to_string(p) +
                                             ", outside its own [" + std::to_string(partial_base) + ", " +
                                             std::to_string(partial_base + partials) + ")");
            }
            p = static_cast<int32_t>(p - partial_base);
        }
        mask->bits = stream_values<uint64_t>(bits_s, partials * words);
        block_mask_validate(*mask, path + ": mask " + std::to_string(u) + " (" + first_use(index, H, u) + ")");
        kept_base = last;
        partial_base += partials;
        unique.push_back(std::move(mask));
    }
    if (kept_base != total_kept) file.fail("col_idx", std::to_string(total_kept - kept_base) + " entries beyond the last mask's row_ptr");
    if (partial_base != total_partials) file.fail("bitmask", std::to_string(total_partials - partial_base) + " bitmasks no block uses");

    set.masks.resize(index.size());
    for (size_t i = 0; i < index.size(); ++i) set.masks[i] = unique[to_size(index[i])];
    return set;
}

} // namespace sparsa
