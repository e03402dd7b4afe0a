// libFuzzer target over the .npz reader (io/npz.hpp) and the mask file loader on top of it
// (io/mask_io.hpp: mask_set_load). Both read by path, so the input goes into an anonymous
// in-memory file (memfd) read through /proc/self/fd/N: no disk traffic, and the readers run
// exactly as on a user's file. Per input: every member whole (NpzReader::read) and streamed
// (NpzReader::Stream), then mask_set_load. Any crash, sanitizer report or uncaught exception is a
// bug; a sparsa::Error is the correct answer to a bad file. A mask set that loads must save and
// load back unchanged.
#include "engine/error.hpp"
#include "io/mask_io.hpp"
#include "io/npz.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

// The memfd holding the current input, reused across inputs; its path for the readers.
int input_fd() {
    static const int fd = [] {
        const int f = memfd_create("sparsa-npz-fuzz", MFD_CLOEXEC);
        if (f < 0) {
            std::perror("npz_fuzz: memfd_create");
            std::abort();
        }
        return f;
    }();
    return fd;
}

void set_input(const uint8_t* data, size_t size) {
    const int fd = input_fd();
    if (::ftruncate(fd, 0) != 0) std::abort();
    size_t done = 0;
    while (done < size) {
        const ssize_t n = ::pwrite(fd, data + done, size - done, static_cast<off_t>(done));
        if (n <= 0) std::abort();
        done += static_cast<size_t>(n);
    }
}

// A folder for the round trip's saved file (mask_set_save writes a temp file beside it and
// renames, so it needs a real folder): tmpfs when there is one; removed when the fuzzer exits.
std::string save_folder;

void remove_save_folder() {
    if (save_folder.empty()) return;
    ::unlink((save_folder + "/again.npz").c_str());
    ::rmdir(save_folder.c_str());
}

const std::string& save_path() {
    static const std::string path = [] {
        std::string tmpl = (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp") + std::string("/sparsa-npz-fuzz-XXXXXX");
        if (mkdtemp(tmpl.data()) == nullptr) {
            std::perror("npz_fuzz: mkdtemp");
            std::abort();
        }
        save_folder = tmpl;
        std::atexit(remove_save_folder);
        return tmpl + "/again.npz";
    }();
    return path;
}

bool same_set(const sparsa::MaskSet& a, const sparsa::MaskSet& b) {
    if (a.n != b.n || a.block != b.block || a.layers != b.layers || a.heads != b.heads) return false;
    if (a.script_name != b.script_name || a.script_text != b.script_text || a.params != b.params) return false;
    if (a.masks.size() != b.masks.size()) return false;
    for (size_t i = 0; i < a.masks.size(); ++i) {
        if (!(*a.masks[i] == *b.masks[i])) return false;
    }
    return true;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > (1U << 20)) return 0;
    set_input(data, size);
    const std::string path = "/proc/self/fd/" + std::to_string(input_fd());
    try {
        sparsa::NpzReader npz(path);
        for (const std::string& name : npz.names()) {
            if (!npz.has(name)) continue;  // a member not named NAME.npy
            try {
                npz.read(name);
            } catch (const sparsa::Error&) {
            }
            try {
                sparsa::NpzReader::Stream s = npz.stream(name);
                std::vector<uint8_t> piece(4096);
                for (uint64_t left = s.header().data_bytes; left > 0;) {
                    const size_t take = static_cast<size_t>(std::min<uint64_t>(left, piece.size()));
                    s.read(piece.data(), take);
                    left -= take;
                }
            } catch (const sparsa::Error&) {
            }
        }
    } catch (const sparsa::Error& e) {
        // The harness itself: the reader must open the memfd, or every input is only "cannot read".
        const std::string what = e.what();
        if (what.rfind("cannot read '", 0) == 0 && what.find("ended early") == std::string::npos) {
            std::fprintf(stderr, "npz_fuzz: the reader cannot open the input file: %s\n", what.c_str());
            std::abort();
        }
    }
    try {
        const sparsa::MaskSet set = sparsa::mask_set_load(path);
        sparsa::mask_set_save(set, save_path());
        if (!same_set(set, sparsa::mask_set_load(save_path()))) std::abort();  // the round trip changed it
    } catch (const sparsa::Error&) {
    }
    return 0;
}
