// The sparsa command: check, compile, inspect pattern scripts (and, later, run and analyse).
#include "cli/commands.hpp"
#include "engine/error.hpp"

#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

namespace {

const char* const kUsage = R"(sparsa - a sandbox for sparse attention

usage: sparsa COMMAND [ARGS]

commands:
  check FILE...                 check pattern scripts; prints diagnostics, exit 0 when clean
  compile FILE --n N [--block B] [-o OUT.npz] [--dense OUT.npy]
                                compile a script to block-sparse masks for sequence length N
  stats FILE... --n N [--block B] [--json] [--brief]
                                kept blocks, pairs, density, FLOPs and memory per (layer, head)
  show FILE --n N [--block B] [--layer L] [--head H]
                                draw one mask's block grid in the terminal
  reach FILE --n N [--token T] [--direction in|out] [--json] [--png OUT.png] [--dense OUT.npy]
                                how far information travels through the layers (receptive fields)
  run FILE --n N [OPTIONS]      one layer of attention on the CPU: time, GFLOP/s, errors (--check)

  learn teacher|pool|distill|eval|demo [OPTIONS]
                                learned sparsity: train a dense teacher, distill masks, evaluate
Run 'sparsa COMMAND --help' for a command's options. The pattern language is described in
docs/pattern-language.md; examples are in examples/patterns/.
)";

} // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
        std::fputs(kUsage, args.empty() ? stderr : stdout);
        return args.empty() ? 2 : 0;
    }
    std::string command = args[0];
    args.erase(args.begin());
    try {
        if (command == "check") return sparsa::cli::command_check(args);
        if (command == "compile") return sparsa::cli::command_compile(args);
        if (command == "stats") return sparsa::cli::command_stats(args);
        if (command == "show") return sparsa::cli::command_show(args);
        if (command == "reach") return sparsa::cli::command_reach(args);
        if (command == "run") return sparsa::cli::command_run(args);
        if (command == "learn") return sparsa::cli::command_learn(args);
        std::fprintf(stderr, "sparsa: unknown command '%s' (run 'sparsa --help' for the list)\n", command.c_str());
        return 2;
    } catch (const sparsa::cli::ReportedError&) {
        return 1;
    } catch (const sparsa::dsl::ScriptError& e) {
        sparsa::cli::print_diagnostics(e.diagnostics());
        return 1;
    } catch (const sparsa::Error& e) {
        // Messages thrown for a command may start with its name ("run: --layer ..."): say it once.
        std::string message = e.what();
        if (message.rfind(command + ": ", 0) == 0) message.erase(0, command.size() + 2);
        std::fprintf(stderr, "sparsa %s: error: %s\n", command.c_str(), message.c_str());
        return 1;
    } catch (const std::bad_alloc&) {
        std::fprintf(stderr, "sparsa %s: error: out of memory (try a smaller --n)\n", command.c_str());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "sparsa %s: internal error: %s (please report it)\n", command.c_str(), e.what());
        return 3;
    }
}
