// AtomicFile never replaces what the user did not name: symlinks are written through, devices,
// FIFOs and descriptors are written directly, block devices are refused; an AtomicFileGroup shows
// all of its files or none; a signal leaves no temporary file behind.
#include "engine/error.hpp"
#include "tests/engine/mask_testing.hpp"
#include "io/atomic_file.hpp"

#include <catch2/catch.hpp>

#include <csignal>
#include <filesystem>
#include <string>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace sparsa;
using Catch::Matchers::Contains;
using sparsa::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string text_of(const std::string& path) {
    const std::vector<uint8_t> bytes = testing::file_bytes(path);
    return std::string(bytes.begin(), bytes.end());
}

void put(const std::string& path, const std::string& text) {
    AtomicFile f(path);
    f.write(text.data(), text.size());
    f.commit();
}

mode_t kind_of(const std::string& path) {
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    return st.st_mode & S_IFMT;
}

// Everything readable from `fd` until its writers close.
std::string drain(int fd) {
    std::string out;
    char buffer[4096];
    for (ssize_t got; (got = ::read(fd, buffer, sizeof buffer)) > 0;) out.append(buffer, static_cast<size_t>(got));
    return out;
}

} // namespace

TEST_CASE("a symlinked output is written through: the link stays a link", "[atomic]") {
    TempDir dir;
    fs::create_directory(dir.file("real"));
    put(dir.file("real/target.npz"), "old");
    fs::create_symlink("real/target.npz", dir.file("link.npz"));
    {
        AtomicFile f(dir.file("link.npz"));
        // The temporary file sits beside the target, so that the rename stays in one folder.
        CHECK(f.temp_path().find("/real/.target.npz.tmp-") != std::string::npos);
        f.write("new", 3);
        f.commit();
    }
    CHECK(kind_of(dir.file("link.npz")) == S_IFLNK);
    CHECK(fs::read_symlink(dir.file("link.npz")) == "real/target.npz");
    CHECK(text_of(dir.file("real/target.npz")) == "new");
    CHECK(dir.entries() == std::vector<std::string>{"link.npz", "real"});

    // A chain of links, and a dangling link: the final target is created.
    fs::create_symlink("link.npz", dir.file("chain.npz"));
    put(dir.file("chain.npz"), "chained");
    CHECK(kind_of(dir.file("chain.npz")) == S_IFLNK);
    CHECK(kind_of(dir.file("link.npz")) == S_IFLNK);
    CHECK(text_of(dir.file("real/target.npz")) == "chained");
    fs::create_symlink("real/new.npz", dir.file("dangling.npz"));
    put(dir.file("dangling.npz"), "made");
    CHECK(kind_of(dir.file("dangling.npz")) == S_IFLNK);
    CHECK(text_of(dir.file("real/new.npz")) == "made");

    // A loop of links is an error, not a hang.
    fs::create_symlink("loop-b", dir.file("loop-a"));
    fs::create_symlink("loop-a", dir.file("loop-b"));
    CHECK_THROWS_WITH(AtomicFile(dir.file("loop-a")), Contains("Too many levels of symbolic links"));
}

TEST_CASE("a replaced file keeps its permissions", "[atomic]") {
    TempDir dir;
    put(dir.file("private.bin"), "old");
    fs::permissions(dir.file("private.bin"), fs::perms::owner_read | fs::perms::owner_write);
    put(dir.file("private.bin"), "new");
    CHECK(fs::status(dir.file("private.bin")).permissions() == (fs::perms::owner_read | fs::perms::owner_write));
    CHECK(text_of(dir.file("private.bin")) == "new");
}

// Device nodes of our own, in a temporary folder, with the numbers of /dev/null, /dev/full and of
// a loop device: if AtomicFile ever replaced a device again, it would replace these, never the
// system's. Making them needs root (CAP_MKNOD); elsewhere the cases say so and pass.
class DeviceNodes {
public:
    bool make(const std::string& name, mode_t kind, unsigned major, unsigned minor) {
        return ::mknod(dir.file(name).c_str(), kind | 0666, makedev(major, minor)) == 0;
    }
    TempDir dir;
};

