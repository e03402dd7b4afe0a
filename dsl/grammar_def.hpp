// The grammar of the pattern language in Spirit X3, laid out as EBNF. Rule names are the
// words of syntax errors ("expected expression"), so they read as a user would say them.
//
// Precedence, loosest first:  |   ..   + -   &   * / %   ^   unary - !
// Patterns use | - & ! (spec: ! binds tightest, then &, then -, then |); numbers use the rest.
// `&` never applies to numbers and `+` never to patterns, so one table serves both.
#pragma once

#include "dsl/ast.hpp"
#include "dsl/grammar.hpp"
#include "dsl/stack_guard.hpp"

#include <boost/spirit/home/x3.hpp>

#include <boost/optional.hpp>
#include <string>
#include <vector>

namespace sparsa::dsl::grammar {

namespace x3 = boost::spirit::x3;

// [SECTION] Context: the source text (for spans) and the nesting counter

struct source_tag;
struct depth_tag;

struct SourceRange {
    const char* begin;
    const char* end;
};

// Moves past blanks and comments, so a node's span starts at its first real character.
inline const char* skip_blank(const char* p, const char* end) {
    while (p < end) {
        if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' || *p == '\f' || *p == '\v') {
            ++p;
        } else if (*p == '#') {
            while (p < end && *p != '\n') ++p;
        } else {
            break;
        }
    }
    return p;
}

// Rule ids derive from this: on success, a node that has a Span records where it came from.
struct annotate_span {
    template <typename Iterator, typename Attribute, typename Context>
    void on_success(Iterator const& first, Iterator const& last, Attribute& node,
                    Context const& context) const {
        if constexpr (std::is_base_of_v<ast::Span, Attribute>) {
            const SourceRange& source = x3::get<source_tag>(context);
            const char* begin = skip_blank(first, last);
            node.begin = static_cast<int32_t>(begin - source.begin);
            node.end = static_cast<int32_t>(last - source.begin);
        }
    }
};

// depth_guard[p]: parses p, failing with "shallower nesting" past kMaxNesting levels (each
// level takes a few KiB of stack in X3's recursive descent), or with "shallower nesting for the
// stack" when this thread's stack is nearly used up, so a hostile script cannot exhaust it.
template <typename Subject>
struct depth_guard_directive : x3::unary_parser<Subject, depth_guard_directive<Subject>> {
    using base_type = x3::unary_parser<Subject, depth_guard_directive<Subject>>;
    static bool const is_pass_through_unary = true;

    explicit depth_guard_directive(Subject const& subject) : base_type(subject) {}

    template <typename Iterator, typename Context, typename RContext, typename Attribute>
    bool parse(Iterator& first, Iterator const& last, Context const& context, RContext& rcontext,
               Attribute& attr) const {
        int& depth = *x3::get<depth_tag>(context);
        if (depth >= kMaxNesting) {
            throw x3::expectation_failure<Iterator>(first, "shallower nesting");
        }
        if (stack_nearly_exhausted()) {
            throw x3::expectation_failure<Iterator>(first, "shallower nesting for the stack");
        }
        struct Leave {
            int& depth;
            ~Leave() { --depth; }
        } leave{++depth};
        return this->subject.parse(first, last, context, rcontext, attr);
    }
};

struct depth_guard_gen {
    template <typename Subject>
    depth_guard_directive<typename x3::extension::as_parser<Subject>::value_type>
    operator[](Subject const& subject) const {
        return depth_guard_directive<typename x3::extension::as_parser<Subject>::value_type>(
            x3::as_parser(subject));
    }
};
inline depth_guard_gen const depth_guard{};

// [SECTION] Lexemes

inline auto const ident_head = x3::char_("a-zA-Z_");
inline auto const ident_tail = x3::char_("a-zA-Z0-9_");
inline auto const digit = x3::char_("0-9");
inline auto const blank = x3::char_(" \t\r\n\f\v");
inline auto const skipper = blank | (x3::lit('#') >> *(x3::char_ - x3::eol));

// kw("let"): the whole word, not the start of a longer name.
inline auto kw(char const* word) { return x3::lexeme[x3::lit(word) >> !ident_tail]; }

