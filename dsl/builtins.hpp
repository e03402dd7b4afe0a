// The language's built-in functions: their parameters, what they return, and how to call them.
// The checker validates calls against this table; the evaluator implements each one.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace sparsa::dsl {

struct Builtin {
    enum class Returns { pattern, set, number };
    std::string name;
    std::vector<std::string> params;  // positional order; every one may also be given by name
    size_t required = 0;              // the first `required` params must be given
    Returns returns = Returns::pattern;
    std::string usage;                // "window(w) or window(left = a, right = b)"
};

// The built-in called `name`, or null.
const Builtin* builtin_find(const std::string& name);

// Index of parameter `name` in builtin.params, or builtin.params.size() when absent.
size_t builtin_param_index(const Builtin& builtin, const std::string& name);

// Every built-in name, for did-you-mean suggestions.
const std::vector<std::string>& builtin_names();

// Names the language defines that scripts may not redefine: n B h l H L, true and false, and
// the built-ins.
bool name_is_reserved(const std::string& name);

} // namespace sparsa::dsl
