// lsh(...), anchors(...) and favor(...) in the evaluator: their arguments, the files they name,
// and the operators that refuse them. What they mean: docs/pattern-language.md.
#include "dsl/content_family.hpp"

#include "dsl/builtins.hpp"
#include "io/content_spec_rules.hpp"
#ifndef __EMSCRIPTEN__
#include "io/npy.hpp"
#include "io/npz.hpp"
#endif

#include <cstdio>
#include <filesystem>

namespace sparsa::dsl {

namespace {

// The arguments of one call, read with a caret on the one at fault.
class ArgReader {
public:
    ArgReader(const CallArgs& args, const EvalContext& context) : args_(args), context_(context) {}

    const std::string& fn() const { return args_.builtin->name; }
    bool has(size_t i) const { return args_.values[i] != nullptr; }
    const std::string& param(size_t i) const { return args_.builtin->params[i]; }

    [[noreturn]] void fail(size_t i, const std::string& message, const std::string& hint = {}) const {
        const ast::Span& span = args_.spans[i];
        throw ScriptError({diagnostic_at(Severity::error, args_.source, span.begin, span.end, message, hint)});
    }
    [[noreturn]] void fail_call(const std::string& message, const std::string& hint = {}) const {
        throw ScriptError({diagnostic_at(Severity::error, args_.source, args_.call.begin, args_.call.end, message, hint)});
    }

    int64_t integer(size_t i, int64_t fallback) const {
        if (!has(i)) return fallback;
        const Value& v = *args_.values[i];
        if (v.kind == Value::Kind::integer) return v.integer;
        const std::string where = fn() + ": " + param(i);
        if (v.kind == Value::Kind::real) {
            char text[64];
            std::snprintf(text, sizeof text, "%g", v.real);
            std::string shown = text;
            if (shown.find_first_of(".eni") == std::string::npos) shown += ".0";  // 8.0, not 8
            fail(i, where + " must be an integer; got " + shown, "round it with floor(...) or ceil(...)");
        }
        fail(i, where + " must be an integer; got " + value_kind_name(v.kind));
    }
    int64_t at_least(size_t i, int64_t fallback, int64_t minimum) const {
        const int64_t value = integer(i, fallback);
        if (value < minimum) {
            fail(i, fn() + ": " + param(i) + " must be at least " + std::to_string(minimum) + "; got " + std::to_string(value));
        }
        return value;
    }
    bool boolean(size_t i, bool fallback) const {
        if (!has(i)) return fallback;
        const Value& v = *args_.values[i];
        if (v.kind != Value::Kind::boolean) {
            fail(i, fn() + ": " + param(i) + " must be true or false; got " + value_kind_name(v.kind),
                 "write " + param(i) + " = true or " + param(i) + " = false");
        }
        return v.integer != 0;
    }
    const std::string* string(size_t i) const {
        if (!has(i)) return nullptr;
        const Value& v = *args_.values[i];
        if (v.kind != Value::Kind::string) {
            fail(i, fn() + ": " + param(i) + " takes a file name in quotes; got " + value_kind_name(v.kind),
                 "write " + param(i) + " = \"FILE\"");
        }
        return &v.text;
    }

