// Loading a script: parse, resolve imports and the prelude, check names and calls, read the
// settings; then evaluate every (layer, head) and compile each distinct pattern once.
//
// Index: [SECTION] Modules and imports, [SECTION] The checker, [SECTION] Statements,
//        [SECTION] Evaluation and compiling   (reading files: script_file.cpp)
#include "dsl/script.hpp"

#include "dsl/ast_walk.hpp"
#include "dsl/builtins.hpp"
#include "dsl/eval.hpp"
#include "dsl/grammar.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

namespace sparsa::dsl {

extern const char* const kPreludeText;  // dsl/prelude.pat, embedded at build time

void Module::add(const Definition* entry) {
    index[entry->name].push_back(entries.size());
    entries.push_back(entry);
}

const Definition* module_lookup(const Module& module, size_t visible, const std::string& name) {
    auto it = module.index.find(name);
    if (it == module.index.end()) return nullptr;
    const std::vector<size_t>& at = it->second;  // the last definition among the first `visible`
    auto past = std::lower_bound(at.begin(), at.end(), std::min(visible, module.entries.size()));
    return past == at.begin() ? nullptr : module.entries[*std::prev(past)];
}

namespace {

constexpr size_t kMaxErrors = 20;

// Friendly words for the grammar's rule names in "expected ..." messages.
std::string expected_words(const std::string& rule) {
    if (rule == "statement") return "a statement (block, heads, layers, causal, let, def, import or attend)";
    if (rule == "expression" || rule == "operand") return "an expression";
    if (rule == "selector") return "a selector (head A..B or layer A..B)";
    if (rule == "name") return "a name";
    if (rule == "string") return "a file name in quotes";
    if (rule == "parameter") return "a parameter name";
    if (rule.find("boost") != std::string::npos) return "valid syntax";  // an unnamed parser
    return rule;
}

// The checked script under construction, and the files on the import path (for cycles).
struct Loader {
    Script& script;
    std::vector<Diagnostic> errors;
    std::vector<std::string> import_stack;
    std::map<std::string, const Module*> imported;

    // Checking stops at kMaxErrors errors: a generated script with thousands of mistakes is
    // reported in a moment, not after a did-you-mean search for each of them.
    void error(const SourcePtr& source, const ast::Span& span, std::string message, std::string hint = {}) {
        errors.push_back(diagnostic_at(Severity::error, source, span.begin, span.end, std::move(message),
                                       std::move(hint)));
        if (errors.size() >= kMaxErrors) {
            errors.push_back(diagnostic_at(Severity::error, nullptr, 0, 0,
                                           "stopping after " + std::to_string(kMaxErrors) + " errors",
                                           "fix these first"));
            flush();
        }
    }
    void flush() {
        if (!errors.empty()) throw ScriptError(std::move(errors));
    }

