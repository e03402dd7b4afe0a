// Inside dsl/: the checked form of a script (modules of definitions, attend lines) and the
// evaluator that turns an expression into a value for one (layer, head).
#pragma once

#include "dsl/ast.hpp"
#include "dsl/diagnostics.hpp"
#include "dsl/pattern.hpp"
#include "dsl/script.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sparsa::dsl {

// [SECTION] The checked script

struct Module;

// A `let` or `def`, with the scope its body sees: the first `visible` entries of its module.
struct Definition {
    std::string name;
    const ast::LetStatement* let = nullptr;  // exactly one of let / def
    const ast::DefStatement* def = nullptr;
    const Module* module = nullptr;
    size_t visible = 0;
    SourcePtr source;
    size_t order = 0;  // index in Script::definitions: a definition reads only earlier ones
};

// One script file's names in order: the prelude's, then its imports' and its own.
struct Module {
    SourcePtr source;
    std::shared_ptr<const ast::Script> tree;
    std::vector<const Definition*> entries;  // in definition order; later ones shadow earlier
    std::vector<size_t> visible_at;          // per statement: entries visible to it
    // name -> its indices in entries, ascending: a lookup costs O(log) however many names
    // a (generated) script defines, not a scan of all of them.
    std::unordered_map<std::string, std::vector<size_t>> index;

    void add(const Definition* entry);       // appends to entries and index
};

struct AttendLine {
    const ast::AttendStatement* statement = nullptr;
    size_t visible = 0;  // entries of the main module its expression sees
    // Its value may differ between (layer, head) pairs (attend_lines_judge): else a compile
    // evaluates it once, not once per (layer, head).
    bool per_position = true;
};

struct Script {
    std::vector<std::unique_ptr<Definition>> definitions;  // owns every Definition
    std::vector<std::unique_ptr<Module>> modules;          // prelude, imports, main (last)
    const Module* main = nullptr;
    ScriptSettings settings;
    std::vector<AttendLine> attends;    // in order: the first is the plain `attend =`
    std::vector<Diagnostic> warnings;   // from checking
};

// Finds the definition of `name` visible in the first `visible` entries of module, or null.
const Definition* module_lookup(const Module& module, size_t visible, const std::string& name);

// [SECTION] Values

struct Value {
    enum class Kind { integer, real, pattern, set, range, string, boolean };
    Kind kind = Kind::integer;
    int64_t integer = 0;       // integer; boolean: 1 for true, 0 for false
    double real = 0.0;
    PatternPtr pattern;
    std::shared_ptr<const TokenSet> set;
    int64_t lo = 0, hi = 0;  // range lo..hi
    std::string text;        // string
};

std::string value_kind_name(Value::Kind kind);  // "a number", "a pattern", ...

// [SECTION] Evaluation

// The numbers an expression may read: n, B, h, l, H, L. Absent ones are errors when read.
struct EvalContext {
    bool has_sequence = false;  // n and B
    bool has_position = false;  // h and l
    bool has_model = false;     // H and L
    int64_t n = 0;
    int32_t block = 64;
    int64_t head = 0, layer = 0, heads = 1, layers = 1;
    bool causal = false;        // the script's `causal` statement (random draws kb <= qb)
    // n is a stand-in (sparsa check without --n): checks against n itself (lsh's buckets <= n)
    // wait for a compile, where n is the user's.
    bool n_assumed = false;
    std::string where;          // "a `block` statement" etc., for "n is not known in ..."
};

// The context of an attend line of `script` for (layer, head) at sequence length n, block B:
// every number known (n, B, h, l, H, L) and the script's `causal`.
inline EvalContext eval_context_attend(const Script& script, int64_t n, int32_t block, int64_t layer, int64_t head) {
    EvalContext context;
    context.has_sequence = context.has_position = context.has_model = true;
    context.n = n;
    context.block = block;
    context.layer = layer;
    context.head = head;
    context.heads = script.settings.heads;
    context.layers = script.settings.layers;
    context.causal = script.settings.causal;
    context.where = "an attend line";
    return context;
}

