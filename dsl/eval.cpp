// The evaluator: numbers, token sets and patterns from expressions, for one (layer, head).
//
// Index: [SECTION] Values and numbers, [SECTION] Built-ins, [SECTION] Expressions,
//        [SECTION] Operators, [SECTION] Calls, [SECTION] Which lines depend on the (layer, head)
#include "dsl/eval.hpp"

#include "dsl/ast_walk.hpp"
#include "dsl/builtins.hpp"
#include "dsl/content_family.hpp"
#include "dsl/stack_guard.hpp"
#include "io/mask_io.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

namespace sparsa::dsl {

// [SECTION] Values and numbers

std::string value_kind_name(Value::Kind kind) {
    switch (kind) {
    case Value::Kind::integer: return "an integer";
    case Value::Kind::real: return "a real number";
    case Value::Kind::pattern: return "a pattern";
    case Value::Kind::set: return "a token set";
    case Value::Kind::range: return "a range";
    case Value::Kind::string: return "a string";
    case Value::Kind::boolean: return "a boolean (true or false)";
    }
    return "a value";
}

namespace {

Value make_integer(int64_t v) {
    Value out;
    out.kind = Value::Kind::integer;
    out.integer = v;
    return out;
}

Value make_real(double v) {
    Value out;
    out.kind = Value::Kind::real;
    out.real = v;
    return out;
}

Value make_pattern(PatternPtr p) {
    Value out;
    out.kind = Value::Kind::pattern;
    out.pattern = std::move(p);
    return out;
}

Value make_set(TokenSet s) {
    Value out;
    out.kind = Value::Kind::set;
    out.set = std::make_shared<const TokenSet>(std::move(s));
    return out;
}

bool is_number(const Value& v) { return v.kind == Value::Kind::integer || v.kind == Value::Kind::real; }
double as_double(const Value& v) { return v.kind == Value::Kind::integer ? static_cast<double>(v.integer) : v.real; }

std::string describe_number(const Value& v) {
    if (v.kind == Value::Kind::integer) return std::to_string(v.integer);
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%g", v.real);
    std::string text = buffer;
    if (text.find_first_of(".eni") == std::string::npos) text += ".0";  // 16.0, not 16
    return text;
}

// Floor division and modulo (the sign of the divisor), as in Python.
int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
    return q;
}
int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }

} // namespace

// Where an evaluation is: which module's names it sees, its parameters, and its source.
struct Evaluator::Frame {
    const Module* module = nullptr;
    size_t visible = 0;
    const std::vector<std::pair<std::string, Value>>* locals = nullptr;
    SourcePtr source;
};

Evaluator::Evaluator(EvalContext context, std::vector<Diagnostic>* warnings)
    : context_(std::move(context)), warnings_(warnings) {}

void Evaluator::fail(const SourcePtr& source, int32_t begin, int32_t end, const std::string& message,
                     const std::string& hint) const {
    throw ScriptError({diagnostic_at(Severity::error, source, begin, end, message, hint)});
}

void Evaluator::warn(const Frame& frame, int32_t begin, int32_t end, std::string message,
                     std::string hint) {
    if (warnings_ == nullptr) return;
    auto key = std::make_pair(frame.source.get(), std::make_pair(begin, message));
    if (!warned_.insert(key).second) return;
    warning_add(*warnings_, diagnostic_at(Severity::warning, frame.source, begin, end, std::move(message),
                                          std::move(hint)));
}

void Evaluator::step(const Frame& frame, const ast::Span& span) {
    if (++steps_ > kMaxEvalSteps) {
        fail(frame.source, span.begin, span.end,
             "this script takes more than " + std::to_string(kMaxEvalSteps) +
                 " steps to evaluate",
             "definitions that call each other many times multiply the work; simplify them");
    }
}

Value Evaluator::evaluate(const ast::Expr& expr, const Module& module, size_t visible) {
    Frame frame{&module, visible, nullptr, module.source};
    return eval_expr(expr, frame);
}

// [SECTION] Expressions

