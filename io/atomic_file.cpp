// Atomic writes (temporary file + fsync + rename; devices and descriptors written directly), a
// group of them renamed together, the temporary files a signal handler removes, and bounds-checked
// reads, with errors that name the path and the OS reason.
#include "io/atomic_file.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
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

// [SECTION] Output targets

namespace {

// The descriptor a name like /dev/stdout or /proc/self/fd/3 stands for, else -1.
int descriptor_named(const std::string& path) {
    const std::string p = std::filesystem::path(path).lexically_normal().string();
    if (p == "/dev/stdin") return 0;
    if (p == "/dev/stdout") return 1;
    if (p == "/dev/stderr") return 2;
    for (const char* prefix : {"/dev/fd/", "/proc/self/fd/"}) {
        const size_t len = std::strlen(prefix);
        if (p.size() <= len || p.size() > len + 9 || p.compare(0, len, prefix) != 0) continue;
        if (p.find_first_not_of("0123456789", len) != std::string::npos) return -1;
        return std::stoi(p.substr(len));
    }
    return -1;
}

} // namespace

OutputTarget output_target_resolve(const std::string& path) {
    OutputTarget t;
    std::string p = path;
    for (int hop = 0;; ++hop) {
        if (const int fd = descriptor_named(p); fd >= 0) {
            t.fd = fd;
            t.exists = t.special = true;
            return t;
        }
        struct stat st {};
        if (::lstat(p.c_str(), &st) != 0) {  // not there, or unreachable: the write will say why
            t.file = p;
            return t;
        }
        if (!S_ISLNK(st.st_mode)) {
            t.file = p;
            t.exists = true;
            t.folder = S_ISDIR(st.st_mode);
            t.special = !S_ISREG(st.st_mode);
            return t;
        }
        if (hop == 40) throw Error("cannot write '" + path + "': " + os_error_text(ELOOP) + " (a chain of more than 40 links)");
        std::string link(static_cast<size_t>(st.st_size > 0 ? st.st_size : 255) + 1, '\0');
        const ssize_t got = ::readlink(p.c_str(), link.data(), link.size());
        if (got < 0 || static_cast<size_t>(got) >= link.size()) {  // changed under us: let the write report it
            t.file = p;
            return t;
        }
        link.resize(static_cast<size_t>(got));
        const std::filesystem::path parent = std::filesystem::path(p).parent_path();
        p = link.front() == '/' || parent.empty() ? link : (parent / link).string();
    }
}

// [SECTION] The temporary files a signal handler removes

namespace {

// A fixed table, so that the handler reads it without allocating or locking: a slot's path is
// complete before its state becomes kLive. Paths longer than a slot are written unprotected.
constexpr int kTempSlots = 64;
constexpr size_t kTempPathBytes = 4096;
constexpr int kFree = 0, kFilling = 1, kLive = 2;
struct TempSlot {
    std::atomic<int> state;
    char path[kTempPathBytes];
};
TempSlot g_temp_slots[kTempSlots];
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs lock-free atomics");

// Registered before the file is created, so no moment has a file the handler does not know.
int temp_register(const std::string& path) noexcept {
    if (path.size() >= kTempPathBytes) return -1;
    for (int i = 0; i < kTempSlots; ++i) {
        int expected = kFree;
        if (!g_temp_slots[i].state.compare_exchange_strong(expected, kFilling)) continue;
        std::memcpy(g_temp_slots[i].path, path.c_str(), path.size() + 1);
        g_temp_slots[i].state.store(kLive, std::memory_order_release);
        return i;
    }
    return -1;
}

void temp_unregister(int& slot) noexcept {
    if (slot >= 0) g_temp_slots[slot].state.store(kFree, std::memory_order_release);
    slot = -1;
}

void temp_cleanup_handler(int sig) {
    const int saved = errno;
    temp_files_remove_all();
    errno = saved;
    ::raise(sig);  // SA_RESETHAND made the action the default: the process dies of `sig`
}

} // namespace

void temp_files_remove_all() noexcept {
    for (TempSlot& slot : g_temp_slots) {
        if (slot.state.load(std::memory_order_acquire) == kLive) ::unlink(slot.path);
    }
}

void install_temp_file_cleanup() {
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) {
        struct sigaction old {};
        if (::sigaction(sig, nullptr, &old) != 0) continue;
        if ((old.sa_flags & SA_SIGINFO) != 0 || old.sa_handler != SIG_DFL) continue;  // someone else's (or ours)
        struct sigaction action {};
        action.sa_handler = temp_cleanup_handler;
        sigemptyset(&action.sa_mask);
        action.sa_flags = SA_RESETHAND | SA_RESTART;
        ::sigaction(sig, &action, nullptr);
    }
}