// Evaluates expressions of one script for one context. Caches let values and loaded files.
class Evaluator {
public:
    Evaluator(EvalContext context, std::vector<Diagnostic>* warnings);

    // Evaluates expr as seen from the first `visible` entries of module.
    Value evaluate(const ast::Expr& expr, const Module& module, size_t visible);

    // Steps taken so far (each counts against kMaxEvalSteps).
    int64_t steps() const { return steps_; }

    // Throws ScriptError pointing at [begin, end) of source.
    [[noreturn]] void fail(const SourcePtr& source, int32_t begin, int32_t end,
                           const std::string& message, const std::string& hint = {}) const;

private:
    struct Frame;
    Value eval_expr(const ast::Expr& expr, const Frame& frame);
    Value eval_chain(const ast::Expr& expr, const Frame& frame);
    Value eval_power(const ast::Expr& expr, const Frame& frame);
    Value eval_let(const Definition& let);
    Value eval_operand(const ast::Operand& operand, const Frame& frame);
    Value eval_name(const ast::Name& name, const Frame& frame);
    Value eval_call(const ast::Call& call, const Frame& frame);
    Value eval_builtin(const ast::Call& call, const Frame& frame);
    Value eval_user_call(const ast::Call& call, const Definition& def, const Frame& frame);
    // op_at: where the operator is written (its caret when a content family refuses it).
    Value apply(char op, Value&& lhs, Value&& rhs, const ast::Span& span, const Frame& frame, int32_t op_at = -1);
    Value as_set(Value v, const ast::Span& span, const Frame& frame);
    PatternPtr checked_pattern(PatternPtr p, const ast::Span& span, const Frame& frame);
    void warn(const Frame& frame, int32_t begin, int32_t end, std::string message,
              std::string hint = {});
    void step(const Frame& frame, const ast::Span& span);

    EvalContext context_;
    std::vector<Diagnostic>* warnings_;
    std::set<std::pair<const Source*, std::pair<int32_t, std::string>>> warned_;
    std::map<const Definition*, Value> lets_;
    std::map<std::string, std::shared_ptr<const MaskSet>> loaded_;
    std::map<const Pattern*, int64_t> sizes_;
    int64_t steps_ = 0;
    int calls_ = 0;  // definitions being called, nested
};

// Sets each attend line's per_position: whether its value can differ between (layer, head)
// pairs, because it reads h or l, or calls random() or load() (drawn or read per (layer, head)),
// itself or through the lets and defs it uses. Each definition is judged once, oldest first (a
// definition reads only earlier ones), with loops: chains thousands long do not recurse.
void attend_lines_judge(Script& script);

// Pattern parts a script may build (counting shared parts each time they are used).
constexpr int64_t kMaxPatternParts = 10000;
// Evaluation steps one evaluator may take, and all those of one compile together (each
// (layer, head) evaluates its attend line again): a few seconds of work at most.
constexpr int64_t kMaxEvalSteps = 20'000'000;
constexpr int64_t kMaxCompileSteps = 30'000'000;
// Calls of definitions may nest this deep (a def calling a def ...): each level takes about
// 2 KiB of stack, so the deepest chain fits 8 MiB with room to spare. Thinner stacks stop
// earlier, with a diagnostic (stack_guard.hpp). In the browser (web/, WebAssembly) the engine's
// own call stack, which stack_guard cannot see, ran out at about 2,000 to 2,400 levels in
// Chromium 156: there the limit is 1,000, so the language's diagnostic comes first.
#ifdef __EMSCRIPTEN__
constexpr int kMaxCallDepth = 1000;
#else
constexpr int kMaxCallDepth = 2500;
#endif

} // namespace sparsa::dsl