Value Evaluator::eval_operand(const ast::Operand& operand, const Frame& frame) {
    struct Visitor {
        Evaluator& self;
        const Frame& frame;
        Value operator()(const ast::Number& number) const {
            self.step(frame, number);
            if (number.text.find('.') != std::string::npos) return make_real(std::stod(number.text));
            int64_t value = 0;
            for (char c : number.text) {
                if (__builtin_mul_overflow(value, int64_t{10}, &value) ||
                    __builtin_add_overflow(value, int64_t{c - '0'}, &value)) {
                    self.fail(frame.source, number.begin, number.end,
                              "number " + number.text + " is too large", "integers must be below 2^63");
                }
            }
            return make_integer(value);
        }
        Value operator()(const ast::String& string) const {
            Value out;
            out.kind = Value::Kind::string;
            out.text = string.text;
            return out;
        }
        Value operator()(const ast::Name& name) const { return self.eval_name(name, frame); }
        Value operator()(const ast::Call& call) const { return self.eval_call(call, frame); }
        Value operator()(const ast::SetLiteral& set) const {
            self.step(frame, set);
            std::vector<int64_t> members;
            bool dropped = false;
            for (const auto& member : set.members) {
                Value v = self.eval_expr(member, frame);
                if (v.kind != Value::Kind::integer) {
                    self.fail(frame.source, member.begin, member.end,
                              "a token set lists integers; this is " + value_kind_name(v.kind));
                }
                if (!self.context_.has_sequence) {
                    self.fail(frame.source, set.begin, set.end,
                              "token sets need the sequence length n, which is not known in " +
                                  self.context_.where);
                }
                if (v.integer < 0 || v.integer >= self.context_.n) {
                    dropped = true;
                } else {
                    members.push_back(v.integer);
                }
            }
            if (dropped) {
                self.warn(frame, set.begin, set.end,
                          "token set has members outside 0..n (n = " + std::to_string(self.context_.n) +
                              "); they are dropped");
            }
            return make_set(token_set_list(std::move(members)));
        }
        Value operator()(const ast::Unary& unary) const {
            self.step(frame, unary);
            Value v = self.eval_operand(unary.operand, frame);
            if (unary.op == '-') {
                if (v.kind == Value::Kind::integer) {
                    if (v.integer == std::numeric_limits<int64_t>::min()) {
                        self.fail(frame.source, unary.begin, unary.end, "integer overflow in negation");
                    }
                    return make_integer(-v.integer);
                }
                if (v.kind == Value::Kind::real) return make_real(-v.real);
                self.fail(frame.source, unary.begin, unary.end,
                          "'-' negates a number; this is " + value_kind_name(v.kind),
                          v.kind == Value::Kind::pattern ? "for the complement of a pattern write !P" : "");
            }
            if (v.kind != Value::Kind::pattern) {
                self.fail(frame.source, unary.begin, unary.end,
                          "'!' takes the complement of a pattern; this is " + value_kind_name(v.kind));
            }
            content_operator_check('!', *v.pattern, nullptr, frame.source, unary.begin, unary.begin + 1);
            return make_pattern(self.checked_pattern(pattern_complement(v.pattern), unary, frame));
        }
        Value operator()(const ast::Expr& expr) const { return self.eval_expr(expr, frame); }
    };
    return boost::apply_visitor(Visitor{*this, frame}, operand);
}

// Every level of nesting and every call of a definition passes through here: the one place
// that stops before this thread's stack runs out (see stack_guard.hpp). Its frame is kept
// small (the work is in eval_chain), since a chain of defs pays for it once per call.
Value Evaluator::eval_expr(const ast::Expr& whole, const Frame& frame) {
    // The grammar wraps an operand in one Expr per precedence level (`f(x)` is five deep);
    // those without an operator are stepped through here, not recursed into.
    const ast::Expr* expr = &whole;
    step(frame, *expr);
    while (expr->rest.empty()) {
        const auto* inner = boost::get<ast::x3::forward_ast<ast::Expr>>(&expr->first);
        if (inner == nullptr) break;
        expr = &inner->get();
        step(frame, *expr);
    }
    if (stack_nearly_exhausted()) {
        fail(frame.source, expr->begin, expr->end,
             "evaluating this expression nests too deeply for the stack of this thread",
             "split the expression with let, or shorten the chain of definitions that call each other");
    }
    if (expr->rest.empty()) return eval_operand(expr->first, frame);
    return eval_chain(*expr, frame);
}

// first op1 rhs1 op2 rhs2 ... from left to right; power chains from the right.
[[gnu::noinline]] Value Evaluator::eval_chain(const ast::Expr& expr, const Frame& frame) {
    if (expr.rest.front().op == '^') return eval_power(expr, frame);
    Value acc = eval_operand(expr.first, frame);
    for (const auto& op : expr.rest) {
        Value rhs = eval_operand(op.rhs, frame);
        ast::Span span{expr.begin, op.end};
        acc = apply(op.op, std::move(acc), std::move(rhs), span, frame, op.begin);
    }
    return acc;
}

// Power chains are right-associative: a ^ b ^ c = a ^ (b ^ c).
[[gnu::noinline]] Value Evaluator::eval_power(const ast::Expr& expr, const Frame& frame) {
    std::vector<Value> values{eval_operand(expr.first, frame)};
    for (const auto& op : expr.rest) values.push_back(eval_operand(op.rhs, frame));
    Value acc = values.back();
    for (size_t i = values.size() - 1; i-- > 0;) {
        acc = apply('^', std::move(values[i]), std::move(acc), expr.rest[i], frame);
    }
    return acc;
}