inline auto const reserved =
    kw("let") | kw("def") | kw("attend") | kw("import") | kw("block") | kw("heads") | kw("layers");

// The semantic action of the leaves: the matched text (raw[...]) becomes the node's text and
// span. (Rules with actions do not pass through annotate_span, so leaves record it here.)
inline auto const set_text = [](auto& ctx) {
    const SourceRange& source = x3::get<source_tag>(ctx);
    auto const& matched = x3::_attr(ctx);
    auto& node = x3::_val(ctx);
    node.text.assign(matched.begin(), matched.end());
    node.begin = static_cast<int32_t>(matched.begin() - source.begin);
    node.end = static_cast<int32_t>(matched.end() - source.begin);
    if constexpr (std::is_same_v<std::decay_t<decltype(node)>, ast::String>) {
        node.text = node.text.substr(1, node.text.size() - 2);  // drop the quotes
    }
};

// [SECTION] Rules

struct number_id : annotate_span {};
struct string_id : annotate_span {};
struct name_id : annotate_span {};
struct call_id : annotate_span {};
struct arg_id : annotate_span {};
struct keyword_arg_id : annotate_span {};
struct set_literal_id : annotate_span {};
struct negation_id : annotate_span {};
struct operand_id : annotate_span {};
struct primary_id : annotate_span {};
struct power_id : annotate_span {};
struct product_id : annotate_span {};
struct conjunction_id : annotate_span {};
struct sum_id : annotate_span {};
struct range_id : annotate_span {};
struct union_id : annotate_span {};
struct power_op_id : annotate_span {};
struct product_op_id : annotate_span {};
struct conjunction_op_id : annotate_span {};
struct sum_op_id : annotate_span {};
struct range_op_id : annotate_span {};
struct union_op_id : annotate_span {};
struct simple_statement_id : annotate_span {};
struct let_statement_id : annotate_span {};
struct def_statement_id : annotate_span {};
struct param_id : annotate_span {};
struct import_statement_id : annotate_span {};
struct attend_statement_id : annotate_span {};
struct selector_item_id : annotate_span {};
struct selector_id : annotate_span {};
struct selector_items_id : annotate_span {};
struct statement_id : annotate_span {};
struct script_id : annotate_span {};
struct end_id : annotate_span {};

x3::rule<number_id, ast::Number> const number = "number";
x3::rule<string_id, ast::String> const string_literal = "string";
x3::rule<name_id, ast::Name> const name = "name";
x3::rule<call_id, ast::Call> const call = "call";
x3::rule<arg_id, ast::Arg> const arg = "argument";
x3::rule<keyword_arg_id, ast::KeywordArg> const keyword_arg = "keyword argument";
x3::rule<set_literal_id, ast::SetLiteral> const set_literal = "token set";
x3::rule<negation_id, ast::Unary> const negation = "negation";
x3::rule<operand_id, ast::Operand> const operand = "operand";
x3::rule<primary_id, ast::Operand> const primary = "operand";
x3::rule<power_id, ast::Expr> const power = "expression";
x3::rule<product_id, ast::Expr> const product = "expression";
x3::rule<conjunction_id, ast::Expr> const conjunction = "expression";
x3::rule<sum_id, ast::Expr> const sum = "expression";
x3::rule<range_id, ast::Expr> const range = "expression";
x3::rule<union_id, ast::Expr> const expression = "expression";
x3::rule<power_op_id, ast::Operation> const power_op = "expression";
x3::rule<product_op_id, ast::Operation> const product_op = "expression";
x3::rule<conjunction_op_id, ast::Operation> const conjunction_op = "expression";
x3::rule<sum_op_id, ast::Operation> const sum_op = "expression";
x3::rule<range_op_id, ast::Operation> const range_op = "expression";
x3::rule<union_op_id, ast::Operation> const union_op = "expression";
x3::rule<simple_statement_id, ast::SimpleStatement> const simple_statement = "statement";
x3::rule<let_statement_id, ast::LetStatement> const let_statement = "let statement";
x3::rule<def_statement_id, ast::DefStatement> const def_statement = "def statement";
x3::rule<param_id, ast::Param> const param = "parameter";
x3::rule<import_statement_id, ast::ImportStatement> const import_statement = "import statement";
x3::rule<attend_statement_id, ast::AttendStatement> const attend_statement = "attend statement";
x3::rule<selector_item_id, ast::SelectorItem> const selector_item = "selector";
x3::rule<selector_id, std::vector<ast::SelectorItem>> const selector = "selector";
x3::rule<selector_items_id, std::vector<ast::SelectorItem>> const selector_items = "selector";
x3::rule<statement_id, ast::Statement> const statement = "statement";
x3::rule<end_id, x3::unused_type> const end_of_script = "statement";
x3::rule<script_id, ast::Script> const script = "script";