    const EvalContext& context() const { return context_; }
    const SourcePtr& source() const { return args_.source; }

private:
    const CallArgs& args_;
    const EvalContext& context_;
};

#ifdef __EMSCRIPTEN__

// The page has no files: a family that names one is refused where it does, as load() is.
std::string file_checked(const ArgReader& r, size_t i, const std::string& name, const std::string&,
                         const std::vector<int64_t>&, const std::string&, const std::string&) {
    r.fail(i, r.fn() + ": " + r.param(i) + " '" + name + "' cannot be read in the page, which has no files",
           "use the sparsa command, e.g. sparsa compile script.pat --n 4096");
}

#else

// A file argument, checked: resolved against the folder of the script that names it, present, a
// float32 array (an .npy, or `array` of an .npz) whose shape is `expected` (-1: d, which only
// attention knows). Returns its absolute path; refused with a caret on argument i, saying where
// it looked and `how` to make one.
std::string file_checked(const ArgReader& r, size_t i, const std::string& name, const std::string& array,
                         const std::vector<int64_t>& expected, const std::string& meaning, const std::string& how) {
    const SourcePtr& source = r.source();
    std::filesystem::path path(name), shown(name);
    if (path.is_relative()) {
        if (!source->path.empty()) path = std::filesystem::path(source->path).parent_path() / path;
        shown = std::filesystem::path(source->name).parent_path() / shown;
    }
    std::error_code error;
    std::filesystem::path absolute = std::filesystem::absolute(path, error);
    if (error) absolute = path;
    const std::string full = absolute.lexically_normal().string(), seen = shown.lexically_normal().string();
    const std::string relative = !std::filesystem::path(name).is_relative() ? ""
                                 : source->path.empty()                       ? ", relative to the current folder"
                                                                              : ", relative to the script's folder";
    const std::string what = r.fn() + ": " + r.param(i) + " '" + name + "'";
    if (!std::filesystem::exists(full, error)) r.fail(i, what + " not found (looked for " + seen + relative + ")", how);
    if (!std::filesystem::is_regular_file(full, error)) r.fail(i, what + " is not a regular file (" + seen + ")", how);
    // Messages of io/ name the file by its absolute path: show it as the script does.
    auto as_shown = [&](std::string message) {
        for (size_t at = message.find(full); at != std::string::npos; at = message.find(full, at + seen.size())) {
            message.replace(at, full.size(), seen);
        }
        return r.fn() + ": " + message;
    };
    NpyHeader header;
    try {
        if (array.empty()) {
            const NpyArray a = npy_load(full);  // small (rotations, features): read whole, so a short file is refused
            header.dtype = a.dtype;
            header.shape = a.shape;
        } else {
            const NpzReader npz(full);
            if (!npz.has(array)) {
                r.fail(i, r.fn() + ": " + seen + " has no '" + array + "' array: is it a file written by `sparsa anchors fit`?", how);
            }
            header = npz.stream(array).header();
        }
    } catch (const ScriptError&) {
        throw;
    } catch (const Error& e) {
        r.fail(i, as_shown(e.what()), how);
    }
    const std::string label = r.fn() + ": " + seen + (array.empty() ? "" : " array '" + array + "'");
    if (header.dtype != NpyDtype::float32) {
        r.fail(i, label + " has dtype " + npy_dtype_name(header.dtype) + ", expected float32 " + meaning,
               "save it with np.save(path, a.astype(np.float32))");
    }
    bool same = header.shape.size() == expected.size();
    for (size_t d = 0; same && d < expected.size(); ++d) same = expected[d] < 0 || expected[d] == header.shape[d];
    if (!same) {
        std::string wanted = "[";
        for (size_t d = 0; d < expected.size(); ++d) wanted += (d ? ", " : "") + (expected[d] < 0 ? std::string("d") : std::to_string(expected[d]));
        r.fail(i, label + " has shape " + npy_shape_text(header.shape) + ", but this call needs " + wanted + "] " + meaning);
    }
    return full;
}

#endif

ContentSpec lsh_spec(const ArgReader& r) {
    ContentSpec spec;
    spec.kind = ContentKind::lsh;
    spec.buckets = r.at_least(0, 0, 2);
    if (spec.buckets % 2 != 0) {
        r.fail(0, "lsh: buckets must be even; got " + std::to_string(spec.buckets),
               "the hash takes the argmax over buckets / 2 random directions and their opposites: use " +
                   std::to_string(spec.buckets - 1) + " or " + std::to_string(spec.buckets + 1));
    }
    const EvalContext& c = r.context();
    if (c.has_sequence && !c.n_assumed && spec.buckets > c.n) {
        r.fail(0, "lsh: " + std::to_string(spec.buckets) + " buckets is more than the n = " + std::to_string(c.n) + " tokens",
               "use at most n buckets (most would stay empty)");
    }
    spec.rounds = r.at_least(1, 1, 1);
    spec.chunk = r.at_least(2, c.block, 1);
    spec.seed = static_cast<uint64_t>(r.at_least(3, 0, 0));
    spec.shared_qk = r.boolean(4, true);
    spec.causal = c.causal;
    if (const std::string* name = r.string(5)) {
        spec.file = file_checked(r, 5, *name, "", {spec.rounds, -1, spec.buckets / 2}, "(rotations [rounds, d, buckets / 2])",
                                 "give a float32 .npy of rotations [rounds, d, buckets / 2], or leave file out to draw them from the seed");
    }
    return spec;
}

ContentSpec anchors_spec(const ArgReader& r) {
    ContentSpec spec;
    spec.kind = ContentKind::anchors;
    spec.buckets = r.at_least(0, 0, 1);
    spec.rounds = r.at_least(1, 1, 1);
    spec.chunk = r.at_least(2, r.context().block, 1);
    spec.shared_qk = r.boolean(4, true);
    spec.causal = r.context().causal;
    const std::string k = std::to_string(spec.buckets);
    const std::string fit_command = "fit them first: sparsa anchors fit --q Q.npy --k K.npy --anchors " + k +
                                    (spec.rounds > 1 ? " --rounds " + std::to_string(spec.rounds) : "") + " -o anchors.npz";
    const std::string* name = r.string(3);
    if (name == nullptr) {
        r.fail_call("anchors needs fit = \"FILE.npz\": the " + k + " anchor vectors fitted to calibration queries and keys",
                    fit_command + ", then write anchors(" + k + ", fit = \"anchors.npz\")");
    }
    spec.file = file_checked(r, 3, *name, "anchors", {spec.rounds, spec.buckets, -1}, "(anchors [rounds, k, d])", fit_command);
    return spec;
}

ContentSpec favor_spec(const ArgReader& r) {
    ContentSpec spec;
    spec.kind = ContentKind::favor;
    spec.features = r.at_least(0, 256, 1);
    spec.seed = static_cast<uint64_t>(r.at_least(1, 0, 0));
    spec.redraw = r.at_least(2, 0, 0);
    spec.causal = r.context().causal;
    if (const std::string* name = r.string(3)) {
        spec.file = file_checked(r, 3, *name, "", {spec.features, -1}, "(features [features, d])",
                                 "give a float32 .npy of features [features, d], or leave file out to draw them from the seed");
    }
    return spec;
}

std::string family(const Pattern& p) { return std::string(content_kind_name(p.content->kind)) + "(...)"; }

} // namespace

ContentSpec content_family_spec(const CallArgs& args, const EvalContext& context) {
    const ArgReader reader(args, context);
    const std::string& fn = args.builtin->name;
    ContentSpec spec = fn == "lsh" ? lsh_spec(reader) : fn == "anchors" ? anchors_spec(reader) : favor_spec(reader);
    if (std::string problem = content_spec_problem(spec); !problem.empty()) reader.fail_call(problem);  // never: checked above
    return spec;
}

void content_operator_check(char op, const Pattern& lhs, const Pattern* rhs, const SourcePtr& source, int32_t op_begin,
                            int32_t op_end) {
    const std::string name = std::string("'") + op + "'";
    auto fail = [&](const std::string& message, const std::string& hint) {
        throw ScriptError({diagnostic_at(Severity::error, source, op_begin, op_end, message, hint)});
    };
    for (const Pattern* p : {&lhs, rhs}) {
        if (p != nullptr && p->content && p->content->kind == ContentKind::favor) {
            fail("favor(...) cannot be combined with " + name +
                     ": FAVOR+ approximates dense attention and has no pairs to combine",
                 "give favor its own attend line, e.g. attend[head 0..4] = favor(256)");
        }
    }
    const Pattern* content = lhs.content ? &lhs : (rhs != nullptr && rhs->content ? rhs : nullptr);
    if (content == nullptr) return;
    if (op == '|') {
        if (lhs.content && rhs != nullptr && rhs->content) {
            fail("'|' joins two content-based families (" + family(lhs) + " and " + family(*rhs) + "): an attend line may hold one",
                 "for more rounds write rounds = r in one family; for other heads write attend[head A..B] = ...");
        }
        return;
    }
    const char* verb = op == '&' ? "intersected" : op == '-' ? "subtracted from or removed" : "complemented";
    fail(name + " cannot take " + family(*content) + ": its pairs are known only once Q and K are seen, so it can be united "
         "with fixed patterns (|) but not " + verb,
         op == '&' ? "for causal attention write the `causal` statement (it applies to " + family(*content) +
                         " too); else apply & to the fixed part alone: (P & R) | " + family(*content)
         : op == '-' ? "apply it to the fixed part alone: (P - R) | " + family(*content)
                     : "complement the fixed part alone: !P | " + family(*content));
}

} // namespace sparsa::dsl