Value Evaluator::eval_name(const ast::Name& name, const Frame& frame) {
    step(frame, name);
    const std::string& id = name.text;
    if (frame.locals != nullptr) {
        for (const auto& [local, value] : *frame.locals) {
            if (local == id) return value;
        }
    }
    auto unknown_here = [&](const char* what) {
        fail(frame.source, name.begin, name.end,
             std::string(what) + " '" + id + "' is not known in " + context_.where,
             context_.where.find("statement") != std::string::npos
                 ? "block, heads and layers take constant values"
                 : "");
    };
    if (id == "n" || id == "B") {
        if (!context_.has_sequence) unknown_here(id == "n" ? "the sequence length" : "the block size");
        return make_integer(id == "n" ? context_.n : context_.block);
    }
    if (id == "h" || id == "l") {
        if (!context_.has_position) unknown_here(id == "h" ? "the head index" : "the layer index");
        return make_integer(id == "h" ? context_.head : context_.layer);
    }
    if (id == "H" || id == "L") {
        if (!context_.has_model) unknown_here(id == "H" ? "the head count" : "the layer count");
        return make_integer(id == "H" ? context_.heads : context_.layers);
    }
    if (const Definition* def = module_lookup(*frame.module, frame.visible, id)) {
        if (def->let == nullptr) {
            fail(frame.source, name.begin, name.end, "'" + id + "' is a function: call it as " + id + "(...)");
        }
        if (auto it = lets_.find(def); it != lets_.end()) return it->second;
        return eval_let(*def);
    }
    if (id == "true" || id == "false") {
        Value out;
        out.kind = Value::Kind::boolean;
        out.integer = id == "true" ? 1 : 0;
        return out;
    }
    if (id == "dense") return make_pattern(pattern_dense());
    if (id == "empty") return make_pattern(pattern_empty());
    if (id == "causal") return make_pattern(pattern_causal());
    // The checker rejects every other name before evaluation; keep a clear message regardless.
    fail(frame.source, name.begin, name.end, "unknown name '" + id + "'");
}

// The value of a let not evaluated yet. The uncached lets its body reads, and theirs, are
// evaluated first, in definition order (a let reads only earlier definitions), so each finds
// the ones it reads cached: a chain of thousands of lets, each reading the one before, never
// nests. (Lets read inside a def's body are found when that body runs.)
Value Evaluator::eval_let(const Definition& let) {
    std::vector<const Definition*> needed{&let};
    std::set<const Definition*> seen{&let};
    for (size_t i = 0; i < needed.size(); ++i) {
        const Definition& def = *needed[i];
        expr_operands_find(def.let->value, [&](const ast::Operand& operand) {
            if (const auto* name = boost::get<ast::Name>(&operand)) {
                const Definition* read = module_lookup(*def.module, def.visible, name->text);
                if (read != nullptr && read->let != nullptr && !lets_.count(read) && seen.insert(read).second) {
                    needed.push_back(read);
                }
            }
            return false;
        });
    }
    std::sort(needed.begin(), needed.end(),
              [](const Definition* a, const Definition* b) { return a->order < b->order; });
    for (const Definition* def : needed) {
        Frame inner{def->module, def->visible, nullptr, def->source};
        Value v = eval_expr(def->let->value, inner);
        lets_.emplace(def, std::move(v));
    }
    return lets_.at(&let);
}

// [SECTION] Operators

Value Evaluator::as_set(Value v, const ast::Span& span, const Frame& frame) {
    if (v.kind == Value::Kind::set) return v;
    if (v.kind != Value::Kind::range) return v;
    if (!context_.has_sequence) {
        fail(frame.source, span.begin, span.end,
             "token sets need the sequence length n, which is not known in " + context_.where);
    }
    int64_t lo = std::max<int64_t>(v.lo, 0);
    int64_t hi = std::min<int64_t>(v.hi, context_.n);
    if ((v.lo < 0 || v.hi > context_.n) && v.hi > v.lo) {
        warn(frame, span.begin, span.end,
             "token set " + std::to_string(v.lo) + ".." + std::to_string(v.hi) +
                 " has members outside 0..n (n = " + std::to_string(context_.n) + "); they are dropped");
    }
    return make_set(token_set_range(lo, hi));
}

PatternPtr Evaluator::checked_pattern(PatternPtr p, const ast::Span& span, const Frame& frame) {
    int64_t size = 1;
    auto add = [&](const PatternPtr& part) {
        auto it = sizes_.find(part.get());
        size += it == sizes_.end() ? 1 : it->second;
    };
    for (const auto& kid : p->kids) add(kid);
    if (p->outside) add(p->outside);  // random(r, outside = P): P is part of it
    if (size > kMaxPatternParts) {
        fail(frame.source, span.begin, span.end,
             "this pattern has more than " + std::to_string(kMaxPatternParts) + " parts",
             "long chains of operators, and definitions used many times inside others (each use "
             "counts), make it large; simplify it");
    }
    sizes_[p.get()] = size;
    return p;
}

