// Files of content-based heads: anchors (.npz with a JSON header) and .npy arrays, read into
// ContentArray for the engines.
#include "io/content_files.hpp"

#include "engine/error.hpp"
#include "io/npy.hpp"
#include "io/npz.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <string>

namespace sparsa {

namespace {

using Json = nlohmann::json;

size_t to_size(int64_t i) { return static_cast<size_t>(i); }

// float32 values of an array, or an error naming `what` that says how to convert.
std::vector<float> float_values(const NpyArray& a, const std::string& what) {
    if (a.dtype != NpyDtype::float32) {
        throw Error(what + " holds " + npy_dtype_name(a.dtype) + " (give float32, e.g. x.astype(numpy.float32))");
    }
    return npy_array_values<float>(a, what);
}

} // namespace

void anchors_save(const std::string& path, const ContentArray& anchors, const AnchorsInfo& info) {
    if (anchors.shape.size() != 3 || npy_shape_elements(anchors.shape, path) != static_cast<int64_t>(anchors.values.size())) {
        throw Error(path + ": anchors of shape " + content_shape_text(anchors.shape) + " with " +
                    std::to_string(anchors.values.size()) + " values (give [rounds, k, d] and that many values)");
    }
    for (float x : anchors.values) {
        if (!std::isfinite(x)) throw Error(path + ": the anchors hold NaN or Inf (fit them from finite Q and K)");
    }
    const Json header = {{"format", kAnchorsFormatName}, {"version", kAnchorsFormatVersion},
                         {"rounds", anchors.shape[0]},   {"k", anchors.shape[1]},
                         {"d", anchors.shape[2]},        {"calibration", {{"q", info.q_shape}, {"k", info.k_shape}, {"rows", info.rows}}},
                         {"seed", info.seed},            {"iterations", info.iterations},
                         {"restarts", info.restarts},    {"start_seed", info.start_seed},
                         {"mean_cosine", info.mean_cosine}};
    const std::string text = header.dump();
    NpzWriter out(path);
    out.add("header", npy_array_make<uint8_t>({static_cast<int64_t>(text.size())}, std::vector<uint8_t>(text.begin(), text.end())));
    out.add("anchors", npy_array_make<float>(anchors.shape, anchors.values));
    out.commit();
}

ContentArray anchors_load(const std::string& path, AnchorsInfo* info) {
    const NpzReader file(path);
    if (!file.has("header") || !file.has("anchors")) {
        throw Error(path + ": not a sparsa anchors file (it needs the arrays 'header' and 'anchors'): make one with "
                           "sparsa anchors fit --q Q.npy --k K.npy --anchors K -o " + path);
    }
    const NpyArray header_array = file.read("header");
    if (header_array.dtype != NpyDtype::uint8) throw Error(path + ": 'header' is not uint8 bytes of JSON (write the file with sparsa anchors fit)");
    Json header;
    try {
        header = Json::parse(header_array.data.begin(), header_array.data.end());
    } catch (const Json::exception& e) {
        throw Error(path + ": 'header' is not valid JSON (" + e.what() + "): write the file again with sparsa anchors fit");
    }
    if (!header.is_object() || header.value("format", Json()) != kAnchorsFormatName) {
        throw Error(path + ": not a sparsa anchors file (its header has no \"format\": \"" + kAnchorsFormatName +
                    "\"): make one with sparsa anchors fit");
    }
    const Json version = header.value("version", Json());
    if (!version.is_number_integer() || version.get<int64_t>() < 1) {
        throw Error(path + ": the header's \"version\" is not a positive integer (write the file again with sparsa anchors fit)");
    }
    if (version.get<int64_t>() > kAnchorsFormatVersion) {
        throw Error(path + ": written by a newer sparsa (anchors format version " + version.dump() +
                    "; this build reads version 1): fit the anchors again with this sparsa, or update sparsa");
    }
    const NpyArray a = file.read("anchors");
    ContentArray out;
    out.path = path;
    out.shape = a.shape;
    out.values = float_values(a, path + ": 'anchors'");
    if (a.shape.size() != 3 || a.shape[0] < 1 || a.shape[1] < 1 || a.shape[2] < 1) {
        throw Error(path + ": 'anchors' has shape " + npy_shape_text(a.shape) + " (it should be [rounds, k, d], each >= 1)");
    }
    const int64_t d = a.shape[2], rows = a.shape[0] * a.shape[1];
    for (int64_t r = 0; r < rows; ++r) {
        double norm = 0;
        for (int64_t t = 0; t < d; ++t) {
            const float x = out.values[to_size(r * d + t)];
            if (!std::isfinite(x)) throw Error(path + ": anchor " + std::to_string(r) + " holds NaN or Inf (fit the anchors again)");
            norm += double{x} * x;
        }
        if (std::abs(std::sqrt(norm) - 1) > 1e-3) {
            throw Error(path + ": anchor [" + std::to_string(r / a.shape[1]) + ", " + std::to_string(r % a.shape[1]) +
                        "] has norm " + std::to_string(std::sqrt(norm)) + " (anchors are unit rows: normalise them, or fit them with sparsa anchors fit)");
        }
    }
    if (info != nullptr) {
        *info = AnchorsInfo{};
        const Json cal = header.value("calibration", Json::object());
        if (cal.is_object()) {
            if (cal.contains("q") && cal["q"].is_array()) info->q_shape = cal["q"].get<std::vector<int64_t>>();
            if (cal.contains("k") && cal["k"].is_array()) info->k_shape = cal["k"].get<std::vector<int64_t>>();
            if (cal.contains("rows") && cal["rows"].is_number_integer()) info->rows = cal["rows"].get<int64_t>();
        }
        if (header.contains("seed") && header["seed"].is_number_unsigned()) info->seed = header["seed"].get<uint64_t>();
        if (header.contains("iterations") && header["iterations"].is_number_integer()) info->iterations = header["iterations"].get<int64_t>();
        if (header.contains("restarts") && header["restarts"].is_number_integer()) info->restarts = header["restarts"].get<int64_t>();
        if (header.contains("start_seed") && header["start_seed"].is_array()) {
            for (const Json& c : header["start_seed"]) {
                if (c.is_number_unsigned()) info->start_seed.push_back(c.get<uint64_t>());
            }
        }
        if (header.contains("mean_cosine") && header["mean_cosine"].is_array()) {
            for (const Json& c : header["mean_cosine"]) {
                if (c.is_number()) info->mean_cosine.push_back(c.get<double>());
            }
        }
    }
    return out;
}

ContentArray content_npy_load(const std::string& path) {
    const NpyArray a = npy_load(path);
    ContentArray out;
    out.path = path;
    out.shape = a.shape;
    out.values = float_values(a, path);
    for (float x : out.values) {
        if (!std::isfinite(x)) throw Error(path + ": holds NaN or Inf (random rotations and features must be finite)");
    }
    return out;
}

ContentArrays content_files_load(const MaskSet& masks, const std::string& folder) {
    ContentArrays arrays;
    for (const auto& spec : masks.content) {
        if (spec == nullptr || spec->file.empty() || arrays.count(spec->file) != 0) continue;
        std::filesystem::path path(spec->file);
        if (path.is_relative() && !folder.empty()) path = std::filesystem::path(folder) / path;
        arrays[spec->file] = spec->kind == ContentKind::anchors ? anchors_load(path.string()) : content_npy_load(path.string());
    }
    return arrays;
}

} // namespace sparsa
