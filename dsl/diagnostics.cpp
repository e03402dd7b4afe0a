// Formatting diagnostics with a quoted line and a caret span, and finding did-you-mean names.
#include "dsl/diagnostics.hpp"

#include <algorithm>
#include <cstdio>
#include <numeric>

namespace sparsa::dsl {

namespace {

// Characters in text[begin, end): UTF-8 code points, and each byte that is not UTF-8.
int count_chars(std::string_view text, size_t begin, size_t end) {
    int count = 0;
    for (size_t i = begin; i < end && i < text.size(); ++count) {
        i += static_cast<size_t>(std::max(utf8_decode(text, i).second, 1));
    }
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

std::pair<uint32_t, int> utf8_decode(std::string_view text, size_t at) {
    const auto byte = [&](size_t i) -> uint32_t { return i < text.size() ? static_cast<unsigned char>(text[i]) : 0u; };
    const uint32_t lead = byte(at);
    if (lead < 0x80) return {lead, 1};
    const int length = lead >= 0xC2 && lead <= 0xDF ? 2 : lead >= 0xE0 && lead <= 0xEF ? 3 : lead >= 0xF0 && lead <= 0xF4 ? 4 : 0;
    if (length == 0) return {lead, 0};
    uint32_t code = lead & (0x7Fu >> length);
    for (int i = 1; i < length; ++i) {
        if ((byte(at + static_cast<size_t>(i)) & 0xC0) != 0x80) return {lead, 0};
        code = (code << 6) | (byte(at + static_cast<size_t>(i)) & 0x3F);
    }
    const uint32_t smallest = length == 2 ? 0x80 : length == 3 ? 0x800 : 0x10000;
    if (code < smallest || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return {lead, 0};
    return {code, length};
}

namespace {

// How a byte of a quoted line or a message is printed when it is not part of a UTF-8 character:
// control characters (but tab) and stray bytes as escapes, so a NUL cannot cut the text short
// and no byte can drive the terminal.
std::string visible(unsigned char c) {
    if (c == 0) return "\\0";
    if ((c < 0x20 && c != '\t') || c >= 0x7F) {
        char escape[8];
        std::snprintf(escape, sizeof escape, "\\x%02X", c);
        return escape;
    }
    return std::string(1, static_cast<char>(c));
}

std::string visible_text(std::string_view text) {
    std::string out;
    for (size_t i = 0; i < text.size();) {
        const int length = utf8_decode(text, i).second;
        if (length > 1) {
            out += text.substr(i, static_cast<size_t>(length));
            i += static_cast<size_t>(length);
        } else {
            out += text[i] == '\n' ? std::string("\n") : visible(static_cast<unsigned char>(text[i]));
            ++i;
        }
    }
    return out;
}

// One character of the quoted line: its bytes [begin, end) in the source, as printed, and the
// columns it takes (a UTF-8 sequence prints as one).
struct Shown {
    size_t begin, end;
    std::string text;
    int width;
};

// Quoted lines longer than this many columns show only the part around the caret.
constexpr int kMaxQuotedColumns = 120;

} // namespace

std::string diagnostic_format(const Diagnostic& d) {
    std::string out;
    const char* kind = d.severity == Severity::error ? "error" : "warning";
    const std::string message = visible_text(d.message), hint = visible_text(d.hint);
    if (!d.source) {
        out = std::string(kind) + ": " + message + "\n";
        if (!hint.empty()) out += "  " + hint + "\n";
        return out;
    }
    std::string_view text = d.source->text;
    size_t at = clamp_offset(d, d.begin);
    size_t start = line_start(text, at);
    size_t stop = text.find('\n', start);
    if (stop == std::string_view::npos) stop = text.size();
    if (stop > start && text[stop - 1] == '\r') --stop;
    at = std::min(at, stop);
    const size_t end = std::clamp(clamp_offset(d, d.end), at, stop);

    // The line as characters; the caret goes under those of [at, end) (at least one column).
    std::vector<Shown> line;
    for (size_t i = start; i < stop;) {
        const int length = utf8_decode(text.substr(0, stop), i).second;
        const size_t next = i + static_cast<size_t>(std::max(length, 1));
        std::string shown = length > 1 ? std::string(text.substr(i, next - i)) : visible(static_cast<unsigned char>(text[i]));
        const int width = length > 1 || text[i] == '\t' ? 1 : static_cast<int>(shown.size());
        line.push_back({i, next, std::move(shown), width});
        i = next;
    }
    // A long line is cut to the columns around the caret's start, marked with "...".
    size_t first = 0, last = line.size();
    const auto caret_at = static_cast<size_t>(
        std::lower_bound(line.begin(), line.end(), at, [](const Shown& c, size_t b) { return c.end <= b; }) - line.begin());
    int columns = 0;
    for (const auto& c : line) columns += c.width;
    if (columns > kMaxQuotedColumns) {
        first = caret_at > kMaxQuotedColumns / 3 ? caret_at - kMaxQuotedColumns / 3 : 0;
        int used = 0;
        last = first;
        while (last < line.size() && used + line[last].width <= kMaxQuotedColumns) used += line[last++].width;
    }
    std::string quoted = first > 0 ? "..." : "", caret = first > 0 ? "   " : "";
    bool underlined = false;
    for (size_t i = first; i < last; ++i) {
        const Shown& c = line[i];
        quoted += c.text;
        const bool under = c.begin < end ? c.end > at : c.begin == at;
        if (under) {
            caret += (underlined ? "~" : "^") + std::string(static_cast<size_t>(c.width - 1), '~');
            underlined = true;
        } else if (!underlined) {
            caret += c.text == "\t" ? std::string("\t") : std::string(static_cast<size_t>(c.width), ' ');
        }
    }
    if (last < line.size()) quoted += "...";
    if (!underlined) caret += "^";  // at the end of the line (or past the part shown)

    out = d.source->name + ":" + std::to_string(d.line()) + ":" + std::to_string(d.column()) + ": " + kind + ": " +
          message + "\n";
    out += "  " + quoted + "\n";
    out += "  " + caret + "\n";
    if (!hint.empty()) out += "  " + hint + "\n";
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

void warning_add(std::vector<Diagnostic>& warnings, Diagnostic d) {
    if (warnings.size() < kMaxWarnings) {
        warnings.push_back(std::move(d));
    } else if (warnings.size() == kMaxWarnings) {
        warnings.push_back(diagnostic_at(Severity::warning, nullptr, 0, 0,
                                         "more warnings are not shown (the first " + std::to_string(kMaxWarnings) +
                                             " are)"));
    }
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