    const Module& load_module(SourcePtr source, bool is_prelude);
    void check_expr(const ast::Expr& expr, const Module& module, size_t visible,
                    const std::vector<std::string>& locals);
    void check_operand(const ast::Operand& operand, const Module& module, size_t visible,
                       const std::vector<std::string>& locals);
    void check_call(const ast::Call& call, const Module& module, size_t visible,
                    const std::vector<std::string>& locals);
    void check_name(const ast::Name& name, const Module& module, size_t visible,
                    const std::vector<std::string>& locals);
    void check_complements(const ast::Expr& expr, const SourcePtr& source);
    std::vector<std::string> names_in_scope(const Module& module, size_t visible,
                                            const std::vector<std::string>& locals) const;
};

// Editors on Windows start UTF-8 files with a byte order mark (EF BB BF); it is no part of
// the script. (Removed, so columns count as the editor shows them.)
void strip_bom(std::string& text) {
    if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);
}

// [SECTION] Modules and imports

// The diagnostic of a syntax error. A character that cannot start anything (not ASCII, a
// control character) is named, since "expected '='" would not say what is wrong with it.
Diagnostic syntax_diagnostic(const SourcePtr& source, const SyntaxError& syntax) {
    const std::string& text = source->text;
    const size_t at = static_cast<size_t>(syntax.offset);
    const unsigned char c = at < text.size() ? static_cast<unsigned char>(text[at]) : 0;
    auto here = [&](int32_t length, std::string message, std::string hint = {}) {
        return diagnostic_at(Severity::error, source, syntax.offset, syntax.offset + length, std::move(message),
                             std::move(hint));
    };
    if (at < text.size() && c >= 0x80) {
        const auto [code, length] = utf8_decode(text, at);
        char number[16];
        std::snprintf(number, sizeof number, length > 0 ? "U+%04X" : "0x%02X", code);
        std::string what = length > 0 ? "character '" + text.substr(at, static_cast<size_t>(length)) + "' (" + number + ")"
                                      : std::string("byte ") + number + " (not UTF-8)";
        return here(std::max(length, 1), "unexpected " + what + ": identifiers are ASCII letters, digits and '_'",
                    "other characters may appear only in comments (#) and in strings");
    }
    if (at < text.size() && (c < 0x20 || c == 0x7F) && std::string_view(" \t\r\n\f\v").find(char(c)) == std::string_view::npos) {
        char number[8];
        std::snprintf(number, sizeof number, "\\x%02X", c);
        return here(1, std::string("unexpected control character ") + number, "is this a text file?");
    }
    if (syntax.expected == "shallower nesting") {
        return here(syntax.length, "expression nested too deeply (more than " + std::to_string(kMaxNesting) + " levels)",
                    "split the expression with let: let part = ..., then use part");
    }
    if (syntax.expected == "shallower nesting for the stack") {
        return here(syntax.length, "expression nested too deeply for the stack of this thread",
                    "split the expression with let: let part = ..., then use part");
    }
    Diagnostic d = here(syntax.length, "expected " + expected_words(syntax.expected));
    if (syntax.expected == "')'" || syntax.expected == "']'" || syntax.expected == "'}'") {
        d.hint = "is a bracket left open, or a comma missing between arguments?";
    }
    if (at < text.size() && text[at] == '"' && syntax.expected == "'\"'") d.hint = "strings end on the same line";
    return d;
}

const Module& Loader::load_module(SourcePtr source, bool is_prelude) {
    // A NUL byte ends the text for C strings, and so every message quoting it: refuse it first.
    if (size_t nul = source->text.find('\0'); nul != std::string::npos) {
        const auto at = static_cast<int32_t>(nul);
        throw ScriptError({diagnostic_at(Severity::error, source, at, at + 1,
                                         "a NUL byte (shown as \\0) in the script: scripts are text",
                                         "is this a binary file? remove the byte if it is a text file")});
    }
    auto parsed = grammar_parse(source->text);
    if (const auto* syntax = std::get_if<SyntaxError>(&parsed)) throw ScriptError({syntax_diagnostic(source, *syntax)});
    auto module = std::make_unique<Module>();
    module->source = source;
    module->tree = std::make_shared<const ast::Script>(std::move(std::get<ast::Script>(parsed)));
    if (!is_prelude && !script.modules.empty()) {
        module->entries = script.modules.front()->entries;  // the prelude's names come first
        module->index = script.modules.front()->index;
    }
    std::map<std::string, const ast::Span*> own;  // names this file defines, for duplicates

    auto define = [&](const std::string& name, const ast::Span& span, const ast::LetStatement* let,
                      const ast::DefStatement* def) {
        if (name_is_reserved(name)) {
            error(source, span, "'" + name + "' is part of the language and cannot be redefined",
                  "choose another name");
            return;
        }
        if (auto it = own.find(name); it != own.end()) {
            Diagnostic earlier = diagnostic_at(Severity::error, source, it->second->begin, it->second->end, "");
            error(source, span, "'" + name + "' is already defined on line " + std::to_string(earlier.line()),
                  "give it another name");
            return;
        }
        own.emplace(name, &span);
        auto d = std::make_unique<Definition>();
        d->name = name;
        d->let = let;
        d->def = def;
        d->module = module.get();
        d->visible = module->entries.size();
        d->source = source;
        d->order = script.definitions.size();
        module->add(d.get());
        script.definitions.push_back(std::move(d));
    };

    for (const auto& statement : *module->tree) {
        module->visible_at.push_back(module->entries.size());
        if (const auto* let = boost::get<ast::LetStatement>(&statement)) {
            check_expr(let->value, *module, module->entries.size(), {});
            define(let->name.text, let->name, let, nullptr);
        } else if (const auto* def = boost::get<ast::DefStatement>(&statement)) {
            std::vector<std::string> params;
            bool seen_default = false;
            for (const auto& param : def->params) {
                if (name_is_reserved(param.name.text)) {
                    error(source, param.name, "'" + param.name.text + "' is part of the language and cannot name a parameter");
                } else if (std::find(params.begin(), params.end(), param.name.text) != params.end()) {
                    error(source, param.name, "parameter '" + param.name.text + "' is listed twice");
                }
                if (param.default_value) {
                    seen_default = true;
                    check_expr(*param.default_value, *module, module->entries.size(), {});
                } else if (seen_default) {
                    error(source, param.name, "parameter '" + param.name.text + "' needs a default value",
                          "parameters with defaults come last");
                }
                params.push_back(param.name.text);
            }
            check_expr(def->body, *module, module->entries.size(), params);
            define(def->name.text, def->name, nullptr, def);
        } else if (const auto* import = boost::get<ast::ImportStatement>(&statement)) {
            std::filesystem::path path(import->path.text), shown(import->path.text);
            if (path.is_relative()) {
                if (!source->path.empty()) path = std::filesystem::path(source->path).parent_path() / path;
                shown = std::filesystem::path(source->name).parent_path() / shown;
            }
            std::string key = path.lexically_normal().string();
            std::string display = shown.lexically_normal().string();
            if (std::find(import_stack.begin(), import_stack.end(), key) != import_stack.end()) {
                error(source, import->path, "import cycle: '" + import->path.text + "' imports this file again",
                      "move the shared definitions into a third file that both import");
                continue;
            }
            const Module* imported_module = nullptr;
            if (auto it = imported.find(key); it != imported.end()) {
                imported_module = it->second;
            } else {
                std::string text;
                try {
                    text = script_file_read(key, display);
                } catch (const Error& e) {
                    error(source, import->path, std::string("import: ") + e.what());
                    continue;
                }
                flush();  // report this file's own errors before descending
                strip_bom(text);
                auto imported_source = std::make_shared<const Source>(Source{display, key, std::move(text)});
                import_stack.push_back(key);
                imported_module = &load_module(imported_source, false);
                import_stack.pop_back();
                imported.emplace(key, imported_module);
            }
            // The imported file's own definitions (not the prelude's) become visible here.
            const size_t skip = script.modules.front()->entries.size();
            for (size_t i = skip; i < imported_module->entries.size(); ++i) {
                module->add(imported_module->entries[i]);
            }
        }
    }
    script.modules.push_back(std::move(module));
    return *script.modules.back();
}

// [SECTION] The checker

std::vector<std::string> Loader::names_in_scope(const Module& module, size_t visible,
                                                const std::vector<std::string>& locals) const {
    std::vector<std::string> names = locals;
    for (size_t i = 0; i < std::min(visible, module.entries.size()); ++i) names.push_back(module.entries[i]->name);
    for (const auto& b : builtin_names()) names.push_back(b);
    for (const char* c : {"n", "B", "h", "l", "H", "L"}) names.push_back(c);
    return names;
}

void Loader::check_expr(const ast::Expr& expr, const Module& module, size_t visible,
                        const std::vector<std::string>& locals) {
    check_operand(expr.first, module, visible, locals);
    for (const auto& op : expr.rest) check_operand(op.rhs, module, visible, locals);
}

void Loader::check_operand(const ast::Operand& operand, const Module& module, size_t visible,
                           const std::vector<std::string>& locals) {
    if (const auto* name = boost::get<ast::Name>(&operand)) {
        check_name(*name, module, visible, locals);
    } else if (const auto* number = boost::get<ast::Number>(&operand)) {
        // Integers are 64-bit: refuse a literal that does not fit before anything runs.
        const std::string& text = number->text;
        const std::string digits = text.substr(std::min(text.find_first_not_of('0'), text.size()));
        if (text.find('.') == std::string::npos &&
            (digits.size() > 19 || (digits.size() == 19 && digits > "9223372036854775807"))) {
            error(module.source, *number, "number " + text + " is too large", "integers must be below 2^63");
        }
    } else if (const auto* call = boost::get<ast::x3::forward_ast<ast::Call>>(&operand)) {
        check_call(call->get(), module, visible, locals);
    } else if (const auto* set = boost::get<ast::x3::forward_ast<ast::SetLiteral>>(&operand)) {
        for (const auto& member : set->get().members) check_expr(member, module, visible, locals);
    } else if (const auto* unary = boost::get<ast::x3::forward_ast<ast::Unary>>(&operand)) {
        check_operand(unary->get().operand, module, visible, locals);
    } else if (const auto* expr = boost::get<ast::x3::forward_ast<ast::Expr>>(&operand)) {
        check_expr(expr->get(), module, visible, locals);
    }
}

void Loader::check_name(const ast::Name& name, const Module& module, size_t visible,
                        const std::vector<std::string>& locals) {
    const std::string& id = name.text;
    if (std::find(locals.begin(), locals.end(), id) != locals.end()) return;
    if (name_is_reserved(id) && builtin_find(id) == nullptr) return;  // n B h l H L
    if (const Definition* def = module_lookup(module, visible, id)) {
        if (def->def != nullptr) {
            error(module.source, name, "'" + id + "' is a function: call it as " + id + "(...)");
        }
        return;
    }
    if (const Builtin* builtin = builtin_find(id)) {
        if (!builtin->params.empty()) {
            error(module.source, name, "'" + id + "' needs arguments", "write " + builtin->usage);
        }
        return;
    }
    std::string suggestion = closest_name(id, names_in_scope(module, visible, locals));
    error(module.source, name, "unknown name '" + id + "'",
          suggestion.empty() ? "define it first with let " + id + " = ..."
                             : "did you mean '" + suggestion + "'?");
}

void Loader::check_call(const ast::Call& call, const Module& module, size_t visible,
                        const std::vector<std::string>& locals) {
    for (const auto& arg : call.args) {
        if (const auto* kw = boost::get<ast::KeywordArg>(&arg)) {
            check_expr(kw->value, module, visible, locals);
        } else {
            check_expr(boost::get<ast::Expr>(arg), module, visible, locals);
        }
    }
    const std::string& id = call.function.text;
    if (std::find(locals.begin(), locals.end(), id) != locals.end()) {
        error(module.source, call.function, "'" + id + "' is a parameter, not a function");
        return;
    }
    // The parameters of what is called, and how many must be given.
    std::vector<std::string> params;
    std::vector<bool> required;
    std::string usage;
    if (const Definition* def = module_lookup(module, visible, id)) {
        if (def->def == nullptr) {
            error(module.source, call.function, "'" + id + "' is a value (let), not a function",
                  "write " + id + " without (...)");
            return;
        }
        usage = id + "(";
        for (const auto& p : def->def->params) {
            params.push_back(p.name.text);
            required.push_back(!p.default_value);
            usage += (params.size() > 1 ? ", " : "") + p.name.text;
        }
        usage += ")";
    } else if (const Builtin* builtin = builtin_find(id)) {
        params = builtin->params;
        for (size_t i = 0; i < params.size(); ++i) required.push_back(i < builtin->required);
        usage = builtin->usage;
    } else if (name_is_reserved(id)) {
        error(module.source, call.function, "'" + id + "' is a number, not a function");
        return;
    } else {
        std::vector<std::string> candidates;
        for (size_t i = 0; i < std::min(visible, module.entries.size()); ++i) candidates.push_back(module.entries[i]->name);
        for (const auto& b : builtin_names()) candidates.push_back(b);
        std::string suggestion = closest_name(id, candidates);
        const Builtin* suggested = builtin_find(suggestion);
        bool is_function = suggested != nullptr && suggested->returns != Builtin::Returns::pattern;
        error(module.source, call.function, std::string("unknown ") + (is_function ? "function" : "pattern") + " '" + id + "'",
              suggestion.empty() ? "" : "did you mean '" + suggestion + "'?");
        return;
    }
    std::vector<bool> given(params.size(), false);
    size_t positional = 0;
    for (const auto& arg : call.args) {
        if (const auto* kw = boost::get<ast::KeywordArg>(&arg)) {
            auto it = std::find(params.begin(), params.end(), kw->key.text);
            if (it == params.end()) {
                std::string suggestion = closest_name(kw->key.text, params);
                error(module.source, kw->key, id + " has no parameter '" + kw->key.text + "'",
                      suggestion.empty() ? "write " + usage : "did you mean '" + suggestion + "'?");
                continue;
            }
            size_t i = static_cast<size_t>(it - params.begin());
            if (given[i]) error(module.source, kw->key, id + ": '" + kw->key.text + "' is given twice");
            given[i] = true;
        } else {
            const auto& expr = boost::get<ast::Expr>(arg);
            if (positional >= params.size()) {
                error(module.source, expr,
                      params.empty() ? id + " takes no arguments"
                                     : id + " takes at most " + std::to_string(params.size()) + " argument" +
                                           (params.size() == 1 ? "" : "s"),
                      "write " + usage);
                break;
            }
            // Any keyword before it, even one naming this very slot (random(3, seed = 1, band(1))).
            if (std::any_of(given.begin() + static_cast<std::ptrdiff_t>(positional), given.end(), [](bool g) { return g; })) {
                error(module.source, expr, "positional arguments come before keyword arguments");
            }
            given[positional++] = true;
        }
    }
    for (size_t i = 0; i < params.size(); ++i) {
        if (required[i] && !given[i]) {
            error(module.source, call, id + " needs '" + params[i] + "'", "write " + usage);
            break;
        }
    }
}

void Loader::check_complements(const ast::Expr& expr, const SourcePtr& source) {
    expr_operands_find(expr, [&](const ast::Operand& operand) {
        const auto* unary = boost::get<ast::x3::forward_ast<ast::Unary>>(&operand);
        if (unary != nullptr && unary->get().op == '!') {
            warning_add(script.warnings, diagnostic_at(
                Severity::warning, source, unary->get().begin, unary->get().end,
                "the complement '!' keeps every pair the pattern does not: the result is usually dense",
                "to remove pairs from a pattern, write P - Q"));
        }
        return false;
    });
}

// [SECTION] Statements

int64_t evaluate_setting(const ast::SimpleStatement& statement, const Module& module,
                         size_t visible) {
    EvalContext context;
    context.where = "a `" + statement.keyword + "` statement";
    Evaluator evaluator(context, nullptr);
    Value v = evaluator.evaluate(*statement.value, module, visible);
    if (v.kind != Value::Kind::integer) {
        evaluator.fail(module.source, statement.value->begin, statement.value->end,
                       statement.keyword + " takes an integer; got " + value_kind_name(v.kind));
    }
    return v.integer;
}

// The error of a selector that matches only heads or layers the script does not have
// ([lo, hi) non-empty, lo >= count): "head 5 is outside 0 to 1 (heads 2)".
Diagnostic selector_outside(const SourcePtr& source, const ast::SelectorItem& item, int64_t lo, int64_t hi,
                            int64_t count) {
    const std::string& axis = item.axis;
    std::string what = hi - lo == 1 ? axis + " " + std::to_string(lo) + " is"
                                    : axis + "s " + std::to_string(lo) + " to " + std::to_string(hi - 1) + " are";
    return diagnostic_at(Severity::error, source, item.range.begin, item.range.end,
                         what + " outside 0 to " + std::to_string(count - 1) + " (" + axis + "s " +
                             std::to_string(count) + ")",
                         "the script has " + std::to_string(count) + " " + axis + (count == 1 ? "" : "s") +
                             ", numbered from 0: change the selector, or raise `" + axis + "s`");
}

// Selectors that name only heads or layers the script does not have are errors as soon as the
// script is read, when they can be evaluated without n (else compiling reports them).
void check_selectors(Loader& loader, const Script& script, const Module& main) {
    EvalContext context;
    context.has_model = true;
    context.heads = script.settings.heads;
    context.layers = script.settings.layers;
    context.where = "a selector";
    Evaluator evaluator(context, nullptr);
    for (const auto& line : script.attends) {
        if (!line.statement->selector) continue;
        for (const auto& item : *line.statement->selector) {
            Value v;
            try {
                v = evaluator.evaluate(item.range, main, line.visible);
            } catch (const ScriptError&) {
                continue;  // needs n, or fails: compiling says so, with n known
            }
            const int64_t count = item.axis == "head" ? script.settings.heads : script.settings.layers;
            const int64_t lo = v.kind == Value::Kind::range ? v.lo : v.integer;
            const int64_t hi = v.kind == Value::Kind::range ? v.hi : v.integer + 1;
            if (v.kind != Value::Kind::integer && v.kind != Value::Kind::range) continue;
            if (lo < 0) {
                loader.error(main.source, item.range, item.axis + " indices start at 0; got " + std::to_string(lo));
            } else if (hi > lo && lo >= count) {
                loader.errors.push_back(selector_outside(main.source, item, lo, hi, count));
            }
        }
    }
}

void read_statements(Loader& loader, Script& script, const Module& main) {
    std::map<std::string, const ast::Span*> seen;
    for (size_t index = 0; index < main.tree->size(); ++index) {
        const ast::Statement& statement = (*main.tree)[index];
        const size_t count = main.visible_at[index];
        if (boost::get<ast::LetStatement>(&statement) != nullptr || boost::get<ast::DefStatement>(&statement) != nullptr ||
            boost::get<ast::ImportStatement>(&statement) != nullptr) {
            continue;  // definitions were read with the module
        }
        if (const auto* simple = boost::get<ast::SimpleStatement>(&statement)) {
            if (auto it = seen.find(simple->keyword); it != seen.end()) {
                Diagnostic earlier = diagnostic_at(Severity::error, main.source, it->second->begin, it->second->end, "");
                loader.error(main.source, *simple, "'" + simple->keyword + "' is given twice (first on line " +
                                                       std::to_string(earlier.line()) + ")",
                             "keep one");
                continue;
            }
            seen.emplace(simple->keyword, simple);
            if (simple->keyword == "causal") {
                script.settings.causal = true;
                continue;
            }
            // checked as an attend line's expression is, before it is evaluated (an unknown
            // keyword argument would otherwise reach the evaluator)
            const size_t errors_before = loader.errors.size();
            loader.check_expr(*simple->value, main, count, {});
            if (loader.errors.size() != errors_before) continue;
            int64_t value = 0;
            try {
                value = evaluate_setting(*simple, main, count);
            } catch (const ScriptError& e) {
                for (const auto& d : e.diagnostics()) loader.errors.push_back(d);
                continue;
            }
            const ast::Expr& expr = *simple->value;
            if (simple->keyword == "block") {
                if (!block_size_valid(value)) {
                    loader.error(main.source, expr, "block size " + std::to_string(value) + " is not a power of two from 16 to 256",
                                 "use 16, 32, 64, 128 or 256");
                } else {
                    script.settings.block = static_cast<int32_t>(value);
                }
            } else {
                if (value < 1 || value > 1024) {
                    loader.error(main.source, expr, simple->keyword + " must be from 1 to 1024; got " + std::to_string(value));
                } else if (simple->keyword == "heads") {
                    script.settings.heads = value;
                } else {
                    script.settings.layers = value;
                }
            }
            continue;
        }
        const auto& attend = boost::get<ast::AttendStatement>(statement);
        loader.check_expr(attend.value, main, count, {});
        if (attend.selector) {
            for (const auto& item : *attend.selector) loader.check_expr(item.range, main, count, {});
        }
        loader.check_complements(attend.value, main.source);
        if (!attend.selector) {
            auto plain = std::find_if(script.attends.begin(), script.attends.end(),
                                      [](const AttendLine& a) { return !a.statement->selector; });
            if (plain != script.attends.end()) {
                Diagnostic earlier = diagnostic_at(Severity::error, main.source, plain->statement->begin, plain->statement->end, "");
                loader.error(main.source, attend, "'attend =' is given twice (first on line " + std::to_string(earlier.line()) + ")",
                             "to override some heads or layers write attend[head A..B] = ... or attend[layer A..B] = ...");
                continue;
            }
        }
        script.attends.push_back(AttendLine{&attend, count});
    }
    // Complements inside definitions warn where they are written.
    for (const auto* entry : main.entries) {
        if (entry->module != &main) continue;
        if (entry->let != nullptr) loader.check_complements(entry->let->value, main.source);
        if (entry->def != nullptr) loader.check_complements(entry->def->body, main.source);
    }
    bool has_plain = std::any_of(script.attends.begin(), script.attends.end(),
                                 [](const AttendLine& a) { return !a.statement->selector; });
    if (!has_plain && loader.errors.empty()) {
        const std::string& text = main.source->text;
        int32_t end = static_cast<int32_t>(text.find_last_not_of(" \t\r\n") + 1);
        loader.errors.push_back(diagnostic_at(Severity::error, main.source, end, end,
                                              "the script has no 'attend = ...' line",
                                              "add one, e.g. attend = window(128)"));
    }
    // The plain line goes first: overrides apply on top of it in order.
    std::stable_partition(script.attends.begin(), script.attends.end(),
                          [](const AttendLine& a) { return !a.statement->selector; });
    if (loader.errors.empty()) check_selectors(loader, script, main);
}

} // namespace

