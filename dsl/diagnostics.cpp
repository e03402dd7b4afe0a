// Formatting diagnostics with a quoted line and a caret span, and finding did-you-mean names.
#include "dsl/diagnostics.hpp"

#include <algorithm>
#include <numeric>

namespace sparsa::dsl {

namespace {

bool is_continuation_byte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Characters (UTF-8 code points) in text[begin, end).
int count_chars(std::string_view text, size_t begin, size_t end) {
    int count = 0;
    for (size_t i = begin; i < end && i < text.size(); ++i) count += is_continuation_byte(text[i]) ? 0 : 1;
    return count;
}

size_t clamp_offset(const Diagnostic& d, int32_t offset) {
    if (!d.source) return 0;
    return std::min<size_t>(static_cast<size_t>(std::max<int32_t>(offset, 0)), d.source->text.size());
}

size_t line_start(std::string_view text, size_t at) {
    size_t start = text.rfind('\n', at == 0 ? 0 : at - 1);
    if (at == 0 || start == std::string_view::npos) return 0;
    return start + 1;
}

} // namespace

int Diagnostic::line() const {
    if (!source) return 0;
    size_t at = clamp_offset(*this, begin);
    return 1 + static_cast<int>(std::count(source->text.begin(), source->text.begin() + static_cast<std::ptrdiff_t>(at), '\n'));
}

int Diagnostic::column() const {
    if (!source) return 0;
    size_t at = clamp_offset(*this, begin);
    return 1 + count_chars(source->text, line_start(source->text, at), at);
}

std::string diagnostic_format(const Diagnostic& d) {
    std::string out;
    const char* kind = d.severity == Severity::error ? "error" : "warning";
    if (!d.source) {
        out = std::string(kind) + ": " + d.message + "\n";
        if (!d.hint.empty()) out += "  " + d.hint + "\n";
        return out;
    }
    std::string_view text = d.source->text;
    size_t at = clamp_offset(d, d.begin);
    size_t start = line_start(text, at);
    size_t stop = text.find('\n', start);
    if (stop == std::string_view::npos) stop = text.size();
    std::string_view line = text.substr(start, stop - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);

    out = d.source->name + ":" + std::to_string(d.line()) + ":" + std::to_string(d.column()) + ": " +
          kind + ": " + d.message + "\n";
    out += "  " + std::string(line) + "\n";
    // The caret line copies tabs from the quoted line so the caret stays aligned.
    std::string caret = "  ";
    for (size_t i = start; i < at; ++i) {
        if (is_continuation_byte(text[i])) continue;
        caret += text[i] == '\t' ? '\t' : ' ';
    }
    size_t end = std::clamp(clamp_offset(d, d.end), at, start + line.size());
    int width = std::max(1, count_chars(text, at, end));
    caret += "^" + std::string(static_cast<size_t>(width - 1), '~');
    out += caret + "\n";
    if (!d.hint.empty()) out += "  " + d.hint + "\n";
    return out;
}

namespace {

std::string format_all(const std::vector<Diagnostic>& diagnostics) {
    std::string text;
    for (const auto& d : diagnostics) text += diagnostic_format(d);
    if (!text.empty() && text.back() == '\n') text.pop_back();
    return text;
}

} // namespace

ScriptError::ScriptError(std::vector<Diagnostic> diagnostics)
    : Error(format_all(diagnostics)), diagnostics_(std::move(diagnostics)) {}

Diagnostic diagnostic_at(Severity severity, SourcePtr source, int32_t begin, int32_t end,
                         std::string message, std::string hint) {
    Diagnostic d;
    d.severity = severity;
    d.source = std::move(source);
    d.begin = begin;
    d.end = std::max(end, begin);
    d.message = std::move(message);
    d.hint = std::move(hint);
    return d;
}

namespace {

// Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps.
size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::vector<size_t>> dist(a.size() + 1, std::vector<size_t>(b.size() + 1));
    for (size_t i = 0; i <= a.size(); ++i) dist[i][0] = i;
    for (size_t j = 0; j <= b.size(); ++j) dist[0][j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            dist[i][j] = std::min({dist[i - 1][j] + 1, dist[i][j - 1] + 1, dist[i - 1][j - 1] + cost});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
                dist[i][j] = std::min(dist[i][j], dist[i - 2][j - 2] + 1);
            }
        }
    }
    return dist[a.size()][b.size()];
}

} // namespace

std::string closest_name(std::string_view word, const std::vector<std::string>& candidates) {
    if (word.size() > 64) return {};
    std::string best;
    size_t best_distance = 3;
    for (const auto& candidate : candidates) {
        if (candidate == word || candidate.size() > 64) continue;
        size_t d = edit_distance(word, candidate);
        if (d < best_distance && d < word.size()) {
            best_distance = d;
            best = candidate;
        }
    }
    return best;
}

} // namespace sparsa::dsl
