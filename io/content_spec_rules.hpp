// The rules a ContentSpec obeys (docs/pattern-language.md) and its kind's name, shared by the
// language (dsl/), which checks a script's arguments, and the mask files (io/mask_io), which
// check what they read. Header-only: the browser page compiles dsl/ without io/'s sources.
#pragma once

#include "engine/content/content_spec.hpp"

#include <cstdint>
#include <string>

namespace sparsa {

// "lsh", "anchors", "favor": the name a script calls and the mask file's "kind".
inline const char* content_kind_name(ContentKind kind) {
    switch (kind) {
    case ContentKind::lsh: return "lsh";
    case ContentKind::anchors: return "anchors";
    case ContentKind::favor: return "favor";
    }
    return "an unknown kind";
}

// What is wrong with `spec` by the language's rules ("lsh: buckets = 7 is odd ..."), or "" when
// nothing is. The engines' own run-time checks (n, d, file shapes) come on top.
inline std::string content_spec_problem(const ContentSpec& spec) {
    auto below = [](const char* what, int64_t value, int64_t lo) {
        return std::string(what) + " = " + std::to_string(value) + " is below " + std::to_string(lo);
    };
    switch (spec.kind) {
    case ContentKind::lsh:
        if (spec.buckets < 2) return below("lsh: buckets", spec.buckets, 2);
        if (spec.buckets % 2 != 0) {
            return "lsh: buckets = " + std::to_string(spec.buckets) +
                   " is odd (the hash takes the argmax over buckets / 2 directions and their opposites)";
        }
        break;
    case ContentKind::anchors:
        if (spec.buckets < 1) return below("anchors: k", spec.buckets, 1);
        if (spec.file.empty()) return "anchors: no fit file (anchors(k, fit = \"FILE.npz\"))";
        break;
    case ContentKind::favor:
        if (spec.features < 1) return below("favor: features", spec.features, 1);
        if (spec.redraw < 0) return below("favor: redraw", spec.redraw, 0);
        return "";
    default: return "content kind " + std::to_string(static_cast<int32_t>(spec.kind)) + " is not lsh (1), anchors (2) or favor (3)";
    }
    const char* family = content_kind_name(spec.kind);
    if (spec.rounds < 1) return below((std::string(family) + ": rounds").c_str(), spec.rounds, 1);
    if (spec.chunk < 1) return below((std::string(family) + ": chunk").c_str(), spec.chunk, 1);
    return "";
}

} // namespace sparsa
