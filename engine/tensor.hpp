// Attention tensors: an owning, row-major array of shape [batch, heads, n, d], small and plain,
// so the reference, the engines, the CLI and the tests pass the same value around.
#pragma once

#include "engine/error.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

// The shape every attention tensor has; lse uses d = 1.
struct TensorShape {
    int64_t batch = 0, heads = 0, n = 0, d = 0;

    int64_t size() const { return batch * heads * n * d; }
    friend bool operator==(const TensorShape&, const TensorShape&) = default;
};

// "[2, 4, 100, 64]"
inline std::string tensor_shape_text(const TensorShape& s) {
    return "[" + std::to_string(s.batch) + ", " + std::to_string(s.heads) + ", " + std::to_string(s.n) + ", " +
           std::to_string(s.d) + "]";
}

// Elements T in C order: element [b, h, i, j] is data[((b * heads + h) * n + i) * d + j].
template <typename T> struct BasicTensor {
    TensorShape shape;
    std::vector<T> data;   // [batch, heads, n, d]

    // Row i of head (b, h): d contiguous elements. A head is n * d contiguous elements.
    T* row(int64_t b, int64_t h, int64_t i) { return data.data() + ((b * shape.heads + h) * shape.n + i) * shape.d; }
    const T* row(int64_t b, int64_t h, int64_t i) const {
        return data.data() + ((b * shape.heads + h) * shape.n + i) * shape.d;
    }
    T& at(int64_t b, int64_t h, int64_t i, int64_t j) { return row(b, h, i)[j]; }
    const T& at(int64_t b, int64_t h, int64_t i, int64_t j) const { return row(b, h, i)[j]; }
};

using Tensor = BasicTensor<float>;    // what the engines take and give
using TensorD = BasicTensor<double>;  // what the reference gives

// A tensor of zeros. Throws sparsa::Error for a negative dimension or more than 2^56 elements.
template <typename T> BasicTensor<T> tensor_zeros(const TensorShape& shape) {
    const int64_t dims[4] = {shape.batch, shape.heads, shape.n, shape.d};
    int64_t elements = 1;
    for (int64_t dim : dims) {
        if (dim < 0 || (dim > 0 && elements > (int64_t{1} << 56) / dim)) {
            throw Error("tensor " + tensor_shape_text(shape) + " is not a valid size (dimensions >= 0, at most 2^56 elements)");
        }
        elements *= dim;
    }
    BasicTensor<T> t;
    t.shape = shape;
    t.data.assign(static_cast<size_t>(elements), T{0});
    return t;
}

// Element-wise conversion (float -> double is exact).
template <typename To, typename From> BasicTensor<To> tensor_cast(const BasicTensor<From>& from) {
    BasicTensor<To> to;
    to.shape = from.shape;
    to.data.assign(from.data.begin(), from.data.end());
    return to;
}

// Standard normal values from `seed`, the same on every machine: element e is a function of
// (seed, e) only (splitmix64, then Box-Muller), so tensors of any size are reproducible.
inline Tensor tensor_random(const TensorShape& shape, uint64_t seed) {
    Tensor t = tensor_zeros<float>(shape);
    auto mix = [](uint64_t x) {
        x += 0x9e3779b97f4a7c15ULL;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        return x ^ (x >> 31);
    };
    const uint64_t key = mix(seed);
    for (size_t e = 0; e < t.data.size(); e += 2) {
        const uint64_t bits = mix(key ^ mix(e));
        // Two uniforms in (0, 1]: never log(0).
        const double u1 = (static_cast<double>(bits >> 40) + 1.0) / 16777216.0;
        const double u2 = (static_cast<double>(bits & 0xffffff) + 1.0) / 16777216.0;
        const double radius = std::sqrt(-2.0 * std::log(u1)), angle = 6.283185307179586 * u2;
        t.data[e] = static_cast<float>(radius * std::cos(angle));
        if (e + 1 < t.data.size()) t.data[e + 1] = static_cast<float>(radius * std::sin(angle));
    }
    return t;
}

// "[b, h, i, j]": the index of element e (C order) of a tensor of this shape.
inline std::string tensor_index_text(const TensorShape& s, size_t e) {
    int64_t rest = static_cast<int64_t>(e);
    const int64_t j = rest % s.d;
    rest /= s.d;
    const int64_t i = rest % s.n;
    rest /= s.n;
    const int64_t h = rest % s.heads, b = rest / s.heads;
    return "[" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(i) + ", " + std::to_string(j) + "]";
}

// Throws sparsa::Error when an element of `t` is NaN or infinite, naming `name` and the first
// bad index [b, h, i, j], e.g. "K has NaN at [0, 1, 5, 3]".
template <typename T> void tensor_check_finite(const BasicTensor<T>& t, const std::string& name) {
    for (size_t e = 0; e < t.data.size(); ++e) {
        if (std::isfinite(t.data[e])) continue;
        throw Error(name + " has " + (std::isnan(t.data[e]) ? "NaN" : "Inf") + " at " + tensor_index_text(t.shape, e) +
                    " (attention needs finite inputs: check what produced " + name + ")");
    }
}

} // namespace sparsa
