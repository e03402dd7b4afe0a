// Buckets of the content-based families lsh and anchors: which bucket each token falls in per
// round (Reformer's angular LSH, or the nearest of k fitted anchors, balanced), the sort by
// (bucket, position) and each token's chunk of the sorted sequence; and the fitting of anchors
// (spherical k-means). docs/pattern-language.md and issue 14's spec define the meaning; the
// pairs these give and the attention over them are in content_attention.hpp.
#pragma once

#include "engine/content/content_arrays.hpp"
#include "engine/content/content_spec.hpp"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace sparsa {

// [SECTION] lsh

// The rotation R_r of round r for (layer, head): [d, buckets / 2], row-major. From the spec's
// file when given (`file`, [rounds, d, buckets / 2]; its shape is checked, the error naming the
// file, the shape found and the shape needed), else the first d * buckets / 2 normals of stream
// (spec.seed, layer, head, round) of random_numbers.hpp, rounded to float.
std::vector<float> lsh_rotation(const ContentSpec& spec, const ContentArray* file, int64_t layer, int64_t head,
                                int64_t round, int64_t d);

// The bucket of each row of x: u = x R (in double, from the float values), bucket = argmax over
// [u_0 .. u_{b/2-1}, -u_0 .. -u_{b/2-1}], ties to the lowest index (so a zero row is bucket 0).
// x: [n, d], rotation: [d, buckets / 2], bucket: [n]. buckets even and >= 2.
void lsh_hash(const float* x, int64_t n, int64_t d, const float* rotation, int64_t buckets, int32_t* bucket);

// [SECTION] anchors

// Balanced assignment of the rows of x to anchors: capacity C = ceil(n / k) rows per anchor;
// rows are taken in decreasing order of their best cosine (over all anchors; ties by position)
// and each goes to the anchor of highest cosine that still has room (ties to the lowest index).
// cos(x, a) = x . a / |x| in double (anchors are unit rows); a zero row has cosine 0 everywhere.
// Computed in a fixed order so that the GPU (engine/cuda/content/content_anchors.cuh) gives the identical
// assignment: |x| = sqrt(sum_i x_i^2) and x . a = sum_i x_i a_i, each a plain sum over
// i = 0 .. d - 1 in double (a product of two floats is exact in double, so a fused multiply-add
// changes no bit), then cos = (x . a) / |x|: IEEE double operations in the same order on both.
// x: [n, d], anchors: [k, d], bucket: [n]. O(n k d + n log n).
void anchors_assign(const float* x, int64_t n, int64_t d, const float* anchors, int64_t k, int32_t* bucket);

// Spherical k-means on the unit rows of x (zero rows are left out): k-means++ start (first
// centre uniform, then each with probability proportional to 1 - its best cosine so far),
// then `iterations` rounds of: each row to its nearest centre (highest cosine, ties lowest),
// each centre the normalised mean of its rows (a centre left with no row keeps its place).
// Random draws: RandomStream(seed, 0, 0, 0)'s uniforms. x: [rows, d]; returns [k, d] unit rows.
// progress(iteration, mean best cosine) is called after each iteration when given.
// Throws sparsa::Error when fewer than k rows are nonzero, or k < 1, or iterations < 0.
std::vector<float> anchors_fit(const float* x, int64_t rows, int64_t d, int64_t k, uint64_t seed, int64_t iterations,
                               int threads, const std::function<void(int64_t, double)>& progress = {});

// [SECTION] sort and chunks

// Tokens in order of (bucket, position), ascending: order[s] = the token at sorted index s.
// bucket: [n] values in [0, buckets); order: [n]. A counting sort, O(n + buckets).
void buckets_sort(const int32_t* bucket, int64_t n, int64_t buckets, int32_t* order);

// One (batch, head)'s walk: per round, each token's bucket, the sorted orders and each token's
// chunk (its sorted index / chunk). Queries and keys share one order when shared_qk.
struct ContentWalk {
    int64_t n = 0, chunk = 1, rounds = 0, buckets = 0;
    bool shared_qk = true;
    std::vector<int32_t> q_bucket, k_bucket;   // [rounds, n] token -> bucket; k_* empty when shared_qk
    std::vector<int32_t> q_order, k_order;     // [rounds, n] sorted index -> token
    std::vector<int32_t> q_chunk, k_chunk;     // [rounds, n] token -> chunk of its sorted index

    const int32_t* query_order(int64_t r) const { return q_order.data() + r * n; }
    const int32_t* key_order(int64_t r) const { return (shared_qk ? q_order : k_order).data() + r * n; }
    const int32_t* query_bucket(int64_t r) const { return q_bucket.data() + r * n; }
    const int32_t* key_bucket(int64_t r) const { return (shared_qk ? q_bucket : k_bucket).data() + r * n; }
    // Whether query q and key k are a pair of round r: k's chunk is q's chunk or the one before.
    bool in_round(int64_t r, int64_t q, int64_t k) const {
        const int32_t gap = q_chunk[static_cast<size_t>(r * n + q)] -
                            (shared_qk ? q_chunk : k_chunk)[static_cast<size_t>(r * n + k)];
        return gap == 0 || gap == 1;
    }
};

// Hashes (lsh) or assigns (anchors) the tokens of one (batch, head) for every round: fills
// walk.q_bucket / k_bucket. q, k: [n, d] of that head; spec: its lsh or anchors spec; file: the
// spec's array (content_array_find), or nullptr for lsh from the seed; chunk: the spec's chunk
// (or the mask block when the spec says 0). Throws sparsa::Error naming `what` for an odd or too
// small bucket count, more buckets than tokens (naming n), anchors without a file, or a file of
// the wrong shape.
ContentWalk content_walk_hash(const ContentSpec& spec, const ContentArray* file, const float* q, const float* k,
                              int64_t n, int64_t d, int64_t layer, int64_t head, int64_t chunk,
                              const std::string& what);

// Buckets another engine already drew for every (batch, head) of a layer (the GPU's walk,
// engine/cuda/content/content_cuda.hpp), to use instead of hashing again, so that reports, allowed sets
// and checks describe what that engine did. Batch-major [batch * heads] entries: q [rounds, n]
// token -> bucket (each token's for both roles when shared_qk), k [rounds, n] the keys' when the
// head's shared_qk is false (else empty); both empty for a head without an lsh or anchors spec.
struct ContentBuckets {
    std::vector<std::vector<int32_t>> q, k;
};

// The walk of given buckets (q_bucket, k_bucket as ContentBuckets holds one head's), checked
// against the spec: sizes [rounds, n] and every bucket in [0, buckets). Throws sparsa::Error
// naming `what`. Sort it with content_walk_sort.
ContentWalk content_walk_given(const ContentSpec& spec, const std::vector<int32_t>& q_bucket, const std::vector<int32_t>& k_bucket,
                               int64_t n, int64_t chunk, const std::string& what);

// Sorts every round's buckets (buckets_sort) and fills the orders and chunks.
void content_walk_sort(ContentWalk& walk);

} // namespace sparsa
