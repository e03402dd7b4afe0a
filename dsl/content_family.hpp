// Inside dsl/: the content-based families of a script (lsh, anchors, favor) as the evaluator
// meets them: a call's arguments checked into a ContentSpec, and the operators that may or may
// not take them. docs/pattern-language.md says what they mean and where they may stand.
#pragma once

#include "dsl/eval.hpp"
#include "engine/content/content_spec.hpp"

#include <cstdint>
#include <vector>

namespace sparsa::dsl {

struct Builtin;

// One built-in call's arguments, bound to its parameters.
struct CallArgs {
    const Builtin* builtin = nullptr;
    std::vector<const Value*> values;   // per parameter, null when absent
    std::vector<ast::Span> spans;       // per parameter, where it is written (the call's when absent)
    ast::Span call;                     // the whole call
    SourcePtr source;                   // the file it is written in: its folder resolves fit and file
};

// lsh(...), anchors(...) or favor(...) as a spec: every argument checked (a ScriptError with a
// caret on the argument at fault: odd buckets, a count below 1, more buckets than n when n is
// known, a wrong type, a fit or file that is missing or of the wrong shape); chunk defaults to
// context.block, causal is context.causal, a fit or file becomes an absolute path.
ContentSpec content_family_spec(const CallArgs& args, const EvalContext& context);

// Throws a ScriptError with a caret on the operator at [op_begin, op_end) when `op` ('|', '&',
// '-', or '!' with rhs null) may not take these operands: favor with any operator, a content
// family under & - !, or two families in one union. Returns when the operation is allowed.
void content_operator_check(char op, const Pattern& lhs, const Pattern* rhs, const SourcePtr& source,
                            int32_t op_begin, int32_t op_end);

} // namespace sparsa::dsl
