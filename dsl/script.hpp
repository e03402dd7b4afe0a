// Pattern scripts: load and check one, then compile it to a MaskSet for a sequence length.
// The front door of dsl/: parse (grammar.hpp) -> check -> evaluate (eval.hpp) -> compile
// (pattern.hpp). See ../shared/pattern-language.md for the language itself.
#pragma once

#include "dsl/diagnostics.hpp"
#include "dsl/pattern.hpp"
#include "engine/block_mask.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sparsa::dsl {

struct Script;
using ScriptPtr = std::shared_ptr<const Script>;

// Scripts larger than this are refused (a script is a few lines; this stops runaway input
// such as /dev/zero, yet leaves room for generated scripts of many thousand lines).
constexpr size_t kMaxScriptBytes = size_t{16} << 20;
// A pipe or FIFO given as a script is waited on this long for each piece of text.
constexpr int kScriptWaitSeconds = 10;

// Parses and checks a script given as text. `name` is shown in diagnostics; `path` (may be "")
// is where imports and load() resolve from. Throws ScriptError with the diagnostics of the
// first problems found (syntax, unknown names, wrong arguments, bad statements).
ScriptPtr script_parse(std::string text, std::string name, std::string path = {});

// Reads, parses and checks a script file. Throws sparsa::Error when it cannot be read.
ScriptPtr script_load(const std::string& path);

// Reads a script file's text as script_load does: a regular file, or a pipe or FIFO (waited on
// at most kScriptWaitSeconds for each piece), at most kMaxScriptBytes. Folders and devices are
// refused before they are read. Throws sparsa::Error saying which and how to fix it; messages
// name the file `shown_as` (default: path). (dsl/script_file.cpp)
std::string script_file_read(const std::string& path, const std::string& shown_as = {});

// The statements that size the model, after checking.
struct ScriptSettings {
    int32_t block = 64;
    int64_t heads = 1;
    int64_t layers = 1;
    bool causal = false;
};
const ScriptSettings& script_settings(const Script& script);
const Source& script_source(const Script& script);

// Warnings found while checking, before any compile (e.g. a complement).
const std::vector<Diagnostic>& script_warnings(const Script& script);

// What the compiler needs beyond the script.
struct CompileOptions {
    int64_t n = 0;        // sequence length, >= 1
    int32_t block = 0;    // 0: the script's `block` (default 64)
    int threads = 0;      // 0: SPARSA_THREADS or the core count
    // Content-based heads (lsh, anchors, favor): true compiles their fixed part into the head's
    // mask and their spec into MaskSet::content; false refuses them with a diagnostic, for tools
    // that need every pair beforehand or cannot realise them yet (reach, the viewer, the page).
    bool content = false;
};

struct Compiled {
    MaskSet masks;                     // one BlockMask per (layer, head), equal ones shared
    std::vector<Diagnostic> warnings;  // the script's and the compile's (empty rows, clamps)
};

// Evaluates every (layer, head) and compiles each distinct pattern once; with options.content,
// a head whose line has a content-based family gets its fixed part as its mask and the family's
// spec in masks.content (equal specs shared). Throws ScriptError for errors that depend on n (a
// type error, a division by zero, more lsh buckets than n, a content family without
// options.content) and sparsa::Error for a bad option.
Compiled script_compile(const Script& script, const CompileOptions& options);

// The evaluated pattern of one (layer, head) for sequence length n and block size B, the causal
// statement applied (to the fixed part: a content family carries it in its spec). Appends
// n-dependent warnings to *warnings when given.
PatternPtr script_pattern(const Script& script, int64_t n, int32_t block, int64_t layer,
                          int64_t head, std::vector<Diagnostic>* warnings = nullptr);

// Evaluates every (layer, head) at sequence length n (the checks `sparsa check` runs after
// parsing), and returns the warnings this finds. Throws ScriptError on the first error.
// n_given false: n is a stand-in, so checks against n itself (lsh's buckets <= n) are left to
// the compile.
std::vector<Diagnostic> script_evaluate_all(const Script& script, int64_t n, int32_t block = 0, bool n_given = true);

} // namespace sparsa::dsl