// lhs and rhs are the caller's, taken by reference (not copied into the frame of eval_chain,
// which every level of nesting pays for) and left in an unspecified state.
Value Evaluator::apply(char op, Value&& lhs, Value&& rhs, const ast::Span& span, const Frame& frame, int32_t op_at) {
    step(frame, span);
    auto type_error = [&](const std::string& what, const std::string& hint = {}) -> Value {
        fail(frame.source, span.begin, span.end,
             what + "; got " + value_kind_name(lhs.kind) + " and " + value_kind_name(rhs.kind), hint);
    };
    if (op == '.') {
        if (lhs.kind != Value::Kind::integer || rhs.kind != Value::Kind::integer) {
            return type_error("a range A..B takes two integers");
        }
        Value out;
        out.kind = Value::Kind::range;
        out.lo = lhs.integer;
        out.hi = rhs.integer;
        return out;
    }
    if (op == '|' || op == '&' || (op == '-' && !is_number(lhs))) {
        lhs = as_set(std::move(lhs), span, frame);
        rhs = as_set(std::move(rhs), span, frame);
        const char* name = op == '|' ? "'|' (union)" : op == '&' ? "'&' (intersection)" : "'-' (difference)";
        if (lhs.kind == Value::Kind::pattern && rhs.kind == Value::Kind::pattern) {
            if (lhs.pattern->content || rhs.pattern->content) {
                const int32_t at = op_at >= 0 ? op_at : span.begin;
                content_operator_check(op, *lhs.pattern, rhs.pattern.get(), frame.source, at, op_at >= 0 ? at + 1 : span.end);
            }
            PatternPtr p = op == '|'   ? pattern_union(lhs.pattern, rhs.pattern)
                           : op == '&' ? pattern_intersect(lhs.pattern, rhs.pattern)
                                       : pattern_difference(lhs.pattern, rhs.pattern);
            return make_pattern(checked_pattern(std::move(p), span, frame));
        }
        if (lhs.kind == Value::Kind::set && rhs.kind == Value::Kind::set) {
            return make_set(op == '|'   ? token_set_union(*lhs.set, *rhs.set)
                            : op == '&' ? token_set_intersect(*lhs.set, *rhs.set)
                                        : token_set_difference(*lhs.set, *rhs.set));
        }
        bool mixed = (lhs.kind == Value::Kind::set && rhs.kind == Value::Kind::pattern) ||
                     (lhs.kind == Value::Kind::pattern && rhs.kind == Value::Kind::set);
        return type_error(std::string(name) + " combines two patterns or two token sets",
                          mixed ? "turn the token set into a pattern first: global(S), rows(S) or columns(S)"
                                : "");
    }
    if (!is_number(lhs) || !is_number(rhs)) {
        return type_error(std::string("'") + op + "' is arithmetic on numbers",
                          op == '+' ? "for the union of patterns write P | Q" : "");
    }
    if (lhs.kind == Value::Kind::integer && rhs.kind == Value::Kind::integer) {
        int64_t a = lhs.integer, b = rhs.integer, out = 0;
        bool overflow = false;
        switch (op) {
        case '+': overflow = __builtin_add_overflow(a, b, &out); break;
        case '-': overflow = __builtin_sub_overflow(a, b, &out); break;
        case '*': overflow = __builtin_mul_overflow(a, b, &out); break;
        case '/':
        case '%':
            if (b == 0) fail(frame.source, span.begin, span.end, "division by zero");
            if (a == std::numeric_limits<int64_t>::min() && b == -1) overflow = true;
            else out = op == '/' ? floor_div(a, b) : floor_mod(a, b);
            break;
        case '^':
            if (b < 0) return make_real(std::pow(static_cast<double>(a), static_cast<double>(b)));
            out = 1;
            for (int64_t base = a, e = b; e > 0 && !overflow; e >>= 1) {
                if (e & 1) overflow = __builtin_mul_overflow(out, base, &out);
                if (e > 1 && !overflow) overflow = __builtin_mul_overflow(base, base, &base);
            }
            break;
        default: break;
        }
        if (overflow) {
            fail(frame.source, span.begin, span.end,
                 "integer overflow: " + std::to_string(a) + " " + op + " " + std::to_string(b) +
                     " does not fit in 64 bits");
        }
        return make_integer(out);
    }
    double a = as_double(lhs), b = as_double(rhs), out = 0;
    switch (op) {
    case '+': out = a + b; break;
    case '-': out = a - b; break;
    case '*': out = a * b; break;
    case '/':
        if (b == 0) fail(frame.source, span.begin, span.end, "division by zero");
        out = a / b;
        break;
    case '%':
        if (b == 0) fail(frame.source, span.begin, span.end, "division by zero");
        out = a - std::floor(a / b) * b;
        break;
    case '^': out = std::pow(a, b); break;
    default: break;
    }
    if (!std::isfinite(out)) {
        fail(frame.source, span.begin, span.end,
             describe_number(lhs) + " " + op + " " + describe_number(rhs) + " is not a finite number");
    }
    return make_real(out);
}