ScriptPtr script_parse(std::string text, std::string name, std::string path) {
    strip_bom(text);
    if (text.size() > kMaxScriptBytes) {
        throw Error("'" + name + "' is " + std::to_string(text.size()) + " bytes: scripts are limited to " +
                    std::to_string(kMaxScriptBytes >> 20) + " MiB (is this really a pattern script?)");
    }
    auto script = std::make_shared<Script>();
    Loader loader{*script, {}, {}, {}};
    auto prelude = std::make_shared<const Source>(Source{"<prelude>", "", kPreludeText});
    loader.load_module(prelude, true);
    loader.flush();
    auto source = std::make_shared<const Source>(Source{std::move(name), path, std::move(text)});
    if (!path.empty()) loader.import_stack.push_back(std::filesystem::path(path).lexically_normal().string());
    const Module& main = loader.load_module(source, false);
    loader.flush();
    script->main = &main;
    read_statements(loader, *script, main);
    loader.flush();
    attend_lines_judge(*script);
    return script;
}

ScriptPtr script_load(const std::string& path) { return script_parse(script_file_read(path), path, path); }

const ScriptSettings& script_settings(const Script& script) { return script.settings; }
const Source& script_source(const Script& script) { return *script.main->source; }
const std::vector<Diagnostic>& script_warnings(const Script& script) { return script.warnings; }