TEST_CASE("a null and a full device are written directly, never replaced", "[atomic]") {
    DeviceNodes dev;
    if (!dev.make("null", S_IFCHR, 1, 3) || !dev.make("full", S_IFCHR, 1, 7)) {
        WARN("cannot make device nodes here (not root?): devices are not exercised");
        return;
    }
    const std::string null = dev.dir.file("null"), full = dev.dir.file("full");
    {
        AtomicFile f(null);
        CHECK(f.direct());
        CHECK(f.temp_path().empty());
        f.write("discarded", 9);
        f.write_at(0, "D", 1);
        f.commit();
    }
    CHECK(kind_of(null) == S_IFCHR);
    {
        AtomicFile f(full);
        CHECK(f.direct());
        f.write("x", 1);  // buffered: the device says no at the flush
        CHECK_THROWS_WITH(f.commit(), "cannot write '" + full + "': No space left on device (is the disk full?)");
    }
    CHECK(kind_of(full) == S_IFCHR);
    // A link to a device is followed to it.
    fs::create_symlink(null, dev.dir.file("sink"));
    put(dev.dir.file("sink"), "x");
    CHECK(kind_of(dev.dir.file("sink")) == S_IFLNK);
    CHECK(kind_of(null) == S_IFCHR);
    CHECK(dev.dir.entries() == std::vector<std::string>{"full", "null", "sink"});
}

TEST_CASE("a block device is refused before it is opened", "[atomic]") {
    DeviceNodes dev;
    if (!dev.make("disk", S_IFBLK, 7, 255)) {  // loop255: not attached, so nothing could be written anyway
        WARN("cannot make device nodes here (not root?): the refusal is not exercised");
        return;
    }
    CHECK_THROWS_WITH(AtomicFile(dev.dir.file("disk")), Contains("is a block device (a disk), not a file"));
    CHECK(kind_of(dev.dir.file("disk")) == S_IFBLK);
    CHECK(dev.dir.entries() == std::vector<std::string>{"disk"});
}

TEST_CASE("a FIFO and a pipe's descriptor get the bytes, header patches included", "[atomic]") {
    TempDir dir;
    const std::string fifo = dir.file("fifo");
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    // The reader opens first (without blocking), so the writer's open does not wait for one.
    const int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    REQUIRE(reader >= 0);
    REQUIRE(::fcntl(reader, F_SETFL, 0) == 0);
    {
        AtomicFile f(fifo);
        CHECK(f.direct());
        f.write("abcdef", 6);
        f.write_at(0, "X", 1);  // a FIFO cannot seek: the bytes wait in a spool until commit()
        f.commit();
    }
    const std::string got = drain(reader);
    ::close(reader);
    CHECK(got == "Xbcdef");
    CHECK(kind_of(fifo) == S_IFIFO);
    CHECK(dir.entries() == std::vector<std::string>{"fifo"});
    // Read, a FIFO with no writer is refused at once, not waited on.
    CHECK_THROWS_WITH(InputFile(fifo), "cannot read '" + fifo + "': not a regular file");

    int ends[2];
    REQUIRE(::pipe(ends) == 0);
    {
        AtomicFile f("/dev/fd/" + std::to_string(ends[1]));
        CHECK(f.direct());
        f.write("hello", 5);
        f.write_at(4, "!", 1);
        f.commit();
    }
    ::close(ends[1]);
    CHECK(drain(ends[0]) == "hell!");
    ::close(ends[0]);
    CHECK_THROWS_WITH(AtomicFile("/proc/self/fd/987654"), Contains("descriptor 987654 is not open"));
}

TEST_CASE("a descriptor on a regular file is written at its offset", "[atomic]") {
    TempDir dir;
    for (int append : {0, O_APPEND}) {
        const std::string path = dir.file(append ? "append.txt" : "plain.txt");
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | append, 0644);
        REQUIRE(fd >= 0);
        REQUIRE(::write(fd, "hdr:", 4) == 4);
        {
            AtomicFile f("/proc/self/fd/" + std::to_string(fd));
            f.write("abc", 3);
            f.write_at(0, "X", 1);  // byte 0 of this output, not of the file
            f.commit();
        }
        REQUIRE(::write(fd, ";", 1) == 1);  // the shared offset moved past our bytes
        ::close(fd);
        INFO((append ? "O_APPEND" : "plain"));
        CHECK(text_of(path) == "hdr:Xbc;");
    }
}

