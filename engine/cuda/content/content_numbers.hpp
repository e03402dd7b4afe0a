// lsh's rotations as version 4's hashing takes them (content_hash4.cuh; content_numbers.cu).
#pragma once

#include "engine/cuda/attention_cuda.hpp"

#include <cstdint>
#include <vector>

namespace sparsa {

// The pieces of lsh's rotations mats ([heads][rounds][d][cols] float32) for content_hash_tc:
// [heads][slices][3][64][d] (slice s: the columns g = 64 s .. 64 s + 63 of the rounds side by side,
// g = r * cols + c; zeros past rounds * cols), each value R = hi + mid + lo with every piece
// rounded to `dtype` (bf16 or fp16) and kept as float. Empty when a piece would overflow the
// dtype (fp16 past 65504): then the caller hashes on the float32 cores.
std::vector<float> lsh_rotation_pieces(const std::vector<float>& mats, int64_t heads, int64_t rounds, int64_t cols, int64_t d,
                                       CudaDtype dtype);

} // namespace sparsa
