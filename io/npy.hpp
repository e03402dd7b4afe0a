// numpy's .npy format: tensors in and out of sparsa as little-endian, C-order arrays, in memory
// (for .npz members) or as files (written atomically, large ones streamed).
#pragma once

#include "io/atomic_file.hpp"

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace sparsa {

// The dtypes sparsa reads and writes, each little-endian ("<f4") or byte-sized ("|b1").
enum class NpyDtype : uint8_t { boolean, uint8, int32, int64, uint64, float16, float32, float64 };

size_t npy_dtype_size(NpyDtype dtype);         // bytes per element
const char* npy_dtype_name(NpyDtype dtype);    // numpy's name: "bool", "float16", ...
const char* npy_dtype_descr(NpyDtype dtype);   // the header's descr: "|b1", "<f2", ...

// An array: dtype, shape, and its elements in C order, little-endian.
struct NpyArray {
    NpyDtype dtype = NpyDtype::uint8;
    std::vector<int64_t> shape;   // [] for a scalar
    std::vector<uint8_t> data;    // [product of shape * npy_dtype_size(dtype)] bytes

    int64_t size() const;         // elements: the product of shape
    friend bool operator==(const NpyArray&, const NpyArray&) = default;
};

// The dtype of a C++ element type; bool and float16 have none (use NpyArray's bytes).
template <typename T> constexpr NpyDtype npy_dtype_of() {
    if constexpr (std::is_same_v<T, uint8_t>) return NpyDtype::uint8;
    else if constexpr (std::is_same_v<T, int32_t>) return NpyDtype::int32;
    else if constexpr (std::is_same_v<T, int64_t>) return NpyDtype::int64;
    else if constexpr (std::is_same_v<T, uint64_t>) return NpyDtype::uint64;
    else if constexpr (std::is_same_v<T, float>) return NpyDtype::float32;
    else if constexpr (std::is_same_v<T, double>) return NpyDtype::float64;
    else static_assert(sizeof(T) == 0, "no npy dtype for this type");
}

// Elements of a shape (1 for []), checked: throws sparsa::Error naming `what` for a negative
// dimension or more than 2^59 elements (so that bytes always fit in int64_t).
int64_t npy_shape_elements(const std::vector<int64_t>& shape, const std::string& what);
std::string npy_shape_text(const std::vector<int64_t>& shape);   // "[2, 3]"

// An array of `values` with `shape` (their counts must agree).
template <typename T> NpyArray npy_array_make(std::vector<int64_t> shape, const std::vector<T>& values) {
    NpyArray a;
    a.dtype = npy_dtype_of<T>();
    a.shape = std::move(shape);
    a.data.resize(values.size() * sizeof(T));
    if (!values.empty()) std::memcpy(a.data.data(), values.data(), a.data.size());
    return a;
}

// The elements of `array` as T; throws sparsa::Error naming `what` when its dtype is not T's.
void npy_array_check_dtype(const NpyArray& array, NpyDtype dtype, const std::string& what);
template <typename T> std::vector<T> npy_array_values(const NpyArray& array, const std::string& what) {
    npy_array_check_dtype(array, npy_dtype_of<T>(), what);
    std::vector<T> values(array.data.size() / sizeof(T));
    if (!values.empty()) std::memcpy(values.data(), array.data.data(), values.size() * sizeof(T));
    return values;
}

// [SECTION] bytes in, bytes out

// The header of an .npy file: magic, version, length, and the dict padded to 64 bytes.
std::vector<uint8_t> npy_header_encode(NpyDtype dtype, const std::vector<int64_t>& shape);

// What a header says, and where the data starts.
struct NpyHeader {
    NpyDtype dtype = NpyDtype::uint8;
    std::vector<int64_t> shape;
    uint64_t data_offset = 0;   // bytes before the data
    uint64_t data_bytes = 0;    // bytes of data the shape needs
};

// Bytes of header (preamble + dict) of the npy data starting at `bytes`; `size` >= 12 bytes
// must be available. Throws for a bad magic or an unsupported version.
uint64_t npy_header_length(const uint8_t* bytes, size_t size, const std::string& what);
// Parses a whole header (`size` >= npy_header_length bytes). Throws sparsa::Error naming `what`:
// not an npy file, unsupported version, Fortran order, unsupported or big-endian dtype.
NpyHeader npy_header_decode(const uint8_t* bytes, size_t size, const std::string& what);

// A whole .npy file in memory, and back. decode checks the data is exactly what the shape needs.
std::vector<uint8_t> npy_encode(const NpyArray& array);
NpyArray npy_decode(std::vector<uint8_t> bytes, const std::string& what);

// [SECTION] files

// Writes `array` to `path` atomically.
void npy_save(const NpyArray& array, const std::string& path);
// Reads an .npy file; errors name the path and say what to do.
NpyArray npy_load(const std::string& path);

// Writes an .npy file in pieces, without holding the array: the header, then write() calls
// that add up to exactly the shape's bytes, then commit(). Atomic like AtomicFile.
class NpyWriter {
public:
    NpyWriter(const std::string& path, NpyDtype dtype, const std::vector<int64_t>& shape);
    // Appends `bytes` bytes of elements (C order, little-endian).
    void write(const void* data, size_t bytes);
    // Checks every byte was written and makes the file appear.
    void commit();

private:
    AtomicFile file_;
    uint64_t expected_ = 0, written_ = 0;
};

} // namespace sparsa
