// The random numbers of the content-based families (lsh rotations, FAVOR+ features): one
// generator per (seed, layer, head, stream), identical on every machine and for every engine
// (the CUDA engine draws them on the host with these same functions and uploads them). The batch
// never changes them. docs/pattern-language.md and issue 14's spec define them; this file is
// that definition, so change nothing here without changing the spec.
//
//   key(seed, layer, head, stream) = f(f(f(f(seed) ^ layer) ^ head) ^ stream),
//     f(x) = splitmix64's output function on x + 0x9e3779b97f4a7c15 (random_mix below),
//     layer, head, stream as two's-complement uint64.
//   The stream is splitmix64 with its state starting at key: state += 0x9e3779b97f4a7c15, then
//     the output function of state, per 64-bit draw.
//   uniform = ((draw >> 11) + 1) * 2^-53: the top 53 bits, in (0, 1] (never log(0)).
//   normals: Box-Muller on consecutive pairs (u1, u2): r = sqrt(-2 ln u1), a = 2 pi u2, giving
//     r cos(a) then r sin(a), in double. Normal i of a stream is element i of that sequence
//     however the calls split it (an odd call keeps the sin for the next one).
//
// Streams: lsh uses stream = round (R_r [d, buckets / 2], row-major, the first d * buckets / 2
// normals); favor uses stream = draw (its own layout, engine/content/favor.hpp).
#pragma once

#include <cstdint>
#include <vector>

namespace sparsa {

// splitmix64's output function applied to x + 0x9e3779b97f4a7c15 (one splitmix64 step from state x).
uint64_t random_mix(uint64_t x);

// The starting state of the stream of (seed, layer, head, stream), as above.
uint64_t random_key(uint64_t seed, int64_t layer, int64_t head, int64_t stream);

// One stream: 64-bit draws, uniforms in (0, 1], standard normals (Box-Muller, in double).
class RandomStream {
public:
    RandomStream(uint64_t seed, int64_t layer, int64_t head, int64_t stream);
    explicit RandomStream(uint64_t key) : state_(key) {}

    uint64_t next();      // splitmix64
    double uniform();     // ((next() >> 11) + 1) * 2^-53, in (0, 1]
    double normal();      // r cos(a), then r sin(a) of the same pair, then the next pair

private:
    uint64_t state_;
    double spare_ = 0;
    bool has_spare_ = false;
};

// The first `count` normals of stream (seed, layer, head, stream), in double and rounded to float.
// Throws sparsa::Error for count < 0.
std::vector<double> random_normals_double(uint64_t seed, int64_t layer, int64_t head, int64_t stream, int64_t count);
std::vector<float> random_normals(uint64_t seed, int64_t layer, int64_t head, int64_t stream, int64_t count);

} // namespace sparsa