TEST_CASE("an AtomicFileGroup shows all of its files or none", "[atomic]") {
    TempDir dir;
    put(dir.file("a.bin"), "old a");
    {
        AtomicFileGroup group;
        put(dir.file("a.bin"), "new a");
        put(dir.file("b.bin"), "new b");
        // Written and synced, but still under their temporary names.
        CHECK(text_of(dir.file("a.bin")) == "old a");
        CHECK_FALSE(fs::exists(dir.file("b.bin")));
        CHECK(dir.entries().size() == 3);
    }  // never committed: the old file stays, nothing else is left
    CHECK(dir.entries() == std::vector<std::string>{"a.bin"});
    CHECK(text_of(dir.file("a.bin")) == "old a");
    {
        AtomicFileGroup group;
        CHECK_THROWS_WITH(AtomicFileGroup(), Contains("do not nest"));
        put(dir.file("a.bin"), "new a");
        put(dir.file("b.bin"), "new b");
        group.commit();
        put(dir.file("c.bin"), "after");  // after commit(), files commit on their own
        CHECK(text_of(dir.file("c.bin")) == "after");
    }
    CHECK(dir.entries() == std::vector<std::string>{"a.bin", "b.bin", "c.bin"});
    CHECK(text_of(dir.file("a.bin")) == "new a");
    CHECK(text_of(dir.file("b.bin")) == "new b");

    // A rename that fails at commit(): the error names it and the files written before it; the
    // files after it are removed.
    fs::create_directory(dir.file("e"));
    put(dir.file("e/inside"), "keeps the folder non-empty");
    {
        AtomicFileGroup group;
        put(dir.file("d.bin"), "d");
        put(dir.file("e"), "e");
        put(dir.file("f.bin"), "f");
        CHECK_THROWS_WITH(group.commit(), Contains("cannot write '" + dir.file("e") + "': Is a directory") &&
                                              Contains("already written: '" + dir.file("d.bin") + "'"));
    }
    CHECK(dir.entries() == std::vector<std::string>{"a.bin", "b.bin", "c.bin", "d.bin", "e"});
}

TEST_CASE("SIGTERM or SIGINT mid-write leaves no temporary file, and the process dies of it", "[atomic]") {
    for (int sig : {SIGTERM, SIGINT, SIGHUP}) {
        TempDir dir;
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {  // the child: a write in progress and one held by a group, then the signal
            ::signal(sig, SIG_DFL);  // (Catch2 has its own handlers)
            install_temp_file_cleanup();
            AtomicFileGroup group;
            put(dir.file("held.npy"), "held by the group");
            AtomicFile f(dir.file("big.npy"));
            f.write("x", 1);
            ::raise(sig);
            ::_exit(0);  // not reached
        }
        int status = 0;
        REQUIRE(::waitpid(pid, &status, 0) == pid);
        INFO("signal " << sig);
        CHECK(WIFSIGNALED(status));
        CHECK(WTERMSIG(status) == sig);
        CHECK(dir.entries().empty());
    }
}

TEST_CASE("install_temp_file_cleanup keeps handlers set by others", "[atomic]") {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        auto mine = +[](int) {};
        ::signal(SIGINT, mine);     // as Python sets its own SIGINT handler
        ::signal(SIGHUP, SIG_IGN);  // as nohup does
        ::signal(SIGTERM, SIG_DFL);
        install_temp_file_cleanup();
        install_temp_file_cleanup();  // twice is once
        struct sigaction sa {};
        int wrong = 0;
        ::sigaction(SIGINT, nullptr, &sa);
        wrong += sa.sa_handler != mine;
        ::sigaction(SIGHUP, nullptr, &sa);
        wrong += sa.sa_handler != SIG_IGN;
        ::sigaction(SIGTERM, nullptr, &sa);
        wrong += sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN;
        ::_exit(wrong);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}
