// Atomic writes (temporary file + fsync + rename) and bounds-checked reads, with errors that name
// the path and the OS reason.
#include "io/atomic_file.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace sparsa {

namespace {

constexpr size_t kBufferBytes = size_t{1} << 20;

// A name no other writer picks: pid, time and a per-process counter through splitmix64.
std::string temp_suffix() {
    static std::atomic<uint64_t> counter{0};
    uint64_t x = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                 (counter.fetch_add(1) * 0x9e3779b97f4a7c15ULL);
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    char text[64];
    std::snprintf(text, sizeof text, ".tmp-%ld-%016llx", static_cast<long>(::getpid()), static_cast<unsigned long long>(x));
    return text;
}

// Writes all of [data, data + bytes) at the file's position (pos < 0) or at `pos`; returns errno or 0.
int write_fully(int fd, const uint8_t* data, size_t bytes, int64_t pos) {
    while (bytes > 0) {
        const size_t chunk = std::min<size_t>(bytes, size_t{1} << 30);
        ssize_t done = pos < 0 ? ::write(fd, data, chunk) : ::pwrite(fd, data, chunk, static_cast<off_t>(pos));
        if (done < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (done == 0) return EIO;
        data += done;
        bytes -= static_cast<size_t>(done);
        if (pos >= 0) pos += done;
    }
    return 0;
}

} // namespace

std::string os_error_text(int err) {
    std::string text = std::error_code(err, std::generic_category()).message();
    switch (err) {
    case ENOENT: return text + " (does the folder exist?)";
    case EACCES:
    case EPERM: return text + " (check the permissions of the file and its folder)";
    case ENOSPC:
    case EDQUOT: return text + " (is the disk full?)";
    case EROFS: return text + " (the file system is read-only; write somewhere else)";
    case EISDIR: return text + " (give a file name, not a folder)";
    case ENOTDIR: return text + " (a part of the path is a file, not a folder)";
    case ENAMETOOLONG: return text + " (use a shorter path)";
    default: return text;
    }
}

// [SECTION] AtomicFile

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
    const std::filesystem::path dest(path);
    if (path.empty() || !dest.has_filename()) {
        throw Error("cannot write '" + path + "': " + os_error_text(EISDIR));
    }
    const std::filesystem::path dir = dest.parent_path();
    for (int attempt = 0; attempt < 16 && fd_ < 0; ++attempt) {
        std::string name(".");  // (built in steps: GCC 12 warns falsely on "." + string)
        name += dest.filename().string();
        name += temp_suffix();
        temp_ = (dir / name).string();
        fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd_ < 0 && errno != EEXIST && errno != EINTR) break;
    }
    if (fd_ < 0) {
        const int err = errno;
        temp_.clear();
        throw Error("cannot write '" + path_ + "': " + os_error_text(err));
    }
    buffer_.reserve(kBufferBytes);
}

AtomicFile::~AtomicFile() {
    if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!temp_.empty()) ::unlink(temp_.c_str());
    temp_.clear();
    buffer_.clear();
}

void AtomicFile::fail(int err) {
    discard();
    throw Error("cannot write '" + path_ + "': " + os_error_text(err));
}

void AtomicFile::flush() {
    if (buffer_.empty()) return;
    if (int err = write_fully(fd_, buffer_.data(), buffer_.size(), -1); err != 0) fail(err);
    buffer_.clear();
}

void AtomicFile::write(const void* data, size_t bytes) {
    if (fd_ < 0) {
        throw Error("cannot write '" + path_ + "': the file is " + (committed_ ? "already committed" : "closed after an error"));
    }
    const auto* p = static_cast<const uint8_t*>(data);
    if (buffer_.size() + bytes > kBufferBytes) flush();
    if (bytes >= kBufferBytes) {
        if (int err = write_fully(fd_, p, bytes, -1); err != 0) fail(err);
    } else {
        buffer_.insert(buffer_.end(), p, p + bytes);
    }
    size_ += bytes;
}

void AtomicFile::write_at(uint64_t offset, const void* data, size_t bytes) {
    if (fd_ < 0) {
        throw Error("cannot write '" + path_ + "': the file is " + (committed_ ? "already committed" : "closed after an error"));
    }
    if (offset > size_ || bytes > size_ - offset) {
        throw Error("cannot write '" + path_ + "': patch at offset " + std::to_string(offset) +
                    " runs past the " + std::to_string(size_) + " bytes written (internal error)");
    }
    flush();
    if (int err = write_fully(fd_, static_cast<const uint8_t*>(data), bytes, static_cast<int64_t>(offset)); err != 0) {
        fail(err);
    }
}

void AtomicFile::commit() {
    if (fd_ < 0) {
        throw Error("cannot write '" + path_ + "': the file is " + (committed_ ? "already committed" : "closed after an error"));
    }
    flush();
    if (::fsync(fd_) != 0) fail(errno);
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail(errno);
    if (::rename(temp_.c_str(), path_.c_str()) != 0) fail(errno);
    committed_ = true;
    temp_.clear();
    // Make the rename itself durable; a failure here loses nothing already visible.
    std::filesystem::path dir = std::filesystem::path(path_).parent_path();
    if (dir.empty()) dir = ".";
    if (int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
        (void)::fsync(dfd);
        ::close(dfd);
    }
}

// [SECTION] InputFile

InputFile::InputFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
        const int err = errno;
        std::string text = std::error_code(err, std::generic_category()).message();
        throw Error("cannot read '" + path + "': " + (err == ENOENT ? text + " (check the path)" : os_error_text(err)));
    }
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
        const int err = errno;
        ::close(fd_);
        throw Error("cannot read '" + path + "': " + os_error_text(err));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd_);
        throw Error("cannot read '" + path + "': " + (S_ISDIR(st.st_mode) ? "it is a folder, not a file" : "not a regular file"));
    }
    size_ = static_cast<uint64_t>(st.st_size);
}

InputFile::~InputFile() {
    if (fd_ >= 0) ::close(fd_);
}

void InputFile::read_at(uint64_t offset, void* data, size_t bytes) const {
    auto* p = static_cast<uint8_t*>(data);
    while (bytes > 0) {
        const size_t chunk = std::min<size_t>(bytes, size_t{1} << 30);
        ssize_t done = ::pread(fd_, p, chunk, static_cast<off_t>(offset));
        if (done < 0) {
            if (errno == EINTR) continue;
            throw Error("cannot read '" + path_ + "': " + os_error_text(errno));
        }
        if (done == 0) throw Error("cannot read '" + path_ + "': the file ended early (was it changed while reading?)");
        p += done;
        bytes -= static_cast<size_t>(done);
        offset += static_cast<uint64_t>(done);
    }
}

std::vector<uint8_t> InputFile::read_all() const {
    std::vector<uint8_t> bytes(static_cast<size_t>(size_));
    read_at(0, bytes.data(), bytes.size());
    return bytes;
}

} // namespace sparsa