// [SECTION] AtomicFile

namespace {

thread_local AtomicFileGroup* t_group = nullptr;

// An unnamed file in $TMPDIR (or /tmp) for bytes bound for a destination that cannot seek.
int spool_open() {
    const char* dir = std::getenv("TMPDIR");
    if (dir == nullptr || *dir == '\0') dir = "/tmp";
    int fd = ::open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)) return fd;
    std::string name = std::string(dir) + "/.sparsa-spool-XXXXXX";  // no O_TMPFILE here: named, unlinked at once
    fd = ::mkostemp(name.data(), O_CLOEXEC);
    if (fd >= 0) ::unlink(name.c_str());
    return fd;
}

// Errors of fsync that only say the destination has nothing to sync (a device, a pipe).
bool fsync_not_applicable(int err) { return err == EINVAL || err == EROFS || err == ENOTSUP || err == EBADF; }

} // namespace

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
    if (path.empty() || !std::filesystem::path(path).has_filename()) {
        throw Error("cannot write '" + path + "': " + os_error_text(EISDIR));
    }
    const OutputTarget t = output_target_resolve(path);
    if (t.fd >= 0) {
        const int fd = ::fcntl(t.fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0) {
            throw Error("cannot write '" + path + "': descriptor " + std::to_string(t.fd) + " is not open (" +
                        std::error_code(errno, std::generic_category()).message() + ")");
        }
        std::fflush(nullptr);  // what was printed to stdout or stderr comes before these bytes
        open_direct(fd, "descriptor " + std::to_string(t.fd));
        return;
    }
    if (t.special && !t.folder) {
        struct stat st {};
        if (::stat(t.file.c_str(), &st) == 0 && (S_ISBLK(st.st_mode) || S_ISSOCK(st.st_mode))) {
            throw Error("cannot write '" + path + "': it is a " + (S_ISBLK(st.st_mode) ? "block device (a disk)" : "socket") +
                        ", not a file (give a file name)");
        }
        const int fd = ::open(t.file.c_str(), O_WRONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) throw Error("cannot write '" + path + "': " + os_error_text(errno));
        open_direct(fd, "'" + t.file + "'");
        return;
    }
    target_ = t.file;
    const std::filesystem::path dest(target_);
    if (!dest.has_filename()) throw Error("cannot write '" + path + "': " + os_error_text(EISDIR));
    struct stat old {};
    const bool replacing = t.exists && !t.folder && ::stat(target_.c_str(), &old) == 0;
    const std::filesystem::path dir = dest.parent_path();
    int err = 0;
    for (int attempt = 0; attempt < 16 && fd_ < 0; ++attempt) {
        std::string name(".");  // (built in steps: GCC 12 warns falsely on "." + string)
        name += dest.filename().string();
        name += temp_suffix();
        temp_ = (dir / name).string();
        temp_slot_ = temp_register(temp_);
        fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd_ >= 0) break;
        err = errno;
        temp_unregister(temp_slot_);
        if (err != EEXIST && err != EINTR) break;
    }
    if (fd_ < 0) {
        temp_.clear();
        throw Error("cannot write '" + path_ + "'" + (target_ != path_ ? " (a link to '" + target_ + "')" : "") + ": " + os_error_text(err));
    }
    if (replacing) {  // the new file keeps the old one's permissions (and owner, where allowed)
        (void)::fchmod(fd_, old.st_mode & 07777);
        if (::geteuid() == 0) (void)::fchown(fd_, old.st_uid, old.st_gid);
    }
    buffer_.reserve(kBufferBytes);
}

void AtomicFile::open_direct(int fd, const std::string& describe) {
    direct_ = true;
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags >= 0 && (flags & O_ACCMODE) == O_RDONLY) {
        ::close(fd);
        throw Error("cannot write '" + path_ + "': " + describe + " is open for reading only");
    }
    struct stat st {};
    const bool stream = ::fstat(fd, &st) != 0 || S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode);
    // O_APPEND: pwrite would append instead of patching, so such a file is a stream too.
    const off_t at = stream || (flags >= 0 && (flags & O_APPEND) != 0) ? -1 : ::lseek(fd, 0, SEEK_CUR);
    if (at >= 0) {
        fd_ = fd;
        base_ = static_cast<uint64_t>(at);
    } else {
        out_fd_ = fd;
        fd_ = spool_open();
        if (fd_ < 0) {
            const int err = errno;
            ::close(out_fd_);
            out_fd_ = -1;
            throw Error("cannot write '" + path_ + "': it cannot seek, and no temporary file for its bytes can be made in "
                        "$TMPDIR or /tmp: " + os_error_text(err));
        }
    }
    buffer_.reserve(kBufferBytes);
}

