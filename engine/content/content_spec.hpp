// What a content-based head does (Reformer's LSH, anchor buckets, Performer's FAVOR+): the part
// of a (layer, head) that is only realised once Q and K are seen. The language (dsl/) writes it
// into MaskSet::content beside the head's fixed BlockMask; the engines (engine/content/, CPU, and
// engine/cuda/, GPU) read it; mask files save it. docs/pattern-language.md defines the meaning.
#pragma once

#include <cstdint>
#include <string>

namespace sparsa {

enum class ContentKind : int32_t {
    lsh = 1,      // Reformer's angular LSH buckets, sorted and chunked
    anchors = 2,  // nearest of k fitted anchor vectors (balanced), sorted and chunked
    favor = 3,    // Performer's FAVOR+: positive orthogonal random features (not a mask)
};

struct ContentSpec {
    ContentKind kind = ContentKind::lsh;
    // lsh: buckets (even, >= 2), anchors: k anchors (>= 1). favor: unused (0).
    int64_t buckets = 0;
    // lsh, anchors: hashing rounds (>= 1); the allowed set is the union of the rounds' pairs.
    int64_t rounds = 1;
    // lsh, anchors: tokens per chunk of the sorted sequence (>= 1); the script's block by default.
    int64_t chunk = 0;
    // lsh: rotations, favor: features are drawn from (seed, layer, head, round or draw).
    uint64_t seed = 0;
    // lsh, anchors: true: one bucket per token, from its query (Reformer ties Q and K); false:
    // queries and keys are bucketed and sorted separately.
    bool shared_qk = true;
    // favor: random features m (>= 1).
    int64_t features = 0;
    // favor: features are redrawn every `redraw` calls (0: never; the draw index is the caller's).
    int64_t redraw = 0;
    // The script's `causal` statement: pairs with k > q are never allowed (favor: prefix sums).
    bool causal = false;
    // Explicit random numbers or fitted anchors instead of the seed's (a .npy / .npz path: the
    // script's, resolved against the script's folder and stored absolute; "" for none): lsh: rotations
    // [rounds, d, buckets / 2] float32; anchors: the fitted anchors file; favor: features [m, d].
    std::string file;
};

} // namespace sparsa
