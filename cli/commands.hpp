// The sparsa subcommands. Each takes its arguments (after the subcommand's name) and returns
// the process exit code; errors are thrown as sparsa::Error and printed by main().
#pragma once

#include "dsl/script.hpp"

#include <string>
#include <vector>

namespace sparsa::cli {

int command_check(const std::vector<std::string>& args);
int command_compile(const std::vector<std::string>& args);
int command_stats(const std::vector<std::string>& args);
int command_show(const std::vector<std::string>& args);
int command_reach(const std::vector<std::string>& args);
int command_run(const std::vector<std::string>& args);
int command_learn(const std::vector<std::string>& args);
int command_anchors(const std::vector<std::string>& args);

// Loads a script, printing its diagnostics to stderr when it fails (then rethrows).
dsl::ScriptPtr load_script_or_report(const std::string& path);

// Prints diagnostics to stderr, each in the spec's FILE:LINE:COL form.
void print_diagnostics(const std::vector<dsl::Diagnostic>& diagnostics);

// Thrown after the diagnostics were already printed: main() exits 1 without printing more.
struct ReportedError {};

} // namespace sparsa::cli
