// Parsing a pattern script's text into its syntax tree (the grammar is in grammar_def.hpp).
#pragma once

#include "dsl/ast.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

namespace sparsa::dsl {

// The first syntax error of a script: where parsing stopped and what it expected there.
struct SyntaxError {
    int32_t offset = 0;     // byte offset in the text
    int32_t length = 1;     // bytes to underline
    std::string expected;   // the rule's name, e.g. "expression", "')'", "statement"
};

// Expressions may nest this deep (parentheses, calls, sets, unary operators).
constexpr int kMaxNesting = 100;

// Parses a whole script. Never throws for bad text: returns the tree or the first error.
std::variant<ast::Script, SyntaxError> grammar_parse(std::string_view text);

} // namespace sparsa::dsl
