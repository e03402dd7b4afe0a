// The syntax tree of a pattern script, as the Spirit X3 grammar (grammar_def.hpp) builds it.
// Every node remembers its byte span in the source, so diagnostics can point at it.
#pragma once

#include <boost/fusion/include/adapt_struct.hpp>
#include <boost/spirit/home/x3/support/ast/variant.hpp>

#include <cstdint>
#include <boost/optional.hpp>
#include <string>
#include <vector>

namespace sparsa::dsl::ast {

namespace x3 = boost::spirit::x3;

// Byte offsets [begin, end) of a node in its source text; -1 when unknown.
struct Span {
    int32_t begin = -1;
    int32_t end = -1;
};

// [SECTION] Expressions

struct Number : Span { std::string text; };  // "64", "0.5"
struct String : Span { std::string text; };  // contents, without the quotes
struct Name : Span { std::string text; };

struct Call;
struct SetLiteral;
struct Unary;
struct Expr;

struct Operand : x3::variant<Number, String, x3::forward_ast<Call>, Name,
                             x3::forward_ast<SetLiteral>, x3::forward_ast<Unary>,
                             x3::forward_ast<Expr>> {
    using base_type::base_type;
    using base_type::operator=;
};

// One step of a left-to-right chain: op is one of | - + & * / % ^ and '.' for "..".
struct Operation : Span {
    char op = 0;
    Operand rhs;
};

// first op1 rhs1 op2 rhs2 ...: all operators of one chain share a precedence level.
struct Expr : Span {
    Operand first;
    std::vector<Operation> rest;
};

struct Unary : Span {
    char op = 0;  // '-' (negation) or '!' (complement)
    Operand operand;
};

struct KeywordArg : Span {
    Name key;
    Expr value;
};

struct Arg : x3::variant<KeywordArg, Expr> {
    using base_type::base_type;
    using base_type::operator=;
};

struct Call : Span {
    Name function;
    std::vector<Arg> args;
};

struct SetLiteral : Span {
    char open = '{';
    std::vector<Expr> members;  // {0, 17, 99}
};

// [SECTION] Statements

// block EXPR | heads EXPR | layers EXPR | causal (no value)
struct SimpleStatement : Span {
    std::string keyword;
    boost::optional<Expr> value;
};

struct LetStatement : Span {
    Name name;
    Expr value;
};

struct Param : Span {
    Name name;
    boost::optional<Expr> default_value;
};

struct DefStatement : Span {
    Name name;
    std::vector<Param> params;
    Expr body;
};

struct ImportStatement : Span {
    std::string keyword;  // "import"
    String path;
};

// head A..B | layer A..B | head A (one index)
struct SelectorItem : Span {
    std::string axis;  // "head" or "layer"
    Expr range;
};

struct AttendStatement : Span {
    boost::optional<std::vector<SelectorItem>> selector;
    Expr value;
};

struct Statement : x3::variant<SimpleStatement, LetStatement, DefStatement, ImportStatement,
                               AttendStatement> {
    using base_type::base_type;
    using base_type::operator=;
};

using Script = std::vector<Statement>;

} // namespace sparsa::dsl::ast

BOOST_FUSION_ADAPT_STRUCT(sparsa::dsl::ast::Operation, op, rhs)
BOOST_FUSION_ADAPT_STRUCT(sparsa::dsl::ast::Expr, first, rest)
BOOST_FUSION_ADAPT_STRUCT(sparsa::dsl::ast::Unary, op, operand)
BOOST_FUSION_ADAPT_STRUCT(sparsa::dsl::ast::KeywordArg, key, value)
BOOST_FUSION_ADAPT_STRUCT(sparsa::dsl::ast::Call, function, args)
BOOST_FUSION_ADAPT_STRUCT(sparsa::dsl::ast::SetLiteral, open, members)
BOOST_FUSION_ADAPT_STRUCT(sparsa::dsl::ast::SimpleStatement, keyword, value)
BOOST_FUSION_ADAPT_STRUCT(sparsa::dsl::ast::LetStatement, name, value)
BOOST_FUSION_ADAPT_STRUCT(sparsa::dsl::ast::Param, name, default_value)
BOOST_FUSION_ADAPT_STRUCT(sparsa::dsl::ast::DefStatement, name, params, body)
BOOST_FUSION_ADAPT_STRUCT(sparsa::dsl::ast::ImportStatement, keyword, path)
BOOST_FUSION_ADAPT_STRUCT(sparsa::dsl::ast::SelectorItem, axis, range)
BOOST_FUSION_ADAPT_STRUCT(sparsa::dsl::ast::AttendStatement, selector, value)