// [SECTION] Calls

namespace {

// The arguments of one call, bound to the built-in's parameter names.
struct BoundArgs {
    std::vector<const Value*> values;   // per parameter, null when absent
    std::vector<ast::Span> spans;       // per parameter
    std::vector<Value> storage;
};

} // namespace

Value Evaluator::eval_call(const ast::Call& call, const Frame& frame) {
    step(frame, call);
    const std::string& id = call.function.text;
    if (frame.locals != nullptr) {
        for (const auto& local : *frame.locals) {
            if (local.first == id) {
                fail(frame.source, call.function.begin, call.function.end,
                     "'" + id + "' is a parameter holding " + value_kind_name(local.second.kind) +
                         ", not a function");
            }
        }
    }
    if (const Definition* def = module_lookup(*frame.module, frame.visible, id)) {
        if (def->def == nullptr) {
            fail(frame.source, call.function.begin, call.function.end,
                 "'" + id + "' is a value (let), not a function: write " + id + " without (...)");
        }
        return eval_user_call(call, *def, frame);
    }
    return eval_builtin(call, frame);
}

Value Evaluator::eval_user_call(const ast::Call& call, const Definition& def, const Frame& frame) {
    struct Depth {
        int& calls;
        ~Depth() { --calls; }
    } depth{++calls_};
    if (calls_ > kMaxCallDepth) {
        fail(frame.source, call.begin, call.end,
             "definitions call each other more than " + std::to_string(kMaxCallDepth) + " levels deep here",
             "a chain of defs each calling the one before: join some of them into one def");
    }
    const auto& params = def.def->params;
    std::vector<std::pair<std::string, Value>> locals;
    std::vector<bool> given(params.size(), false);
    std::vector<Value> values(params.size());
    size_t positional = 0;
    for (const auto& arg : call.args) {
        if (const auto* kw = boost::get<ast::KeywordArg>(&arg)) {
            auto it = std::find_if(params.begin(), params.end(),
                                   [&](const ast::Param& p) { return p.name.text == kw->key.text; });
            size_t i = static_cast<size_t>(it - params.begin());
            if (i >= params.size()) {   // the checker refuses it first; never write past the table
                fail(frame.source, kw->key.begin, kw->key.end, "no parameter '" + kw->key.text + "' here");
            }
            values[i] = eval_expr(kw->value, frame);
            given[i] = true;
        } else {
            if (positional >= params.size()) {
                fail(frame.source, call.begin, call.end, "too many arguments (" + std::to_string(params.size()) + " taken)");
            }
            values[positional] = eval_expr(boost::get<ast::Expr>(arg), frame);
            given[positional++] = true;
        }
    }
    Frame defaults{def.module, def.visible, nullptr, def.source};
    for (size_t i = 0; i < params.size(); ++i) {
        if (!given[i]) values[i] = eval_expr(*params[i].default_value, defaults);
        locals.emplace_back(params[i].name.text, std::move(values[i]));
    }
    Frame inner{def.module, def.visible, &locals, def.source};
    return eval_expr(def.def->body, inner);
}