// [SECTION] Evaluation and compiling

namespace {

struct Selection {
    const AttendLine* line = nullptr;
    int64_t head_lo = 0, head_hi = 0, layer_lo = 0, layer_hi = 0;
};

// Each attend line with the heads and layers it covers, for this n and B.
std::vector<Selection> selections(const Script& script, int64_t n, int32_t block,
                                  std::vector<Diagnostic>* warnings) {
    const ScriptSettings& s = script.settings;
    EvalContext context;
    context.has_sequence = context.has_model = true;
    context.n = n;
    context.block = block;
    context.heads = s.heads;
    context.layers = s.layers;
    context.where = "a selector";
    Evaluator evaluator(context, warnings);
    std::vector<Selection> out;
    for (const auto& line : script.attends) {
        Selection sel{&line, 0, s.heads, 0, s.layers};
        if (line.statement->selector) {
            std::set<std::string> axes;
            for (const auto& item : *line.statement->selector) {
                if (!axes.insert(item.axis).second) {
                    evaluator.fail(script.main->source, item.begin, item.end,
                                   "the selector names '" + item.axis + "' twice", "join them into one range");
                }
                Value v = evaluator.evaluate(item.range, *script.main, line.visible);
                int64_t lo = 0, hi = 0;
                if (v.kind == Value::Kind::integer) {
                    lo = v.integer;
                    hi = v.integer + 1;
                } else if (v.kind == Value::Kind::range) {
                    lo = v.lo;
                    hi = v.hi;
                } else {
                    evaluator.fail(script.main->source, item.range.begin, item.range.end,
                                   "a selector takes an index or a range A..B; got " + value_kind_name(v.kind));
                }
                int64_t count = item.axis == "head" ? s.heads : s.layers;
                if (lo < 0) {
                    evaluator.fail(script.main->source, item.range.begin, item.range.end,
                                   item.axis + " indices start at 0; got " + std::to_string(lo));
                }
                if (hi > lo && lo >= count) {
                    throw ScriptError({selector_outside(script.main->source, item, lo, hi, count)});
                }
                if (hi > count && warnings != nullptr) {
                    warning_add(*warnings, diagnostic_at(
                        Severity::warning, script.main->source, item.range.begin, item.range.end,
                        "this selector reaches " + item.axis + " " + std::to_string(hi - 1) + ", but the script has " +
                            std::to_string(count) + " " + item.axis + "s; the rest is ignored"));
                }
                if (hi <= lo && warnings != nullptr) {
                    warning_add(*warnings, diagnostic_at(Severity::warning, script.main->source, item.range.begin,
                                                      item.range.end, "this selector matches no " + item.axis));
                }
                (item.axis == "head" ? sel.head_lo : sel.layer_lo) = lo;
                (item.axis == "head" ? sel.head_hi : sel.layer_hi) = std::min(hi, count);
            }
        }
        out.push_back(sel);
    }
    return out;
}

struct Evaluated {
    std::vector<PatternPtr> patterns;         // [layers * heads]
    std::vector<const AttendLine*> lines;     // [layers * heads], the line that chose each
};

// The pattern of one (layer, head): its attend line evaluated, the causal statement applied.
// The evaluation's steps are added to *steps.
PatternPtr line_pattern(const Script& script, const AttendLine& line, const EvalContext& context,
                        std::vector<Diagnostic>* warnings, int64_t* steps) {
    Evaluator evaluator(context, warnings);
    const ast::Expr& expr = line.statement->value;
    Value v = evaluator.evaluate(expr, *script.main, line.visible);
    *steps += evaluator.steps();
    if (v.kind != Value::Kind::pattern) {
        evaluator.fail(script.main->source, expr.begin, expr.end,
                       "attend takes a pattern; this is " + value_kind_name(v.kind),
                       v.kind == Value::Kind::set ? "turn the token set into a pattern: global(S), rows(S) or columns(S)" : "");
    }
    PatternPtr p = v.pattern;
    if (!script.settings.causal) return p;
    if (!p->content) return pattern_intersect(p, pattern_causal());
    // A content family carries causal in its spec (the evaluator set it); its fixed part is
    // intersected here, as any line is.
    PatternContentSplit split = pattern_content_split(p);
    if (split.fixed->kind == PatternKind::empty) return split.content;
    return pattern_union(pattern_intersect(split.fixed, pattern_causal()), split.content);
}

Evaluated evaluate_patterns(const Script& script, int64_t n, int32_t block, std::vector<Diagnostic>* warnings,
                            bool n_given = true) {
    if (n < 1) throw Error("n = " + std::to_string(n) + ": the sequence length must be at least 1");
    if (n > (int64_t{1} << 40)) throw Error("n = " + std::to_string(n) + " is too large (at most 2^40)");
    if (!block_size_valid(block)) {
        throw Error("block size " + std::to_string(block) + " is not a power of two from 16 to 256 (use 16, 32, 64, 128 or 256)");
    }
    const ScriptSettings& s = script.settings;
    std::vector<Selection> sel = selections(script, n, block, warnings);
    int64_t steps = 0;
    std::map<const AttendLine*, PatternPtr> once;
    Evaluated out;
    out.patterns.resize(static_cast<size_t>(s.layers * s.heads));
    out.lines.resize(out.patterns.size());
    for (int64_t l = 0; l < s.layers; ++l) {
        for (int64_t h = 0; h < s.heads; ++h) {
            const Selection* chosen = nullptr;
            for (const auto& candidate : sel) {
                if (h >= candidate.head_lo && h < candidate.head_hi && l >= candidate.layer_lo && l < candidate.layer_hi) {
                    chosen = &candidate;
                }
            }
            size_t index = static_cast<size_t>(l * s.heads + h);
            out.lines[index] = chosen->line;
            // A line whose value is the same for every (layer, head) is evaluated once.
            PatternPtr& shared = once[chosen->line];
            if (chosen->line->per_position || !shared) {
                EvalContext context = eval_context_attend(script, n, block, l, h);
                context.n_assumed = !n_given;
                PatternPtr p = line_pattern(script, *chosen->line, context, warnings, &steps);
                if (!chosen->line->per_position) shared = p;
                out.patterns[index] = std::move(p);
            } else {
                out.patterns[index] = shared;
            }
            // Every (layer, head) evaluates its line and the lets it reads again: bound the whole.
            if (steps > kMaxCompileSteps) {
                const ast::Expr& expr = chosen->line->statement->value;
                throw ScriptError({diagnostic_at(
                    Severity::error, script.main->source, expr.begin, expr.end,
                    "evaluating the script for its " + std::to_string(s.layers * s.heads) +
                        " (layer, head) pairs takes more than " + std::to_string(kMaxCompileSteps) + " steps",
                    "each (layer, head) evaluates its attend line, and the lets it reads, again: use fewer heads "
                    "or layers, or shorter definitions")});
            }
        }
    }
    return out;
}

// Warnings repeat across (layer, head): keep the first of each (place, message).
void dedupe(std::vector<Diagnostic>& warnings) {
    std::set<std::tuple<const Source*, int32_t, std::string>> seen;
    std::vector<Diagnostic> kept;
    for (auto& w : warnings) {
        if (seen.emplace(w.source.get(), w.begin, w.message).second) kept.push_back(std::move(w));
    }
    warnings = std::move(kept);
}

} // namespace

