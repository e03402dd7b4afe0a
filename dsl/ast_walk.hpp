// One walk over an expression's operands for the checker and the evaluator: nested operands
// (call arguments, set members, unary operands, parenthesised groups) come from an explicit
// stack, so a deep expression costs no C++ stack.
#pragma once

#include "dsl/ast.hpp"

#include <vector>

namespace sparsa::dsl {

// Calls `visit(operand)` on every operand of `expr`, nested ones included, in source order, an
// operand before what it holds. Stops, and returns true, as soon as `visit` returns true.
template <class Visit>
bool expr_operands_find(const ast::Expr& expr, Visit&& visit) {
    std::vector<const ast::Operand*> pending;  // popped from the back: pushed right to left
    auto push_expr = [&](const ast::Expr& e) {
        for (auto op = e.rest.rbegin(); op != e.rest.rend(); ++op) pending.push_back(&op->rhs);
        pending.push_back(&e.first);
    };
    push_expr(expr);
    while (!pending.empty()) {
        const ast::Operand& operand = *pending.back();
        pending.pop_back();
        if (visit(operand)) return true;
        if (const auto* call = boost::get<ast::x3::forward_ast<ast::Call>>(&operand)) {
            const auto& args = call->get().args;
            for (auto arg = args.rbegin(); arg != args.rend(); ++arg) {
                if (const auto* kw = boost::get<ast::KeywordArg>(&*arg)) push_expr(kw->value);
                else push_expr(boost::get<ast::Expr>(*arg));
            }
        } else if (const auto* set = boost::get<ast::x3::forward_ast<ast::SetLiteral>>(&operand)) {
            const auto& members = set->get().members;
            for (auto m = members.rbegin(); m != members.rend(); ++m) push_expr(*m);
        } else if (const auto* unary = boost::get<ast::x3::forward_ast<ast::Unary>>(&operand)) {
            pending.push_back(&unary->get().operand);
        } else if (const auto* group = boost::get<ast::x3::forward_ast<ast::Expr>>(&operand)) {
            push_expr(group->get());
        }
    }
    return false;
}

} // namespace sparsa::dsl
