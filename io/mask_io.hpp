// Saving and loading a MaskSet as an .npz file that numpy reads with no sparsa installed; the
// arrays and the JSON header are documented in docs/formats.md.
#pragma once

#include "engine/block_mask.hpp"
#include "io/content_spec_rules.hpp"

#include <cstdint>
#include <string>

namespace sparsa {

// The format written, in the header's "format" and "version"; loaders read versions 1 to it.
// Version 2 dropped version 1's FlexAttention arrays, whose size grew with the square of the
// number of blocks; Python builds them in memory (python/sparsa/flex.py). Version 3 adds the
// content-based heads (MaskSet::content) to the header; a set without them is still written as
// version 2, which older sparsa reads.
constexpr const char* kMaskFormatName = "sparsa.maskset";
constexpr int64_t kMaskFormatVersion = 3;

// [SECTION] Content specs in files

// content_kind_name and content_spec_problem: io/content_spec_rules.hpp.

// The JSON object a spec is saved as (docs/formats.md): {"kind": "lsh", "buckets": 64, "rounds":
// 2, "chunk": 64, "seed": 0, "shared_qk": true, "causal": false, "file": ""}; anchors name their
// file "fit" and their count "k", favor has "features", "seed", "redraw", "causal", "file". The
// mask file's header, `sparsa stats --json` and Python's MaskSet.content all use it.
std::string content_spec_json(const ContentSpec& spec);

// [SECTION] Mask sets

// Saves `set` to `path` atomically (whole or not at all): the distinct masks as CSR arrays and
// bitmasks, and a JSON header with the script and params; the size grows with the kept blocks
// (8 bytes a kept block, B * B / 8 more a partial one, 8 a query block row of a distinct mask). Throws sparsa::Error for an
// invalid set (every mask is validated first) or a failed write. force_zip64 writes ZIP64
// records even when no size needs them (for tests).
void mask_set_save(const MaskSet& set, const std::string& path, bool force_zip64 = false);

// Content-based heads (set.content) go into the header as a list of distinct specs and an
// index per (layer, head); a file a spec names (anchors, rotations, features) is not copied: the
// header records its absolute path, size and CRC-32, and saving throws when it cannot be read.
//
// Loads a file written by mask_set_save, checking everything (header, shapes, every mask's
// invariants); equal masks and equal specs come back shared. A content spec's file that exists
// but is not the one saved (size or CRC-32) is refused; a missing one loads (attention says so
// when it runs). Version 1 files load too (their Flex arrays are
// skipped). Throws sparsa::Error naming the file and the array for a foreign, newer or
// inconsistent file; for a newer one the message gives the `sparsa compile` command that
// writes it again.
MaskSet mask_set_load(const std::string& path);

} // namespace sparsa