PatternPtr script_pattern(const Script& script, int64_t n, int32_t block, int64_t layer, int64_t head,
                          std::vector<Diagnostic>* warnings) {
    const EvalContext context = eval_context_attend(script, n, block, layer, head);
    // The last line whose selector matches wins (selectors are re-evaluated: cheap, and exact).
    std::vector<Selection> sel = selections(script, n, block, nullptr);
    const AttendLine* chosen = nullptr;
    for (const auto& candidate : sel) {
        if (head >= candidate.head_lo && head < candidate.head_hi && layer >= candidate.layer_lo &&
            layer < candidate.layer_hi) {
            chosen = candidate.line;
        }
    }
    int64_t steps = 0;
    return line_pattern(script, *chosen, context, warnings, &steps);
}

std::vector<Diagnostic> script_evaluate_all(const Script& script, int64_t n, int32_t block, bool n_given) {
    std::vector<Diagnostic> warnings = script.warnings;
    Evaluated evaluated = evaluate_patterns(script, n, block == 0 ? script.settings.block : block, &warnings, n_given);
    dedupe(warnings);
    return warnings;
}

Compiled script_compile(const Script& script, const CompileOptions& options) {
    const ScriptSettings& s = script.settings;
    const int32_t block = options.block == 0 ? s.block : options.block;
    Compiled out;
    out.warnings = script.warnings;
    Evaluated evaluated = evaluate_patterns(script, options.n, block, &out.warnings);

    // Compile each distinct pattern once (a pattern shared by many (layer, head) pairs gets
    // its key once: a key is as long as the pattern is large).
    std::map<std::string, size_t> index_of;
    std::map<const Pattern*, size_t> index_of_shared;
    std::vector<std::shared_ptr<const BlockMask>> compiled;
    std::vector<std::shared_ptr<const BlockMask>> masks(evaluated.patterns.size());
    // Content-based heads: their fixed part is compiled below as any pattern; their specs,
    // equal ones shared, go beside the masks.
    std::vector<std::shared_ptr<const ContentSpec>> content(evaluated.patterns.size());
    std::map<std::string, std::shared_ptr<const ContentSpec>> spec_of;
    std::map<const Pattern*, PatternPtr> fixed_of;  // a line's pattern, shared by many heads, split once
    for (size_t i = 0; i < evaluated.patterns.size(); ++i) {
        PatternPtr p = evaluated.patterns[i];
        if (p->content) {
            const ast::Expr& expr = evaluated.lines[i]->statement->value;
            if (!options.content) {
                throw ScriptError({diagnostic_at(
                    Severity::error, script.main->source, expr.begin, expr.end,
                    content_spec_text(*p->content) +
                        (p->content->kind == ContentKind::favor
                             ? " is content-based: FAVOR+ weighs every key by an estimate made from Q and K when attention "
                               "runs, and this tool needs every pair beforehand"
                             : " is content-based: its pairs are realised from Q and K when attention runs, and this tool "
                               "needs every pair beforehand"),
                    "sparsa compile, stats, show and run take it, and Python's Script.compile; here, use a fixed pattern")});
            }
            auto [spec, added] = spec_of.emplace(content_spec_text(*p->content) + (p->content->causal ? "&causal" : ""), p->content);
            content[i] = spec->second;
            auto [fixed, split] = fixed_of.emplace(p.get(), nullptr);
            if (split) fixed->second = pattern_content_split(p).fixed;
            p = fixed->second;
        }
        if (auto seen = index_of_shared.find(p.get()); seen != index_of_shared.end()) {
            masks[i] = compiled[seen->second];
            continue;
        }
        std::string key = pattern_key(*p);
        auto [it, inserted] = index_of.emplace(key, compiled.size());
        if (inserted) {
            compiled.push_back(std::make_shared<const BlockMask>(pattern_compile(*p, options.n, block, options.threads)));
        }
        masks[i] = compiled[it->second];
        index_of_shared.emplace(p.get(), it->second);
    }
    out.masks = mask_set_make(s.layers, s.heads, std::move(masks));
    if (!spec_of.empty()) out.masks.content = std::move(content);
    out.masks.script_name = std::filesystem::path(script.main->source->name).filename().string();
    out.masks.script_text = script.main->source->text;

    // Empty rows: one warning per attend line, naming the first (layer, head) it happens in.
    std::map<const AttendLine*, std::pair<int64_t, std::string>> empty;
    for (int64_t l = 0; l < s.layers; ++l) {
        for (int64_t h = 0; h < s.heads; ++h) {
            size_t i = static_cast<size_t>(l * s.heads + h);
            if (!out.masks.content.empty() && out.masks.content[i]) continue;  // its family adds pairs per input
            BlockMaskStats stats = block_mask_stats(*out.masks.masks[i]);
            if (stats.empty_rows == 0) continue;
            auto& entry = empty[evaluated.lines[i]];
            if (entry.first++ == 0) {
                entry.second = std::to_string(stats.empty_rows) + " of " + std::to_string(options.n) +
                               " query rows have no allowed key (layer " + std::to_string(l) + ", head " +
                               std::to_string(h) + ", first at q = " + std::to_string(stats.first_empty_row) + ")";
            }
        }
    }
    for (const auto& [line, entry] : empty) {
        std::string more = entry.first > 1 ? "; so do " + std::to_string(entry.first - 1) + " more (layer, head) masks" : "";
        warning_add(out.warnings, diagnostic_at(Severity::warning, script.main->source, line->statement->value.begin,
                                             line->statement->value.end, entry.second + more,
                                             "attention gives zeros in those rows"));
    }
    dedupe(out.warnings);
    return out;
}

} // namespace sparsa::dsl
