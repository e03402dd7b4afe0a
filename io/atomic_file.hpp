// Files written whole or not at all (temporary file, fsync, rename), never replacing what the user
// did not name (a symlink is written through, a device is written to), and bounds-checked reads;
// every error names the path and the operating system's reason.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sparsa {

// Where a write to `path` lands. Symlinks are followed to their final target (which need not
// exist yet: a dangling link's target is created); /dev/stdout, /dev/stderr, /dev/stdin,
// /dev/fd/N and /proc/self/fd/N name the open descriptor N, at any step of a chain of links.
struct OutputTarget {
    std::string file;     // the final target's path ("" when `fd` >= 0)
    int fd = -1;          // the descriptor a /dev/fd/N-like name stands for, else -1
    bool exists = false;  // `file` exists (always true for a descriptor)
    bool special = false; // not a regular file: a device, FIFO, socket, descriptor or folder
    bool folder = false;  // `file` is a folder
};
// Throws sparsa::Error for a chain of more than 40 links.
OutputTarget output_target_resolve(const std::string& path);

// Writes `path` atomically: bytes go to a temporary file beside the final target of `path`
// (".NAME.tmp-PID-RANDOM"); commit() flushes, fsyncs and renames it over the target, so a
// symlink stays a symlink. A destination that is not a regular file (/dev/null, a FIFO, a
// terminal, /dev/stdout...) is written directly, with no temporary file and no rename: where it
// cannot seek (a pipe), the bytes wait in an unnamed temporary file in $TMPDIR and are copied at
// commit(). A block device is refused. If anything fails, or the AtomicFile is destroyed without
// commit(), the temporary file is removed and `path` is left as it was (a device written
// directly may have received part of the bytes). While an AtomicFileGroup lives on the calling
// thread, commit() leaves a renamed file's bytes under its temporary name until the group's
// commit(). Errors are sparsa::Error: "cannot write 'out/x.npz': No such file or directory (does
// the folder exist?)".
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
    // The temporary file ("" when the destination is written directly).
    const std::string& temp_path() const { return temp_; }
    // True when the destination is written directly (a device, FIFO or descriptor).
    bool direct() const { return direct_; }

private:
    void open_direct(int fd, const std::string& describe);
    void flush();
    [[noreturn]] void fail(int err);
    void discard() noexcept;

    std::string path_, target_, temp_;
    int fd_ = -1;          // where bytes go: the temporary file, the destination, or the spool
    int out_fd_ = -1;      // a destination that cannot seek, filled from the spool at commit()
    int temp_slot_ = -1;   // temp_'s entry in the table the signal handler cleans up
    bool committed_ = false, direct_ = false;
    uint64_t base_ = 0;    // the destination's offset of byte 0 when written directly
    uint64_t size_ = 0;
    std::vector<uint8_t> buffer_;
};

// Several AtomicFiles that appear together: while a group lives, AtomicFile::commit() on the
// same thread writes and syncs its temporary file but does not rename it; the group's commit()
// renames them all, after every file was written, so that a failure in one output leaves none of
// them. Destroyed without commit(), it removes the temporary files. Files written directly (to a
// device) are not held back. Groups do not nest.
class AtomicFileGroup {
public:
    AtomicFileGroup();
    ~AtomicFileGroup();
    AtomicFileGroup(const AtomicFileGroup&) = delete;
    AtomicFileGroup& operator=(const AtomicFileGroup&) = delete;

    // Renames every file committed so far into place. Throws sparsa::Error when a rename fails
    // (the files renamed before it stay; every later one is removed).
    void commit();

private:
    friend class AtomicFile;
    struct Held {
        std::string path, target, temp;
        int slot = -1;
    };
    std::vector<Held> held_;
};

// Installs, for SIGINT, SIGTERM, SIGHUP and SIGPIPE where their action is still the default, a
// handler that removes every temporary file of a live AtomicFile and then dies of the same
// signal (the exit status still says "killed by SIGINT"). Handlers set by others (Python's
// SIGINT) are kept. Safe to call more than once.
void install_temp_file_cleanup();
// Removes every live temporary file. Async-signal-safe: for other fatal-signal handlers.
void temp_files_remove_all() noexcept;

// A regular file opened for reading at given offsets; a folder, FIFO or device is refused at
// once (never waited on). Errors are sparsa::Error naming the path.
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