Value Evaluator::eval_builtin(const ast::Call& call, const Frame& frame) {
    const Builtin* builtin = builtin_find(call.function.text);
    if (builtin == nullptr) {
        fail(frame.source, call.function.begin, call.function.end,
             "unknown pattern '" + call.function.text + "'");
    }
    // Bind arguments to parameters (the checker has already refused bad names and counts).
    BoundArgs args;
    args.values.assign(builtin->params.size(), nullptr);
    args.spans.assign(builtin->params.size(), ast::Span{call.begin, call.end});
    args.storage.reserve(call.args.size());
    size_t positional = 0;
    for (const auto& arg : call.args) {
        size_t index = 0;
        const ast::Expr* expr = nullptr;
        if (const auto* kw = boost::get<ast::KeywordArg>(&arg)) {
            index = builtin_param_index(*builtin, kw->key.text);
            expr = &kw->value;
        } else {
            index = positional++;
            expr = &boost::get<ast::Expr>(arg);
        }
        if (index >= builtin->params.size()) {   // the checker refuses these first; never write past the table
            fail(frame.source, call.begin, call.end,
                 builtin->name + " takes no argument " +
                     (boost::get<ast::KeywordArg>(&arg) ? "'" + boost::get<ast::KeywordArg>(arg).key.text + "'"
                                                       : "number " + std::to_string(index + 1)));
        }
        args.storage.push_back(eval_expr(*expr, frame));
        args.values[index] = &args.storage.back();
        args.spans[index] = ast::Span{expr->begin, expr->end};
    }

    const std::string& fn = builtin->name;
    auto has = [&](size_t i) { return args.values[i] != nullptr; };
    auto arg_error = [&](size_t i, const std::string& message, const std::string& hint = {}) {
        fail(frame.source, args.spans[i].begin, args.spans[i].end, message, hint);
    };
    auto integer = [&](size_t i, int64_t fallback = 0) -> int64_t {
        if (!has(i)) return fallback;
        const Value& v = *args.values[i];
        if (v.kind == Value::Kind::integer) return v.integer;
        std::string where = fn + ": " + builtin->params[i];
        if (v.kind == Value::Kind::real) {
            arg_error(i, where + " must be an integer; got " + describe_number(v),
                      "round it with floor(...) or ceil(...)");
        }
        arg_error(i, where + " must be an integer; got " + value_kind_name(v.kind));
        return 0;
    };
    auto at_least = [&](size_t i, int64_t value, int64_t minimum) {
        if (value < minimum) {
            arg_error(i, fn + ": " + builtin->params[i] + " must be at least " + std::to_string(minimum) +
                             "; got " + std::to_string(value));
        }
        return value;
    };
    auto number = [&](size_t i) -> double {
        const Value& v = *args.values[i];
        if (!is_number(v)) arg_error(i, fn + " takes a number; got " + value_kind_name(v.kind));
        return as_double(v);
    };
    auto token_set = [&](size_t i) -> TokenSet {
        Value v = as_set(*args.values[i], args.spans[i], frame);
        if (v.kind != Value::Kind::set) {
            arg_error(i, fn + " takes a token set (first(g), last(g), A..B, every(p), {a, b, ...}); got " +
                             value_kind_name(v.kind));
        }
        return *v.set;
    };
    auto need_sequence = [&] {
        if (!context_.has_sequence) {
            fail(frame.source, call.begin, call.end,
                 fn + "(...) needs the sequence length n, which is not known in " + context_.where);
        }
    };
    auto pattern = [&](PatternPtr p) { return make_pattern(checked_pattern(std::move(p), call, frame)); };

    // Numbers
    if (fn == "min" || fn == "max") {
        const Value& a = *args.values[0];
        const Value& b = *args.values[1];
        number(0);
        number(1);
        if (a.kind == Value::Kind::integer && b.kind == Value::Kind::integer) {
            return make_integer(fn == "min" ? std::min(a.integer, b.integer) : std::max(a.integer, b.integer));
        }
        return make_real(fn == "min" ? std::min(as_double(a), as_double(b)) : std::max(as_double(a), as_double(b)));
    }
    if (fn == "log2" || fn == "sqrt") {
        double x = number(0);
        if (x < 0 || (fn == "log2" && x == 0)) {
            arg_error(0, fn + " of " + describe_number(*args.values[0]) + " is not a real number");
        }
        return make_real(fn == "log2" ? std::log2(x) : std::sqrt(x));
    }
    if (fn == "ceil" || fn == "floor") {
        if (args.values[0]->kind == Value::Kind::integer) return *args.values[0];
        double x = number(0);
        double r = fn == "ceil" ? std::ceil(x) : std::floor(x);
        if (!(r > -9.2e18 && r < 9.2e18)) arg_error(0, fn + ": " + describe_number(*args.values[0]) + " is too large");
        return make_integer(static_cast<int64_t>(r));
    }

    // Token sets
    if (fn == "first" || fn == "last") {
        need_sequence();
        int64_t g = at_least(0, integer(0), 0);
        if (g > context_.n) {
            warn(frame, call.begin, call.end,
                 fn + "(" + std::to_string(g) + ") asks for more tokens than n = " + std::to_string(context_.n) +
                     "; the extra members are dropped");
        }
        g = std::min(g, context_.n);
        return make_set(fn == "first" ? token_set_range(0, g) : token_set_range(context_.n - g, context_.n));
    }
    if (fn == "every") {
        need_sequence();
        int64_t p = at_least(0, integer(0), 1);
        int64_t offset = at_least(1, integer(1, 0), 0);
        int64_t width = at_least(2, integer(2, 1), 0);
        if (width > p) {
            arg_error(2, "every: width = " + std::to_string(width) + " is more than the period p = " + std::to_string(p),
                      "every(p, offset = o, width = w) keeps w tokens out of every p: use 0 <= w <= p");
        }
        return make_set(token_set_every(p, offset, context_.n, width));
    }

    // Patterns
    if (fn == "dense") return pattern(pattern_dense());
    if (fn == "empty") return pattern(pattern_empty());
    if (fn == "causal") return pattern(pattern_causal());
    if (fn == "window") {
        if (has(0)) {
            if (has(1) || has(2)) {
                arg_error(1, "window takes either a width w or left/right, not both",
                          "window(w) keeps |q - k| <= w; window(left = a, right = b) keeps q - a <= k <= q + b");
            }
            return pattern(pattern_window(at_least(0, integer(0), 0), integer(0)));
        }
        if (!has(1) && !has(2)) {
            fail(frame.source, call.begin, call.end, "window needs a width",
                 "write window(w), or window(left = a, right = b)");
        }
        int64_t left = integer(1, 0), right = integer(2, 0);
        if (left + right < 0) {
            warn(frame, call.begin, call.end, "this window keeps no pair: left + right is negative");
        }
        return pattern(pattern_window(left, right));
    }
    if (fn == "dilated") return pattern(pattern_dilated(at_least(0, integer(0), 0), at_least(1, integer(1), 1)));
    if (fn == "strided") return pattern(pattern_strided(at_least(0, integer(0), 1)));
    if (fn == "fixed") {
        int64_t length = at_least(0, integer(0), 1);
        int64_t c = at_least(1, integer(1), 0);
        if (c > length) {
            warn(frame, args.spans[1].begin, args.spans[1].end,
                 "fixed: c = " + std::to_string(c) + " is more than l = " + std::to_string(length) +
                     "; clamped to " + std::to_string(length));
            c = length;
        }
        return pattern(pattern_fixed(length, c));
    }
    if (fn == "chunk") return pattern(pattern_chunk(at_least(0, integer(0), 1)));
    if (fn == "band") return pattern(pattern_band(at_least(0, integer(0), 0)));
    if (fn == "global") return pattern(pattern_global(token_set(0)));
    if (fn == "rows") return pattern(pattern_rows(token_set(0)));
    if (fn == "columns") return pattern(pattern_columns(token_set(0)));
    if (fn == "prefix") return pattern(pattern_prefix(at_least(0, integer(0), 0)));
    if (fn == "segments") return pattern(pattern_segments(token_set(0)));
    if (fn == "window2d") return pattern(pattern_window2d(at_least(0, integer(0), 0), at_least(1, integer(1), 1)));
    if (fn == "axial") return pattern(pattern_axial(at_least(0, integer(0), 1)));
    if (fn == "random") {
        int64_t r = at_least(0, integer(0), 0);
        int64_t seed = at_least(1, integer(1, 0), 0);
        PatternPtr outside;
        if (has(2)) {
            const Value& v = *args.values[2];
            if (v.kind != Value::Kind::pattern) {
                const bool set = v.kind == Value::Kind::set || v.kind == Value::Kind::range;
                arg_error(2, "random: outside takes a pattern (its blocks are left out of the draw); got " +
                                 value_kind_name(v.kind),
                          set ? "turn the token set into a pattern first: global(S), rows(S) or columns(S)"
                              : "write random(r, outside = band(1) | global(first(2 * B))), for example");
            }
            if (pattern_is_data_dependent(*v.pattern)) {
                const std::string family = content_kind_name(v.pattern->content->kind);
                arg_error(2, "random: outside must be a fixed pattern; " + family + "(...) depends on Q and K, so the blocks it "
                             "keeps are not known before attention runs",
                          "leave " + family + " out of outside = ...");
            }
            // The attend line is intersected with causal; so is P, so that the blocks it leaves
            // free are those the compiled line leaves free.
            outside = context_.causal ? checked_pattern(pattern_intersect(v.pattern, pattern_causal()), call, frame)
                                      : v.pattern;
        }
        if (!context_.has_position) {
            fail(frame.source, call.begin, call.end,
                 "random(...) draws per layer and head, which are not known in " + context_.where);
        }
        return pattern(pattern_random(r, static_cast<uint64_t>(seed), context_.layer, context_.head, context_.causal,
                                      std::move(outside)));
    }
    if (fn == "lsh" || fn == "anchors" || fn == "favor") {
        need_sequence();  // chunk = B, and buckets <= n
        return pattern(pattern_content(content_family_spec(CallArgs{builtin, args.values, args.spans, call, frame.source}, context_)));
    }
    if (fn == "load") {
        const Value& file = *args.values[0];
        if (file.kind != Value::Kind::string) arg_error(0, "load takes a file name in quotes, e.g. load(\"mask.npz\")");
        need_sequence();
        if (!context_.has_position) {
            fail(frame.source, call.begin, call.end, "load(...) reads one mask per layer and head, which are not known in " + context_.where);
        }
        std::filesystem::path path(file.text), shown(file.text);
        if (path.is_relative()) {
            if (!frame.source->path.empty()) path = std::filesystem::path(frame.source->path).parent_path() / path;
            shown = std::filesystem::path(frame.source->name).parent_path() / shown;
        }
        std::string key = path.lexically_normal().string();
        auto it = loaded_.find(key);
        if (it == loaded_.end()) {
            try {
                it = loaded_.emplace(key, std::make_shared<const MaskSet>(mask_set_load(key))).first;
            } catch (const Error& e) {
                // Messages name the file as the script does, not by where this machine keeps it.
                std::string message = e.what();
                const std::string name = shown.lexically_normal().string();
                for (size_t at = message.find(key); !key.empty() && at != std::string::npos;
                     at = message.find(key, at + name.size())) {
                    message.replace(at, key.size(), name);
                }
                arg_error(0, "load: " + message);
            }
        }
        const MaskSet& set = *it->second;
        if (std::any_of(set.content.begin(), set.content.end(), [](const auto& spec) { return spec != nullptr; })) {
            arg_error(0, "load: '" + file.text + "' has content-based heads (lsh, anchors or favor): load reads fixed masks only",
                      "write the family in this script instead, e.g. attend = load(\"fixed.npz\") | lsh(64)");
        }
        if (set.n != context_.n) {
            arg_error(0, "load: '" + file.text + "' was compiled for n = " + std::to_string(set.n) +
                             ", but this compile is for n = " + std::to_string(context_.n),
                      "compile that mask again with --n " + std::to_string(context_.n));
        }
        bool broadcast = set.layers == 1 && set.heads == 1;
        if (!broadcast && (context_.layer >= set.layers || context_.head >= set.heads)) {
            arg_error(0, "load: '" + file.text + "' holds " + std::to_string(set.layers) + " layers x " +
                             std::to_string(set.heads) + " heads; there is no layer " +
                             std::to_string(context_.layer) + ", head " + std::to_string(context_.head),
                      "select the heads it covers with attend[layer A..B, head C..D] = load(...)");
        }
        int64_t l = broadcast ? 0 : context_.layer, h = broadcast ? 0 : context_.head;
        return pattern(pattern_loaded(set.masks[static_cast<size_t>(l * set.heads + h)],
                                      key + "#" + std::to_string(l) + "," + std::to_string(h)));
    }
    fail(frame.source, call.begin, call.end, "unknown pattern '" + fn + "'");
}

