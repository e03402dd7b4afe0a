// Helpers of the CLI tests: run `sparsa` as a user would and capture what it printed, scratch files.
#pragma once

#include <catch2/catch.hpp>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>
#include <sys/wait.h>

namespace cli_test {

namespace fs = std::filesystem;

struct Result {
    int code = -1;
    std::string out;  // stdout and stderr together
};

// Runs the program at `cli` (default: the sparsa built) with ARGS from the temporary folder and
// captures what it printed; `env`: assignments put before the command (e.g. "LD_LIBRARY_PATH=x").
inline Result run_at(const std::string& cli, const std::string& args, const std::string& env = "") {
    std::string command = "cd '" + fs::temp_directory_path().string() + "' && " + env + " '" + cli + "' " + args + " 2>&1";
    Result r;
    FILE* pipe = popen(command.c_str(), "r");
    REQUIRE(pipe != nullptr);
    std::array<char, 4096> buffer{};
    size_t got = 0;
    while ((got = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) r.out.append(buffer.data(), got);
    int status = pclose(pipe);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

// Runs `sparsa ARGS` from a scratch folder and captures what it printed.
inline Result run(const std::string& args) { return run_at(SPARSA_CLI, args); }

inline std::string example(const std::string& name) { return "'" SPARSA_SOURCE_DIR "/examples/patterns/" + name + "'"; }

inline fs::path scratch(const std::string& name) {
    fs::path dir = fs::temp_directory_path() / "sparsa-cli-test";
    fs::create_directories(dir);
    fs::path p = dir / name;
    fs::remove_all(p);   // a file or a folder left by an earlier run
    return p;
}

inline bool folder_has_temp_files(const fs::path& dir) {
    for (const auto& entry : fs::directory_iterator(dir)) {
        if (entry.path().filename().string().find(".tmp") != std::string::npos) return true;
    }
    return false;
}

} // namespace cli_test
