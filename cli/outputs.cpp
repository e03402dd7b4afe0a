// OutputSet: a command's outputs checked before the work (not an input, not named twice, a
// writable folder), held back until all are written, then renamed into place together.
#include "cli/outputs.hpp"

#include "engine/error.hpp"

#include <cerrno>
#include <cstdarg>
#include <filesystem>
#include <system_error>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace sparsa::cli {

OutputSet::OutputSet(std::string command) : command_(std::move(command)), group_(std::make_unique<AtomicFileGroup>()) {}

OutputSet::~OutputSet() {
    group_.reset();  // removes the temporary files held back, so that the folders below are empty
    if (!committed_) {
        for (auto it = made_folders_.rbegin(); it != made_folders_.rend(); ++it) ::rmdir(it->c_str());
    }
}

OutputSet::Entry OutputSet::identify(const std::string& path) const {
    Entry e;
    e.path = path;
    const OutputTarget t = output_target_resolve(path);
    struct stat st {};
    if (t.fd >= 0) {
        e.fd = t.fd;
        e.normal = "/dev/fd/" + std::to_string(t.fd);
        if (::fstat(t.fd, &st) != 0) return e;
    } else {
        std::error_code ec;
        const std::filesystem::path absolute = std::filesystem::absolute(t.file, ec);
        const std::filesystem::path normal = std::filesystem::weakly_canonical(absolute, ec);
        e.normal = (ec ? absolute.lexically_normal() : normal).string();
        if (::stat(t.file.c_str(), &st) != 0) return e;
    }
    e.exists = true;
    e.dev = st.st_dev;
    e.ino = st.st_ino;
    e.char_device = S_ISCHR(st.st_mode);
    return e;
}

namespace {

bool same_file(const auto& a, const auto& b) {
    if (a.exists && b.exists) return a.dev == b.dev && a.ino == b.ino;
    return a.normal == b.normal;
}

} // namespace

void OutputSet::check_against(const Entry& added) const {
    const bool is_output = !added.option.empty();
    for (const Entry& in : inputs_) {
        if (is_output && same_file(added, in)) {
            throw Error(command_ + ": " + added.option + " " + added.path + " is " + in.what + "; choose another name");
        }
    }
    for (const Entry& out : outputs_) {
        if (!same_file(added, out)) continue;
        if (!is_output) throw Error(command_ + ": " + out.option + " " + out.path + " is " + added.what + "; choose another name");
        if (added.char_device && out.char_device) continue;  // -o /dev/null --dense /dev/null
        throw Error(command_ + ": " + out.option + " " + out.path + " and " + added.option + " " + added.path +
                    " name the same file; choose another name for one of them");
    }
}

void OutputSet::input(const std::string& path, const std::string& what) {
    Entry e = identify(path);
    e.what = what;
    check_against(e);
    inputs_.push_back(std::move(e));
}

void OutputSet::output(const std::string& option, const std::string& path) {
    const std::string where = command_ + ": " + option + " " + path;
    if (path.empty()) throw Error(command_ + ": " + option + " is empty (give a file name)");
    const OutputTarget t = output_target_resolve(path);
    if (t.fd >= 0) {
        const int flags = ::fcntl(t.fd, F_GETFL);
        if (flags < 0) throw Error(where + ": descriptor " + std::to_string(t.fd) + " is not open");
        if ((flags & O_ACCMODE) == O_RDONLY) throw Error(where + ": descriptor " + std::to_string(t.fd) + " is open for reading only");
    } else if (t.folder) {
        throw Error(where + " is a folder; give a file name inside it");
    } else if (t.special) {
        struct stat st {};
        if (::stat(t.file.c_str(), &st) == 0 && (S_ISBLK(st.st_mode) || S_ISSOCK(st.st_mode))) {
            throw Error(where + " is a " + (S_ISBLK(st.st_mode) ? "block device (a disk)" : "socket") + ", not a file; give a file name");
        }
    } else {
        // The temporary file goes beside the final target: its folder must take new files.
        std::string dir = std::filesystem::path(t.file).parent_path().string();
        if (dir.empty()) dir = ".";
        const std::string link = t.file != path ? " (a link to '" + t.file + "')" : "";
        struct stat st {};
        if (!std::filesystem::path(t.file).has_filename()) throw Error(where + " names a folder; give a file name");
        if (::stat(dir.c_str(), &st) != 0) {
            throw Error(where + link + ": the folder '" + dir + "' " +
                        (errno == ENOENT ? "does not exist (create it first)" : "cannot be reached: " + os_error_text(errno)));
        }
        if (!S_ISDIR(st.st_mode)) throw Error(where + link + ": '" + dir + "' is not a folder");
        if (::faccessat(AT_FDCWD, dir.c_str(), W_OK, AT_EACCESS) != 0) {
            throw Error(where + link + ": cannot write in the folder '" + dir + "': " + os_error_text(errno));
        }
    }
    Entry e = identify(path);
    e.option = option;
    check_against(e);
    struct stat out {};
    if (e.fd == 1 || (e.exists && ::fstat(1, &out) == 0 && out.st_dev == e.dev && out.st_ino == e.ino)) to_stderr_ = true;
    outputs_.push_back(std::move(e));
}

const std::string& OutputSet::folder(const std::string& option, const std::string& path) {
    const std::string where = command_ + ": " + option + " " + path;
    if (path.empty()) throw Error(command_ + ": " + option + " is empty (give a folder)");
    std::error_code ec;
    const std::filesystem::path dir(path);
    if (std::filesystem::exists(dir, ec)) {
        if (!std::filesystem::is_directory(dir, ec)) throw Error(where + " is a file, not a folder; give a folder");
    } else {
        std::vector<std::string> missing;  // the folders this call makes, outermost last
        for (std::filesystem::path p = dir; !p.empty() && !std::filesystem::exists(p, ec); p = p.parent_path()) {
            missing.push_back(p.string());
            if (p == p.parent_path()) break;
        }
        std::filesystem::create_directories(dir, ec);
        if (ec) throw Error(where + ": cannot make the folder: " + os_error_text(ec.value()));
        made_folders_.insert(made_folders_.end(), missing.rbegin(), missing.rend());
    }
    if (::faccessat(AT_FDCWD, path.c_str(), W_OK, AT_EACCESS) != 0) {
        throw Error(where + ": cannot write in the folder: " + os_error_text(errno));
    }
    return path;
}

void OutputSet::say(const char* format, ...) {
    va_list args;
    va_start(args, format);
    va_list again;
    va_copy(again, args);
    const int bytes = std::vsnprintf(nullptr, 0, format, args);
    va_end(args);
    if (bytes > 0) {
        const size_t at = text_.size();
        text_.resize(at + static_cast<size_t>(bytes) + 1);
        std::vsnprintf(text_.data() + at, static_cast<size_t>(bytes) + 1, format, again);
        text_.resize(at + static_cast<size_t>(bytes));
    }
    va_end(again);
}

void OutputSet::commit() {
    group_->commit();
    committed_ = true;
    std::FILE* out = to_stderr_ ? stderr : stdout;
    std::fputs(text_.c_str(), out);
    std::fflush(out);
    text_.clear();
}

} // namespace sparsa::cli
