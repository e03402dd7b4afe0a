// Parsing subcommand arguments with errors that say which option and what it expects.
#include "cli/args.hpp"

#include "engine/block_mask.hpp"
#include "engine/error.hpp"

#include <charconv>
#include <cstdint>

namespace sparsa::cli {

Args::Args(const std::vector<std::string>& argv, const std::string& command,
           std::set<std::string> with_value, std::set<std::string> switches)
    : command_(command) {
    bool only_positionals = false;
    for (size_t i = 0; i < argv.size(); ++i) {
        const std::string& a = argv[i];
        if (only_positionals || a.size() < 2 || a[0] != '-' || (a[1] >= '0' && a[1] <= '9')) {
            positionals_.push_back(a);
            continue;
        }
        if (a == "--") {
            only_positionals = true;
            continue;
        }
        std::string name = a, inline_value;
        bool has_inline = false;
        if (auto eq = a.find('='); eq != std::string::npos && a.rfind("--", 0) == 0) {
            name = a.substr(0, eq);
            inline_value = a.substr(eq + 1);
            has_inline = true;
        }
        if (with_value.count(name) != 0) {
            if (values_.count(name) != 0) throw Error(command_ + ": " + name + " is given twice");
            if (has_inline) {
                values_[name] = inline_value;
            } else if (i + 1 < argv.size()) {
                values_[name] = argv[++i];
            } else {
                throw Error(command_ + ": " + name + " needs a value (see sparsa " + command_ + " --help)");
            }
        } else if (switches.count(name) != 0 && !has_inline) {
            switches_.insert(name);
        } else {
            throw Error(command_ + ": unknown option '" + a + "' (see sparsa " + command_ + " --help)");
        }
    }
}

bool Args::has(const std::string& option) const {
    return switches_.count(option) != 0 || values_.count(option) != 0;
}

std::optional<std::string> Args::value(const std::string& option) const {
    auto it = values_.find(option);
    if (it == values_.end()) return std::nullopt;
    return it->second;
}

int64_t Args::integer(const std::string& option, int64_t fallback, int64_t min, int64_t max) const {
    auto text = value(option);
    if (!text) return fallback;
    int64_t out = 0;
    auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), out);
    if (ec != std::errc() || end != text->data() + text->size()) {
        throw Error(command_ + ": " + option + " expects an integer; got '" + *text + "'");
    }
    if (out < min || out > max) {
        throw Error(command_ + ": " + option + " must be from " + std::to_string(min) + " to " +
                    std::to_string(max) + "; got " + *text);
    }
    return out;
}

int64_t Args::position(const std::string& option, int64_t fallback, int64_t count, const std::string& context) const {
    auto text = value(option);
    if (!text) return fallback;
    const int64_t out = integer(option, 0, INT64_MIN, INT64_MAX);
    if (out < 0 || out >= count) {
        throw Error(command_ + ": " + option + " " + *text + " is outside 0 to " + std::to_string(count - 1) + " (" + context + ")");
    }
    return out;
}

int32_t Args::block_size() const {
    auto text = value("--block");
    if (!text) return 0;
    const int64_t out = integer("--block", 0, INT64_MIN, INT64_MAX);
    if (!block_size_valid(out)) {
        throw Error(command_ + ": --block " + *text + " is not a block size sparsa supports (use 16, 32, 64, 128 or 256)");
    }
    return static_cast<int32_t>(out);
}

int64_t Args::required_integer(const std::string& option, int64_t min, int64_t max) const {
    if (!value(option)) {
        throw Error(command_ + ": " + option + " is required (see sparsa " + command_ + " --help)");
    }
    return integer(option, 0, min, max);
}

} // namespace sparsa::cli
