// The content-based families' random numbers: splitmix64 streams keyed by (seed, layer, head,
// stream), uniforms from the top 53 bits, Box-Muller normals (random_numbers.hpp says exactly).
#include "engine/content/random_numbers.hpp"

#include "engine/error.hpp"

#include <cmath>
#include <string>

namespace sparsa {

namespace {
constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ULL;   // splitmix64's increment
constexpr double kTwoPi = 6.283185307179586476925286766559;
} // namespace

uint64_t random_mix(uint64_t x) {
    uint64_t z = x + kGamma;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t random_key(uint64_t seed, int64_t layer, int64_t head, int64_t stream) {
    uint64_t h = random_mix(seed);
    h = random_mix(h ^ static_cast<uint64_t>(layer));
    h = random_mix(h ^ static_cast<uint64_t>(head));
    return random_mix(h ^ static_cast<uint64_t>(stream));
}

RandomStream::RandomStream(uint64_t seed, int64_t layer, int64_t head, int64_t stream)
    : state_(random_key(seed, layer, head, stream)) {}

uint64_t RandomStream::next() {
    const uint64_t out = random_mix(state_);
    state_ += kGamma;
    return out;
}

double RandomStream::uniform() { return static_cast<double>((next() >> 11) + 1) * 0x1.0p-53; }

double RandomStream::normal() {
    if (has_spare_) {
        has_spare_ = false;
        return spare_;
    }
    const double u1 = uniform(), u2 = uniform();
    const double radius = std::sqrt(-2.0 * std::log(u1)), angle = kTwoPi * u2;
    spare_ = radius * std::sin(angle);
    has_spare_ = true;
    return radius * std::cos(angle);
}

std::vector<double> random_normals_double(uint64_t seed, int64_t layer, int64_t head, int64_t stream, int64_t count) {
    if (count < 0) {
        throw Error("random_normals: count " + std::to_string(count) + " is negative (ask for 0 or more normals)");
    }
    RandomStream rs(seed, layer, head, stream);
    std::vector<double> out(static_cast<size_t>(count));
    for (double& x : out) x = rs.normal();
    return out;
}

std::vector<float> random_normals(uint64_t seed, int64_t layer, int64_t head, int64_t stream, int64_t count) {
    const std::vector<double> normals = random_normals_double(seed, layer, head, stream, count);
    return std::vector<float>(normals.begin(), normals.end());
}

} // namespace sparsa
