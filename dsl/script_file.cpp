// Reading a script file: a regular file or a pipe, never more than kMaxScriptBytes, and never
// waiting forever (a FIFO nobody writes to) or reading forever (/dev/zero).
#include "dsl/script.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

namespace sparsa::dsl {

namespace {

// The script's bytes up to kMaxScriptBytes (one more tells that it is larger), read with
// read(2) from fd. A pipe or FIFO is waited on at most kScriptWaitSeconds for each piece, so a
// FIFO nobody writes to ends in an error, never a hang.
std::string read_bounded(int fd, bool is_pipe, const std::string& shown) {
    std::string out;
    char buffer[1 << 16];
    while (out.size() <= kMaxScriptBytes) {
        if (is_pipe) {
            pollfd wait{fd, POLLIN, 0};
            int ready = poll(&wait, 1, kScriptWaitSeconds * 1000);
            if (ready < 0 && errno == EINTR) continue;
            if (ready < 0) throw Error("cannot read '" + shown + "': " + std::strerror(errno));
            if (ready == 0) {
                throw Error("cannot read '" + shown + "': nothing arrived on this pipe for " +
                            std::to_string(kScriptWaitSeconds) + " s (is anything writing to it?)");
            }
        }
        const size_t want = std::min(sizeof buffer, kMaxScriptBytes + 1 - out.size());
        const ssize_t got = read(fd, buffer, want);
        if (got < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        if (got < 0) throw Error("cannot read '" + shown + "': " + std::strerror(errno));
        if (got == 0) break;
        out.append(buffer, static_cast<size_t>(got));
    }
    return out;
}

// What a path that is not a regular file, folder or pipe is, for the message.
const char* file_kind(mode_t mode) {
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a regular file";
}

} // namespace

// Regular files, and pipes or FIFOs (`<(cat x.pat)`, /dev/stdin from a pipe); folders and
// devices are refused before reading.
std::string script_file_read(const std::string& path, const std::string& shown_as) {
    const std::string& shown = shown_as.empty() ? path : shown_as;
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) throw Error("cannot read '" + shown + "': " + std::strerror(errno));
    auto refuse_kind = [&](mode_t mode) {
        if (S_ISDIR(mode)) throw Error("cannot read '" + shown + "': it is a folder (give a .pat file)");
        if (!S_ISREG(mode) && !S_ISFIFO(mode)) {
            throw Error("cannot read '" + shown + "': not a regular file (" + std::string(file_kind(mode)) +
                        "; give a .pat file)");
        }
    };
    refuse_kind(st.st_mode);  // before opening: opening a device may itself do something
    // O_NONBLOCK: opening a FIFO with no writer returns at once (read_bounded waits, bounded).
    const int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) throw Error("cannot read '" + shown + "': " + std::strerror(errno));
    struct Closer {
        int fd;
        ~Closer() { close(fd); }
    } closer{fd};
    if (fstat(fd, &st) != 0) throw Error("cannot read '" + shown + "': " + std::strerror(errno));
    refuse_kind(st.st_mode);  // what was opened, should the path have changed since
    const std::string limit = std::to_string(kMaxScriptBytes >> 20) + " MiB";
    if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) > kMaxScriptBytes) {
        throw Error("'" + shown + "' is " + std::to_string(st.st_size) + " bytes: scripts are limited to " + limit +
                    " (is this really a pattern script?)");
    }
    std::string out = read_bounded(fd, S_ISFIFO(st.st_mode), shown);
    if (out.size() > kMaxScriptBytes) {
        throw Error("'" + shown + "' is more than " + limit + ": scripts are limited to " + limit +
                    " (is this really a pattern script?)");
    }
    return out;
}

} // namespace sparsa::dsl