AtomicFile::~AtomicFile() {
    if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
    if (fd_ >= 0) ::close(fd_);
    if (out_fd_ >= 0) ::close(out_fd_);
    fd_ = out_fd_ = -1;
    if (!temp_.empty()) ::unlink(temp_.c_str());
    temp_unregister(temp_slot_);
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
    const uint64_t at = (out_fd_ >= 0 ? 0 : base_) + offset;  // the spool starts at 0
    if (int err = write_fully(fd_, static_cast<const uint8_t*>(data), bytes, static_cast<int64_t>(at)); err != 0) {
        fail(err);
    }
}

void AtomicFile::commit() {
    if (fd_ < 0) {
        throw Error("cannot write '" + path_ + "': the file is " + (committed_ ? "already committed" : "closed after an error"));
    }
    flush();
    if (direct_) {
        if (out_fd_ >= 0) {  // the spool's bytes to the destination that cannot seek
            std::vector<uint8_t> chunk(kBufferBytes);
            for (uint64_t at = 0; at < size_;) {
                const ssize_t got = ::pread(fd_, chunk.data(), chunk.size(), static_cast<off_t>(at));
                if (got < 0 && errno == EINTR) continue;
                if (got <= 0) fail(got < 0 ? errno : EIO);
                if (int err = write_fully(out_fd_, chunk.data(), static_cast<size_t>(got), -1); err != 0) fail(err);
                at += static_cast<uint64_t>(got);
            }
            ::close(fd_);
            fd_ = out_fd_;
            out_fd_ = -1;
        }
        if (::fsync(fd_) != 0 && !fsync_not_applicable(errno)) fail(errno);
        const int fd = fd_;
        fd_ = -1;
        if (::close(fd) != 0 && errno != EINTR) fail(errno);
        committed_ = true;
        return;
    }
    if (::fsync(fd_) != 0) fail(errno);
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail(errno);
    if (t_group != nullptr) {  // the group renames it with the others
        t_group->held_.push_back({path_, target_, temp_, temp_slot_});
        temp_slot_ = -1;
        temp_.clear();
        committed_ = true;
        return;
    }
    if (::rename(temp_.c_str(), target_.c_str()) != 0) fail(errno);
    temp_unregister(temp_slot_);
    committed_ = true;
    temp_.clear();
    // Make the rename itself durable; a failure here loses nothing already visible.
    std::filesystem::path dir = std::filesystem::path(target_).parent_path();
    if (dir.empty()) dir = ".";
    if (int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
        (void)::fsync(dfd);
        ::close(dfd);
    }
}

// [SECTION] AtomicFileGroup

AtomicFileGroup::AtomicFileGroup() {
    if (t_group != nullptr) throw Error("AtomicFileGroups do not nest (internal error)");
    t_group = this;
}

AtomicFileGroup::~AtomicFileGroup() {
    if (t_group == this) t_group = nullptr;
    for (Held& h : held_) {
        ::unlink(h.temp.c_str());
        temp_unregister(h.slot);
    }
}

void AtomicFileGroup::commit() {
    if (t_group == this) t_group = nullptr;  // from here on, files commit on their own
    std::vector<std::string> dirs;
    for (size_t i = 0; i < held_.size(); ++i) {
        Held& h = held_[i];
        if (::rename(h.temp.c_str(), h.target.c_str()) != 0) {
            const int err = errno;
            std::string written;
            for (size_t j = 0; j < i; ++j) written += (j ? ", '" : "'") + held_[j].path + "'";
            const std::string path = h.path;
            held_.erase(held_.begin(), held_.begin() + static_cast<std::ptrdiff_t>(i));  // the rest go in ~AtomicFileGroup
            throw Error("cannot write '" + path + "': " + os_error_text(err) + (written.empty() ? "" : "; already written: " + written));
        }
        temp_unregister(h.slot);
        std::string dir = std::filesystem::path(h.target).parent_path().string();
        if (dir.empty()) dir = ".";
        if (std::find(dirs.begin(), dirs.end(), dir) == dirs.end()) dirs.push_back(dir);
    }
    held_.clear();
    for (const std::string& dir : dirs) {
        if (int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
            (void)::fsync(dfd);
            ::close(dfd);
        }
    }
}

// [SECTION] InputFile

InputFile::InputFile(const std::string& path) : path_(path) {
    // O_NONBLOCK: opening a FIFO with no writer returns at once, to be refused below as not a
    // regular file, instead of waiting for a writer forever. O_NOCTTY: a terminal named here
    // never becomes ours.
    fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
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
    const int flags = ::fcntl(fd_, F_GETFL);
    if (flags >= 0) (void)::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK);
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
