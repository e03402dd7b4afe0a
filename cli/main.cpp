// The sparsa command: check, compile, inspect pattern scripts (and, later, run and analyse).
#include "cli/commands.hpp"
#include "cli/stack_guard.hpp"
#include "engine/error.hpp"
#include "io/atomic_file.hpp"

#include <climits>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

const char* const kUsage = R"(sparsa - a sandbox for sparse attention

usage: sparsa COMMAND [ARGS]

commands:
  check FILE...                 check pattern scripts; prints diagnostics, exit 0 when clean
  compile FILE --n N [--block B] [-o OUT.npz] [--dense OUT.npy]
                                compile a script to block-sparse masks for sequence length N
  stats FILE... --n N [--block B] [--json] [--brief] [--png OUT.png]
                                kept blocks, pairs, density, FLOPs and memory per (layer, head);
                                --png: density and block FLOPs as heat maps
  show FILE --n N [--block B] [--layer L] [--head H] [--png OUT.png]
                                draw one mask's block grid in the terminal; --png: a picture of
                                every (layer, head), or of one mask with --layer/--head
  reach FILE --n N [--resolution token|block|auto] [--token T] [--direction in|out] [--json]
        [--png OUT.png] [--dense OUT.npy]
                                how far information travels through the layers (receptive fields)
  run FILE --n N [OPTIONS]      one layer of attention on the CPU: time, GFLOP/s, errors (--check)

  learn teacher|pool|distill|eval|demo [OPTIONS]
                                learned sparsity: train a dense teacher, distill masks, evaluate
  anchors fit --q Q.npy --k K.npy --anchors K -o FILE.npz [--rounds R] [--seed S]
                                fit the anchors of anchors(K) heads (spherical k-means)
Run 'sparsa COMMAND --help' for a command's options. The pattern language is described in
docs/pattern-language.md; examples are in examples/patterns/. Content-based heads (lsh, anchors,
favor) compile to their fixed part and a spec; compile, stats and show say which heads they are.
)";

int run(int argc, char** argv, const char* command) {
    std::vector<std::string> args(argv + 2, argv + argc);
    const std::string name = command;
    if (name == "check") return sparsa::cli::command_check(args);
    if (name == "compile") return sparsa::cli::command_compile(args);
    if (name == "stats") return sparsa::cli::command_stats(args);
    if (name == "show") return sparsa::cli::command_show(args);
    if (name == "reach") return sparsa::cli::command_reach(args);
    if (name == "run") return sparsa::cli::command_run(args);
    if (name == "learn") return sparsa::cli::command_learn(args);
    if (name == "anchors") return sparsa::cli::command_anchors(args);
    std::fprintf(stderr, "sparsa: unknown command '%s' (run 'sparsa --help' for the list)\n", command);
    return 2;
}

// Under a memory limit even printing an error may fail to allocate: these print without
// allocating, or fall back to a fixed line.
void print_out_of_memory(const char* command) {
    std::fprintf(stderr, "sparsa %s: error: out of memory (try a smaller --n, or raise the memory limit)\n", command);
}

} // namespace

int main(int argc, char** argv) {
    const char* command = argc > 1 ? argv[1] : "";
    // Before anything that allocates: room on the stack and a message if it cannot grow.
    sparsa::cli::stack_guard_install(command, size_t{1} << 20);
    sparsa::install_temp_file_cleanup();     // SIGINT, SIGTERM...: no .NAME.tmp-PID-... left behind
    std::signal(SIGXFSZ, SIG_IGN);           // past ulimit -f, a write fails with "File too large"
#if defined(__GLIBC__)
    // Keep freed memory for the next request instead of unmapping it: the trainer and the
    // evaluations allocate the same large temporaries every step, and by default glibc gives
    // each back (mmap above 128 KB, heap trimming) and pays page faults to map it again. On
    // this repository's 2-core machine a teacher step at n = 256 went from 0.45 to 0.32 s
    // (docs/learn.md, "What training costs here"); results are bit for bit the same.
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, INT_MAX);
#endif
    if (argc < 2 || std::strcmp(command, "--help") == 0 || std::strcmp(command, "-h") == 0 || std::strcmp(command, "help") == 0) {
        std::fputs(kUsage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    try {
        return run(argc, argv, command);
    } catch (const sparsa::cli::ReportedError&) {
        return 1;
    } catch (const sparsa::dsl::ScriptError& e) {
        try {
            sparsa::cli::print_diagnostics(e.diagnostics());
        } catch (const std::bad_alloc&) {
            print_out_of_memory(command);
        }
        return 1;
    } catch (const sparsa::Error& e) {
        // Messages thrown for a command may start with its name ("run: --layer ..."): say it once.
        const char* message = e.what();
        const size_t len = std::strlen(command);
        if (std::strncmp(message, command, len) == 0 && std::strncmp(message + len, ": ", 2) == 0) message += len + 2;
        std::fprintf(stderr, "sparsa %s: error: %s\n", command, message);
        return 1;
    } catch (const std::bad_alloc&) {
        print_out_of_memory(command);
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "sparsa %s: internal error: %s (please report it)\n", command, e.what());
        return 3;
    }
}
