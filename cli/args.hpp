// A small command-line parser for the sparsa subcommands: positionals, --flag VALUE, --switch.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace sparsa::cli {

class Args {
public:
    // argv of one subcommand (after its name). `with_value` lists the options that take a value
    // (e.g. "--n", "-o"); `switches` those that do not. Anything else starting with '-' is refused.
    Args(const std::vector<std::string>& argv, const std::string& command,
         std::set<std::string> with_value, std::set<std::string> switches);

    const std::vector<std::string>& positionals() const { return positionals_; }
    bool has(const std::string& option) const;
    std::optional<std::string> value(const std::string& option) const;

    // An integer option in [min, max]; `fallback` when absent. Errors name the option.
    int64_t integer(const std::string& option, int64_t fallback, int64_t min, int64_t max) const;
    // A required integer option.
    int64_t required_integer(const std::string& option, int64_t min, int64_t max) const;
    // A position in [0, count): "--token 5000 is outside 0 to 4095 (n = 4096)", `context` being
    // what sets the count. `fallback` when absent.
    int64_t position(const std::string& option, int64_t fallback, int64_t count, const std::string& context) const;
    // --block: 0 when absent (the script's `block`), else 16, 32, 64, 128 or 256.
    int32_t block_size() const;

private:
    std::string command_;
    std::vector<std::string> positionals_;
    std::map<std::string, std::string> values_;
    std::set<std::string> switches_;
};

} // namespace sparsa::cli
