// The one exception type of sparsa: a message a user can act on (what, where, how to fix).
#pragma once

#include <stdexcept>
#include <string>

namespace sparsa {

// Thrown for bad input (files, shapes, parameters); the CLI prints what() on one line.
class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message) : std::runtime_error(message) {}
};

} // namespace sparsa
