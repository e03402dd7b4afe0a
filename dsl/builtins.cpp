// The table of built-in patterns, token sets and number functions.
#include "dsl/builtins.hpp"

#include <algorithm>

namespace sparsa::dsl {

namespace {

using R = Builtin::Returns;

const std::vector<Builtin>& table() {
    static const std::vector<Builtin> builtins = {
        {"dense", {}, 0, R::pattern, "dense"},
        {"empty", {}, 0, R::pattern, "empty"},
        {"causal", {}, 0, R::pattern, "causal"},
        {"window", {"w", "left", "right"}, 0, R::pattern, "window(w) or window(left = a, right = b)"},
        {"dilated", {"w", "d"}, 2, R::pattern, "dilated(w, d)"},
        {"strided", {"s"}, 1, R::pattern, "strided(s)"},
        {"fixed", {"l", "c"}, 2, R::pattern, "fixed(l, c)"},
        {"chunk", {"c"}, 1, R::pattern, "chunk(c)"},
        {"band", {"r"}, 1, R::pattern, "band(r)"},
        {"global", {"S"}, 1, R::pattern, "global(S)"},
        {"rows", {"S"}, 1, R::pattern, "rows(S)"},
        {"columns", {"S"}, 1, R::pattern, "columns(S)"},
        {"prefix", {"p"}, 1, R::pattern, "prefix(p)"},
        {"segments", {"S"}, 1, R::pattern, "segments(S)"},
        {"window2d", {"r", "width"}, 2, R::pattern, "window2d(r, width = W)"},
        {"axial", {"width"}, 1, R::pattern, "axial(width = W)"},
        {"random", {"r", "seed", "outside"}, 1, R::pattern, "random(r, seed = s, outside = P)"},
        {"lsh", {"buckets", "rounds", "chunk", "seed", "shared_qk", "file"}, 1, R::pattern,
         "lsh(buckets, rounds = 1, chunk = B, seed = 0, shared_qk = true, file = \"R.npy\")"},
        {"anchors", {"k", "rounds", "chunk", "fit", "shared_qk"}, 1, R::pattern,
         "anchors(k, rounds = 1, chunk = B, fit = \"FILE.npz\", shared_qk = true)"},
        {"favor", {"features", "seed", "redraw", "file"}, 0, R::pattern,
         "favor(features = 256, seed = 0, redraw = 0, file = \"F.npy\")"},
        {"load", {"file"}, 1, R::pattern, "load(\"FILE.npz\")"},
        {"first", {"g"}, 1, R::set, "first(g)"},
        {"last", {"g"}, 1, R::set, "last(g)"},
        {"every", {"p", "offset", "width"}, 1, R::set, "every(p, offset = o, width = w)"},
        {"min", {"a", "b"}, 2, R::number, "min(a, b)"},
        {"max", {"a", "b"}, 2, R::number, "max(a, b)"},
        {"log2", {"x"}, 1, R::number, "log2(x)"},
        {"sqrt", {"x"}, 1, R::number, "sqrt(x)"},
        {"ceil", {"x"}, 1, R::number, "ceil(x)"},
        {"floor", {"x"}, 1, R::number, "floor(x)"},
    };
    return builtins;
}

} // namespace

const Builtin* builtin_find(const std::string& name) {
    for (const auto& b : table()) {
        if (b.name == name) return &b;
    }
    return nullptr;
}

size_t builtin_param_index(const Builtin& builtin, const std::string& name) {
    return static_cast<size_t>(std::find(builtin.params.begin(), builtin.params.end(), name) -
                               builtin.params.begin());
}

const std::vector<std::string>& builtin_names() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> out;
        for (const auto& b : table()) out.push_back(b.name);
        return out;
    }();
    return names;
}

bool name_is_reserved(const std::string& name) {
    static const std::vector<std::string> context = {"n", "B", "h", "l", "H", "L", "true", "false"};
    return builtin_find(name) != nullptr ||
           std::find(context.begin(), context.end(), name) != context.end();
}

} // namespace sparsa::dsl