// [SECTION] Which lines depend on the (layer, head)

namespace {

// Whether expr, as seen from the first `visible` entries of module with parameters `locals`,
// reads h or l, calls random() or load(), or uses a definition judged to (in judged).
bool reads_position(const ast::Expr& expr, const Module& module, size_t visible, const std::vector<std::string>& locals,
                    const std::unordered_map<const Definition*, bool>& judged) {
    auto definition_does = [&](const std::string& name) {
        const Definition* def = module_lookup(module, visible, name);
        auto it = def != nullptr ? judged.find(def) : judged.end();
        return it != judged.end() && it->second;
    };
    auto is_local = [&](const std::string& name) { return std::find(locals.begin(), locals.end(), name) != locals.end(); };
    return expr_operands_find(expr, [&](const ast::Operand& operand) {
        if (const auto* name = boost::get<ast::Name>(&operand)) {
            return !is_local(name->text) && (name->text == "h" || name->text == "l" || definition_does(name->text));
        }
        if (const auto* call = boost::get<ast::x3::forward_ast<ast::Call>>(&operand)) {
            const std::string& id = call->get().function.text;
            return !is_local(id) && (definition_does(id) ||
                                     (module_lookup(module, visible, id) == nullptr && (id == "random" || id == "load")));
        }
        return false;
    });
}

} // namespace

void attend_lines_judge(Script& script) {
    std::unordered_map<const Definition*, bool> judged;
    for (const auto& def : script.definitions) {  // oldest first
        bool reads = false;
        if (def->let != nullptr) {
            reads = reads_position(def->let->value, *def->module, def->visible, {}, judged);
        } else {
            std::vector<std::string> params;
            for (const auto& p : def->def->params) {
                params.push_back(p.name.text);
                if (p.default_value) reads = reads || reads_position(*p.default_value, *def->module, def->visible, {}, judged);
            }
            reads = reads || reads_position(def->def->body, *def->module, def->visible, params, judged);
        }
        judged.emplace(def.get(), reads);
    }
    for (auto& line : script.attends) {
        line.per_position = reads_position(line.statement->value, *script.main, line.visible, {}, judged);
    }
}

} // namespace sparsa::dsl
