// Diagnostics of pattern scripts: FILE:LINE:COLUMN, the line, a caret under the spot, what was
// expected and, where it can, how to fix it (the form of ../shared/pattern-language.md).
#pragma once

#include "engine/error.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sparsa::dsl {

// One script's text and where it came from; diagnostics point into it.
struct Source {
    std::string name;  // as shown in diagnostics: the path given, or "<prelude>", "<string>"
    std::string path;  // for imports and load(): relative paths resolve against its folder
    std::string text;
};
using SourcePtr = std::shared_ptr<const Source>;

enum class Severity { error, warning };

struct Diagnostic {
    Severity severity = Severity::error;
    SourcePtr source;         // null for a diagnostic about no particular place
    int32_t begin = 0;        // byte span in source->text
    int32_t end = 0;
    std::string message;      // "unknown pattern 'gobal'"
    std::string hint;         // "did you mean 'global'?" (may be empty)

    int line() const;         // 1-based
    int column() const;       // 1-based, in characters
};

// The full text of a diagnostic, several lines, ending with a newline:
//   bigbird.pat:7:20: error: unknown pattern 'gobal'
//     attend = band(1) | gobal(first(g)) | random(3, seed = 7)
//                        ^~~~~
//     did you mean 'global'?
std::string diagnostic_format(const Diagnostic& d);

// A script error: the diagnostics that stopped it (at least one error), with any warnings
// found before. what() is all of them formatted.
class ScriptError : public Error {
public:
    explicit ScriptError(std::vector<Diagnostic> diagnostics);
    const std::vector<Diagnostic>& diagnostics() const { return diagnostics_; }

private:
    std::vector<Diagnostic> diagnostics_;
};

// At most this many warnings are kept for one script (and one compile of it): a generated
// script with the same doubtful line a hundred thousand times still answers in a moment.
constexpr size_t kMaxWarnings = 100;

// Appends d unless kMaxWarnings are there already; the first one left out adds a note saying
// that more were not shown.
void warning_add(std::vector<Diagnostic>& warnings, Diagnostic d);

// Builds a diagnostic pointing at [begin, end) of source.
Diagnostic diagnostic_at(Severity severity, SourcePtr source, int32_t begin, int32_t end,
                         std::string message, std::string hint = {});

// The code point that starts at text[at] and its length in bytes (1 for ASCII); length 0 when
// the bytes there are not UTF-8 (a stray continuation byte, a cut or overlong sequence).
std::pair<uint32_t, int> utf8_decode(std::string_view text, size_t at);

// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo
// (distance <= 2, and less than the word's length); "" otherwise.
std::string closest_name(std::string_view word, const std::vector<std::string>& candidates);

} // namespace sparsa::dsl
