// numpy's .npz format: a ZIP archive of .npy members, stored uncompressed as np.savez writes it,
// with ZIP64 records for members or offsets past 4 GiB. Reading checks every offset and CRC-32.
#pragma once

#include "io/atomic_file.hpp"
#include "io/npy.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

// CRC-32 as zip uses it (IEEE 802.3, reflected). Start with crc = 0; feed pieces in order.
uint32_t crc32_update(uint32_t crc, const void* data, size_t bytes);

// Writes an .npz file atomically. Each array is a member NAME.npy; add() takes a whole array,
// begin()/write()/end() stream one whose bytes are produced piece by piece.
class NpzWriter {
public:
    // force_zip64 writes ZIP64 records even for small files (tests use it to exercise them).
    explicit NpzWriter(const std::string& path, bool force_zip64 = false);

    void add(const std::string& name, const NpyArray& array);

    void begin(const std::string& name, NpyDtype dtype, const std::vector<int64_t>& shape);
    void write(const void* data, size_t bytes);  // elements in C order, little-endian
    void end();                                   // checks the shape's bytes were all written

    // Writes the central directory and makes the file appear at `path`.
    void commit();

private:
    struct Member {
        std::string name;       // "NAME.npy"
        uint64_t offset = 0;    // of its local header
        uint64_t size = 0;      // bytes of the .npy member
        uint32_t crc = 0;
    };
    bool member_zip64(const Member& m) const;

    AtomicFile file_;
    bool force_zip64_;
    std::vector<Member> members_;
    bool open_ = false;
    uint64_t expected_ = 0, written_ = 0;  // data bytes of the open member
};

// Reads an .npz file: the constructor checks the archive's structure (end record, central
// directory, every local header and member bound); read() checks a member's CRC-32 and parses
// it. Errors are sparsa::Error naming the file (and member) and saying what to do.
class NpzReader {
public:
    explicit NpzReader(const std::string& path);

    const std::string& path() const { return file_.path(); }
    // Array names (member names without ".npy") in the archive's order.
    std::vector<std::string> names() const;
    bool has(const std::string& name) const;

    // The whole array NAME.npy, CRC-checked.
    NpyArray read(const std::string& name) const;

    // Reads NAME.npy's data in order without holding it all, 1 MiB at a time; the CRC-32 is
    // checked when the last piece comes in from the file (at once for members under 1 MiB).
    // Must not outlive its NpzReader.
    class Stream {
    public:
        const NpyHeader& header() const { return header_; }
        void read(void* data, size_t bytes);

    private:
        friend class NpzReader;
        void fill(uint8_t* data, size_t bytes);
        const InputFile* file_ = nullptr;
        std::string what_;
        NpyHeader header_;
        uint64_t pos_ = 0, end_ = 0;   // absolute offsets in the file
        uint32_t crc_ = 0, expected_crc_ = 0;
        std::vector<uint8_t> buffer_;
        size_t buffer_pos_ = 0;
    };
    Stream stream(const std::string& name) const;

private:
    struct Member {
        std::string name;       // as stored, "NAME.npy"
        uint64_t data = 0;      // offset of its first byte
        uint64_t size = 0;
        uint32_t crc = 0;
    };
    const Member& member(const std::string& name) const;
    std::string member_what(const Member& m) const;

    InputFile file_;
    std::vector<Member> members_;
};

} // namespace sparsa
