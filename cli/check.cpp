// sparsa check: parse, check and evaluate scripts, printing diagnostics in the spec's form.
#include "cli/args.hpp"
#include "cli/commands.hpp"

#include <cstdio>
#include <iostream>

namespace sparsa::cli {

void print_diagnostics(const std::vector<dsl::Diagnostic>& diagnostics) {
    for (const auto& d : diagnostics) std::fputs(dsl::diagnostic_format(d).c_str(), stderr);
    std::fflush(stderr);
}

dsl::ScriptPtr load_script_or_report(const std::string& path) {
    try {
        return dsl::script_load(path);
    } catch (const dsl::ScriptError& e) {
        print_diagnostics(e.diagnostics());
        throw ReportedError{};
    }
}

namespace {

const char* const kHelp = R"(usage: sparsa check FILE... [--n N] [--block B]

Parses and checks each pattern script, then evaluates every (layer, head) at sequence length N
(default 4096) to catch errors that only show when the script runs (a wrong argument type, a
division by zero, a missing load() file, or a missing anchors fit or rotations file). Diagnostics
go to stderr as FILE:LINE:COL; with --n, the warnings and errors that depend on n are shown too
(more lsh buckets than n tokens). Exit 0 when every file is clean of errors.
)";

} // namespace

int command_check(const std::vector<std::string>& argv) {
    Args args(argv, "check", {"--n", "--block"}, {"--help"});
    if (args.has("--help")) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    if (args.positionals().empty()) throw Error("check: give at least one script (sparsa check FILE...)");
    const int64_t n = args.integer("--n", 4096, 1, int64_t{1} << 40);
    const int32_t block = args.block_size();
    int failed = 0;
    for (const auto& path : args.positionals()) {
        try {
            dsl::ScriptPtr script = dsl::script_load(path);
            // Without --n, n is a stand-in: checks against n itself (lsh's buckets <= n) wait for a compile.
            std::vector<dsl::Diagnostic> warnings = dsl::script_evaluate_all(*script, n, block, args.has("--n"));
            if (!args.has("--n")) warnings = dsl::script_warnings(*script);
            print_diagnostics(warnings);
            const auto& s = dsl::script_settings(*script);
            std::printf("%s: ok (%lld layer%s x %lld head%s, block %d%s%s)\n", path.c_str(),
                        static_cast<long long>(s.layers), s.layers == 1 ? "" : "s",
                        static_cast<long long>(s.heads), s.heads == 1 ? "" : "s", s.block,
                        s.causal ? ", causal" : "",
                        warnings.empty() ? "" : (", " + std::to_string(warnings.size()) + " warning" +
                                                 (warnings.size() == 1 ? "" : "s")).c_str());
        } catch (const dsl::ScriptError& e) {
            print_diagnostics(e.diagnostics());
            ++failed;
        } catch (const Error& e) {
            std::fprintf(stderr, "%s: error: %s\n", path.c_str(), e.what());
            ++failed;
        }
        std::fflush(stdout);
    }
    return failed == 0 ? 0 : 1;
}

} // namespace sparsa::cli