// clang-format off
auto const number_def         = x3::raw[x3::lexeme[+digit >> -('.' >> +digit)]][set_text];
auto const string_literal_def = x3::raw[x3::lexeme['"' > *(x3::char_ - '"' - x3::eol) > '"']][set_text];
auto const name_def           = x3::raw[x3::lexeme[!reserved >> ident_head >> *ident_tail]][set_text];

auto const expression_def     = range   >> *union_op;
auto const union_op_def       = x3::char_('|') > range;
auto const range_def          = sum     >> x3::repeat(0, 1)[range_op];
auto const range_op_def       = x3::lit("..") >> x3::attr('.') > sum;
auto const sum_def            = conjunction >> *sum_op;
auto const sum_op_def         = x3::char_("+-") > conjunction;
auto const conjunction_def    = product >> *conjunction_op;
auto const conjunction_op_def = x3::char_('&') > product;
auto const product_def        = power   >> *product_op;
auto const product_op_def     = x3::char_("*/%") > power;
auto const power_def          = operand >> *power_op;          // right-associative: see eval
auto const power_op_def       = x3::char_('^') > operand;
auto const operand_def        = depth_guard[negation | primary];
auto const negation_def       = x3::char_("-!") > operand;
auto const primary_def        = number
                              | string_literal
                              | call
                              | name
                              | set_literal
                              | ('(' > expression > ')');
auto const call_def           = name >> ('(' > -(arg % ',') > ')');
auto const arg_def            = keyword_arg | expression;
auto const keyword_arg_def    = name >> '=' > expression;
auto const set_literal_def    = x3::char_('{') > -(expression % ',') > '}';

auto const simple_statement_def = (kw("block")  >> x3::attr(std::string("block"))  > expression)
                                | (kw("heads")  >> x3::attr(std::string("heads"))  > expression)
                                | (kw("layers") >> x3::attr(std::string("layers")) > expression)
                                | (kw("causal") >> x3::attr(std::string("causal"))
                                                >> x3::attr(boost::optional<ast::Expr>()));
auto const let_statement_def    = kw("let") > name > '=' > expression;
auto const def_statement_def    = kw("def") > name > '(' > -(param % ',') > ')' > '=' > expression;
auto const param_def            = name >> -('=' > expression);
auto const import_statement_def = kw("import") >> x3::attr(std::string("import")) > string_literal;
auto const attend_statement_def = kw("attend") >> -selector > '=' > expression;
auto const selector_def         = '[' > selector_items > ']';
auto const selector_items_def   = selector_item % ',';
auto const selector_item_def    = ((kw("head")  >> x3::attr(std::string("head")))
                                 | (kw("layer") >> x3::attr(std::string("layer")))) > expression;
auto const statement_def        = simple_statement
                                | let_statement
                                | def_statement
                                | import_statement
                                | attend_statement;
auto const end_of_script_def    = x3::eoi;
auto const script_def           = *statement > end_of_script;
// clang-format on

BOOST_SPIRIT_DEFINE(number, string_literal, name, call, arg, keyword_arg, set_literal, negation,
                    operand, primary, power, product, conjunction, sum, range, expression,
                    power_op, product_op, conjunction_op, sum_op, range_op, union_op)
BOOST_SPIRIT_DEFINE(simple_statement, let_statement, def_statement, param, import_statement,
                    attend_statement, selector, selector_items, selector_item, statement, end_of_script, script)

} // namespace sparsa::dsl::grammar
