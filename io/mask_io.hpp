// Saving and loading a MaskSet as an .npz file that numpy reads with no sparsa installed; the
// arrays, the JSON header and FlexAttention's layout are documented in docs/formats.md.
#pragma once

#include "engine/block_mask.hpp"

#include <cstdint>
#include <string>

namespace sparsa {

// The format written, in the header's "format" and "version"; loaders read versions up to it.
constexpr const char* kMaskFormatName = "sparsa.maskset";
constexpr int64_t kMaskFormatVersion = 1;

// Saves `set` to `path` atomically (whole or not at all): the distinct masks as CSR arrays and
// bitmasks, FlexAttention's kv_num_blocks / kv_indices layout, and a JSON header with the script
// and params. Throws sparsa::Error for an invalid set (every mask is validated first) or a failed
// write. force_zip64 writes ZIP64 records even when no size needs them (for tests).
void mask_set_save(const MaskSet& set, const std::string& path, bool force_zip64 = false);

// Loads a file written by mask_set_save, checking everything (header, shapes, every mask's
// invariants, the Flex arrays against the CSR ones); equal masks come back shared. Throws
// sparsa::Error naming the file and the array for a foreign, newer or inconsistent file.
MaskSet mask_set_load(const std::string& path);

// FlexAttention's W, the last dimension of kv_indices and full_kv_indices: the most partial or
// full blocks any query block row of any mask keeps, at least 1.
int64_t mask_set_flex_width(const MaskSet& set);

} // namespace sparsa
