// The files of content-based heads: lsh rotations and FAVOR+ features (.npy float32) and fitted
// anchors (.npz: `anchors` [rounds, k, d] float32 and a JSON `header`, like the mask files),
// read into the arrays the engines take (engine/content/content_arrays.hpp), and anchors written.
// docs/formats.md describes the anchors file.
#pragma once

#include "engine/block_mask.hpp"
#include "engine/content/content_arrays.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

// The anchors file's "format" and "version".
constexpr const char* kAnchorsFormatName = "sparsa-anchors";
constexpr int64_t kAnchorsFormatVersion = 1;

// What fitted a set of anchors, saved in the header.
struct AnchorsInfo {
    std::vector<int64_t> q_shape, k_shape;   // the calibration inputs' shapes
    int64_t rows = 0;                        // nonzero rows of Q and K pooled (the points clustered)
    uint64_t seed = 0;                       // round r was started from seed + r (+ i * rounds for restart i)
    int64_t iterations = 0;
    int64_t restarts = 1;                    // starts tried a round, the best mean cosine kept
    std::vector<uint64_t> start_seed;        // [rounds]: the k-means++ seed of the start kept
    std::vector<double> mean_cosine;         // [rounds]: each point's cosine to its anchor, averaged
};

// Writes `anchors` ([rounds, k, d] float32 in C order, unit rows) and the header atomically.
// Throws sparsa::Error for values that do not fill the shape or are not finite.
void anchors_save(const std::string& path, const ContentArray& anchors, const AnchorsInfo& info);

// Reads an anchors file: checks the header's format and version, that `anchors` is float32 of
// rank 3 with finite unit rows (|norm - 1| <= 1e-3). Errors name the path and say what to do.
ContentArray anchors_load(const std::string& path, AnchorsInfo* info = nullptr);

// Reads an .npy array of float32 (rotations, features): any shape; the engine checks it.
ContentArray content_npy_load(const std::string& path);

// The files every content spec of `masks` names, read by kind (anchors: anchors_load, lsh and
// favor: content_npy_load), keyed by ContentSpec::file as written; a relative path is taken
// against `folder` when it is not "" (the script's folder). Each file is read once.
ContentArrays content_files_load(const MaskSet& masks, const std::string& folder = "");

} // namespace sparsa
