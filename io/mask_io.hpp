// Saving and loading a MaskSet as an .npz file that numpy reads with no sparsa installed; the
// arrays and the JSON header are documented in docs/formats.md.
#pragma once

#include "engine/block_mask.hpp"

#include <cstdint>
#include <string>

namespace sparsa {

// The format written, in the header's "format" and "version"; loaders read versions 1 to it.
// Version 2 dropped version 1's FlexAttention arrays, whose size grew with the square of the
// number of blocks; Python builds them in memory (python/sparsa/flex.py).
constexpr const char* kMaskFormatName = "sparsa.maskset";
constexpr int64_t kMaskFormatVersion = 2;

// Saves `set` to `path` atomically (whole or not at all): the distinct masks as CSR arrays and
// bitmasks, and a JSON header with the script and params; the size grows with the kept blocks
// (8 bytes a kept block, B * B / 8 more a partial one, 8 a query block row of a distinct mask). Throws sparsa::Error for an
// invalid set (every mask is validated first) or a failed write. force_zip64 writes ZIP64
// records even when no size needs them (for tests).
void mask_set_save(const MaskSet& set, const std::string& path, bool force_zip64 = false);

// Loads a file written by mask_set_save, checking everything (header, shapes, every mask's
// invariants); equal masks come back shared. Version 1 files load too (their Flex arrays are
// skipped). Throws sparsa::Error naming the file and the array for a foreign, newer or
// inconsistent file; for a newer one the message gives the `sparsa compile` command that
// writes it again.
MaskSet mask_set_load(const std::string& path);

} // namespace sparsa
