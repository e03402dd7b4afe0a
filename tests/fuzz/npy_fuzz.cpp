// libFuzzer target over the .npy reader (io/npy.hpp), in memory: the header on its own (as
// NpzReader::Stream reads it) and the whole array. Any crash, sanitizer report or uncaught
// exception is a bug; a sparsa::Error is the correct answer to bad bytes. An array that decodes
// must encode to bytes that decode to the same array (the writer and reader agree).
#include "engine/error.hpp"
#include "io/npy.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > (1U << 20)) return 0;  // the reader's limits are in the header, not in the size
    try {
        if (size >= 12) {
            const uint64_t length = sparsa::npy_header_length(data, size, "fuzz.npy");
            if (length <= size) sparsa::npy_header_decode(data, static_cast<size_t>(length), "fuzz.npy");
        }
    } catch (const sparsa::Error&) {
    }
    try {
        const sparsa::NpyArray array = sparsa::npy_decode(std::vector<uint8_t>(data, data + size), "fuzz.npy");
        const sparsa::NpyArray again = sparsa::npy_decode(sparsa::npy_encode(array), "fuzz.npy (encoded again)");
        if (!(again == array)) std::abort();  // a round trip that changes the array
    } catch (const sparsa::Error&) {
    }
    return 0;
}
