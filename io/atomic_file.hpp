// Files written whole or not at all (temporary file, fsync, rename), and bounds-checked reads;
// every error names the path and the operating system's reason.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

// Writes `path` atomically: bytes go to a temporary file beside it (".NAME.tmp-PID-RANDOM");
// commit() flushes, fsyncs and renames it over `path`. If anything fails, or the AtomicFile is
// destroyed without commit(), the temporary file is removed and `path` is left as it was.
// Errors are sparsa::Error: "cannot write 'out/x.npz': No such file or directory (does the
// folder exist?)".
class AtomicFile {
public:
    explicit AtomicFile(const std::string& path);
    ~AtomicFile();
    AtomicFile(const AtomicFile&) = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;

    // Appends bytes (buffered).
    void write(const void* data, size_t bytes);
    // Overwrites bytes already written, at [offset, offset + bytes) (to patch a header).
    void write_at(uint64_t offset, const void* data, size_t bytes);
    // Bytes written so far.
    uint64_t size() const { return size_; }
    // Makes the file appear at `path`. After it, nothing more can be written.
    void commit();

    const std::string& path() const { return path_; }
    const std::string& temp_path() const { return temp_; }

private:
    void flush();
    [[noreturn]] void fail(int err);
    void discard() noexcept;

    std::string path_, temp_;
    int fd_ = -1;
    bool committed_ = false;
    uint64_t size_ = 0;
    std::vector<uint8_t> buffer_;
};

// A file opened for reading at given offsets. Errors are sparsa::Error naming the path.
class InputFile {
public:
    explicit InputFile(const std::string& path);
    ~InputFile();
    InputFile(const InputFile&) = delete;
    InputFile& operator=(const InputFile&) = delete;

    uint64_t size() const { return size_; }
    // Reads exactly `bytes` at `offset`; throws when the file ends first.
    void read_at(uint64_t offset, void* data, size_t bytes) const;
    // The whole file.
    std::vector<uint8_t> read_all() const;

    const std::string& path() const { return path_; }

private:
    std::string path_;
    int fd_ = -1;
    uint64_t size_ = 0;
};

// "No such file or directory (does the folder exist?)": the OS reason for errno `err`, with a
// hint on what to do where one helps.
std::string os_error_text(int err);

} // namespace sparsa
