// The top-level `|` operands of an attend line, each evaluated alone (see pattern_parts.hpp).
#include "dsl/pattern_parts.hpp"

#include "dsl/eval.hpp"

#include <algorithm>

namespace sparsa::dsl {

namespace {

namespace x3 = boost::spirit::x3;

// The byte span of any operand (every alternative of the variant is a Span).
struct SpanOf {
    using result_type = ast::Span;
    template <class T> ast::Span operator()(const T& node) const { return node; }
    template <class T> ast::Span operator()(const x3::forward_ast<T>& node) const { return node.get(); }
};

ast::Span operand_span(const ast::Operand& operand) { return operand.apply_visitor(SpanOf{}); }

// A parenthesised chain as the whole operand: `(a | b)`.
const ast::Expr* operand_group(const ast::Operand& operand) {
    if (const auto* group = boost::get<x3::forward_ast<ast::Expr>>(&operand.get())) return &group->get();
    return nullptr;
}

// The top-level union's operands of expr, looking through parentheses around the whole of it.
std::vector<const ast::Operand*> union_operands(const ast::Expr& expr) {
    const ast::Expr* e = &expr;
    while (e->rest.empty()) {
        const ast::Expr* inner = operand_group(e->first);
        if (inner == nullptr) break;
        e = inner;
    }
    bool all_union = std::all_of(e->rest.begin(), e->rest.end(), [](const ast::Operation& op) { return op.op == '|'; });
    std::vector<const ast::Operand*> out;
    out.push_back(&e->first);
    if (!all_union) return out;  // e.g. `a - b`: one part, the whole expression
    for (const auto& op : e->rest) out.push_back(&op.rhs);
    return out;
}

// Splits an evaluated pattern's unions into leaves, left to right (for `attend =
// longformer(...)`), with an explicit stack: a chain of lets makes unions thousands deep.
void pattern_union_leaves(const PatternPtr& root, std::vector<PatternPtr>& out) {
    std::vector<PatternPtr> stack{root};
    while (!stack.empty()) {
        PatternPtr p = std::move(stack.back());
        stack.pop_back();
        if (p->kind != PatternKind::union_) {
            out.push_back(std::move(p));
            continue;
        }
        for (size_t i = p->kids.size(); i-- > 0;) stack.push_back(p->kids[i]);
    }
}

// The attend line the last matching selector picks for (layer, head), as script_pattern does.
const AttendLine& chosen_line(const Script& script, Evaluator& evaluator, int64_t layer, int64_t head) {
    const AttendLine* chosen = nullptr;
    for (const auto& line : script.attends) {
        bool match = true;
        if (line.statement->selector) {
            for (const auto& item : *line.statement->selector) {
                Value v = evaluator.evaluate(item.range, *script.main, line.visible);
                int64_t lo = v.kind == Value::Kind::range ? v.lo : v.integer;
                int64_t hi = v.kind == Value::Kind::range ? v.hi : v.integer + 1;
                int64_t at = item.axis == "head" ? head : layer;
                if (at < lo || at >= hi) match = false;
            }
        }
        if (match) chosen = &line;
    }
    if (chosen == nullptr) throw Error("no attend line covers layer " + std::to_string(layer) + ", head " + std::to_string(head));
    return *chosen;
}

} // namespace

PatternParts script_pattern_parts(const Script& script, int64_t n, int32_t block, int64_t layer, int64_t head) {
    const ScriptSettings& s = script.settings;
    if (layer < 0 || layer >= s.layers || head < 0 || head >= s.heads) {
        throw Error("layer " + std::to_string(layer) + ", head " + std::to_string(head) + " is outside the script's " +
                    std::to_string(s.layers) + " layers and " + std::to_string(s.heads) + " heads");
    }
    const EvalContext context = eval_context_attend(script, n, block, layer, head);
    Evaluator evaluator(context, nullptr);
    const AttendLine& line = chosen_line(script, evaluator, layer, head);
    const std::string& text = script.main->source->text;

    PatternParts out;
    out.causal = s.causal;
    out.line = std::count(text.begin(), text.begin() + std::max<int32_t>(0, line.statement->begin), '\n') + 1;
    std::vector<const ast::Operand*> operands = union_operands(line.statement->value);
    for (const ast::Operand* operand : operands) {
        ast::Span span = operand_span(*operand);
        ast::Expr alone;
        alone.begin = span.begin;
        alone.end = span.end;
        alone.first = *operand;
        Value v = evaluator.evaluate(alone, *script.main, line.visible);
        PatternPart part;
        part.begin = span.begin;
        part.end = span.end;
        if (span.begin >= 0 && span.end <= static_cast<int32_t>(text.size()) && span.begin < span.end) {
            part.text = text.substr(static_cast<size_t>(span.begin), static_cast<size_t>(span.end - span.begin));
        }
        if (v.kind == Value::Kind::pattern) part.pattern = v.pattern;
        out.parts.push_back(std::move(part));
    }
    // One operand that is itself a union (a name or a call): split its evaluated pattern.
    if (out.parts.size() == 1 && out.parts[0].pattern && out.parts[0].pattern->kind == PatternKind::union_) {
        std::vector<PatternPtr> leaves;
        pattern_union_leaves(out.parts[0].pattern, leaves);
        out.parts.clear();
        for (const auto& leaf : leaves) out.parts.push_back(PatternPart{pattern_key(*leaf), -1, -1, leaf, nullptr});
    }
    out.n = n;
    out.block = block;
    for (PatternPart& part : out.parts) {
        if (part.pattern && !pattern_is_data_dependent(*part.pattern)) {
            part.mask = std::make_shared<const BlockMask>(pattern_compile(*part.pattern, n, block));
        }
    }
    return out;
}

std::vector<size_t> pattern_parts_allowing(const PatternParts& parts, int64_t n, int32_t block, int64_t q, int64_t k) {
    std::vector<size_t> out;
    if (parts.causal && k > q) return out;
    for (size_t i = 0; i < parts.parts.size(); ++i) {
        const PatternPart& part = parts.parts[i];
        bool allows = false;
        if (part.mask && parts.n == n && parts.block == block) {
            allows = part.mask->allowed(q, k);
        } else if (part.pattern && !pattern_is_data_dependent(*part.pattern)) {
            allows = pattern_allowed(*part.pattern, n, block, q, k);
        }
        if (allows) out.push_back(i);
    }
    return out;
}

} // namespace sparsa::dsl
