// Parsing sparsa-view's command line (see view_args.hpp).
#include "viz/view_args.hpp"

#include "engine/error.hpp"
#include "viz/view_model.hpp"

#include <charconv>
#include <tuple>
#include <utility>

namespace sparsa::viz {

const char* view_kind_name(ViewKind kind) {
    switch (kind) {
    case ViewKind::mask: return "mask";
    case ViewKind::reach: return "reach";
    case ViewKind::hops: return "hops";
    case ViewKind::compare: return "compare";
    case ViewKind::overview: return "overview";
    case ViewKind::demo: return "demo";
    }
    return "?";
}

std::string view_args_usage() {
    return "usage: sparsa-view [FILE] [--n N] [--layer L] [--head H] [--token T]\n"
           "                   [--compare FILE2 | --compare-head H2] [--edit FILE3]\n"
           "                   [--view mask|reach|hops|compare|overview|demo] [--zoom PX [--center Q,K]]\n"
           "                   [--screenshot OUT.png [--frames K] [--hover Q,K] [--layout OUT.json]] [--size WxH]\n"
           "Opens the pattern script FILE (or an empty editor) in the viewer. --screenshot renders K frames\n"
           "(default 3), writes the window as a PNG and exits; --hover puts the mouse over pair (Q, K) of the\n"
           "mask view first, to show its explanation. --edit replaces the editor's text by FILE3's after FILE\n"
           "compiled, as if typed: a bad edit shows its diagnostics and keeps FILE's mask. --zoom shows the mask\n"
           "at PX screen pixels per token (token-level pairs from 4), centred on pair (Q, K) (default n/2, n/2).\n"
           "--layout writes the rectangles of what the screenshot drew (labels, legends, code lines,\n"
           "diagnostics, overview cells) as JSON, for tests.\n";
}

namespace {

double parse_double(const std::string& option, const std::string& text, double lo, double hi) {
    double value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size()) throw Error(option + " takes a number; got '" + text + "'");
    if (!(value >= lo && value <= hi)) {
        throw Error(option + " " + text + " is out of range (use " + std::to_string(lo).substr(0, 4) + " to " +
                    std::to_string(static_cast<int>(hi)) + ")");
    }
    return value;
}

// "Q,K" as two positions of `option`.
std::pair<int64_t, int64_t> parse_pair(const std::string& option, const std::string& text, const char* example);

int64_t parse_int(const std::string& option, const std::string& text, int64_t lo, int64_t hi) {
    int64_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size()) {
        throw Error(option + " takes a whole number; got '" + text + "'");
    }
    if (value < lo || value > hi) {
        throw Error(option + " " + text + " is out of range (use " + std::to_string(lo) + " to " + std::to_string(hi) + ")");
    }
    return value;
}

std::pair<int64_t, int64_t> parse_pair(const std::string& option, const std::string& text, const char* example) {
    size_t comma = text.find(',');
    if (comma == std::string::npos) throw Error(option + " takes QUERY,KEY, e.g. " + option + " " + example + "; got '" + text + "'");
    return {parse_int(option + " query", text.substr(0, comma), 0, kViewMaxN - 1),
            parse_int(option + " key", text.substr(comma + 1), 0, kViewMaxN - 1)};
}

} // namespace

ViewArgs view_args_parse(const std::vector<std::string>& args) {
    ViewArgs out;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&]() -> const std::string& {
            if (i + 1 >= args.size()) throw Error(a + " needs a value (see sparsa-view --help)");
            return args[++i];
        };
        if (a == "--help" || a == "-h") {
            out.help = true;
        } else if (a == "--n") {
            out.n = parse_int(a, value(), 1, kViewMaxN);
        } else if (a == "--layer") {
            out.layer = parse_int(a, value(), 0, 1 << 20);
        } else if (a == "--head") {
            out.head = parse_int(a, value(), 0, 1 << 20);
        } else if (a == "--compare-head") {
            out.compare_head = parse_int(a, value(), 0, 1 << 20);
        } else if (a == "--token") {
            out.token = parse_int(a, value(), 0, kViewMaxN - 1);
        } else if (a == "--frames") {
            out.frames = static_cast<int>(parse_int(a, value(), 1, 10000));
        } else if (a == "--edit") {
            out.edit_file = value();
        } else if (a == "--compare") {
            out.compare_file = value();
        } else if (a == "--screenshot") {
            out.screenshot = value();
            if (out.screenshot.empty()) throw Error("--screenshot needs a file name, e.g. --screenshot view.png");
        } else if (a == "--view") {
            const std::string& v = value();
            if (v == "mask") out.view = ViewKind::mask;
            else if (v == "reach") out.view = ViewKind::reach;
            else if (v == "hops") out.view = ViewKind::hops;
            else if (v == "compare") out.view = ViewKind::compare;
            else if (v == "overview") out.view = ViewKind::overview;
            else if (v == "demo") out.view = ViewKind::demo;
            else throw Error("--view '" + v + "' is not a view (use mask, reach, hops, compare, overview or demo)");
        } else if (a == "--hover") {
            std::tie(out.hover_q, out.hover_k) = parse_pair(a, value(), "700,10");
        } else if (a == "--center") {
            std::tie(out.center_q, out.center_k) = parse_pair(a, value(), "512,480");
        } else if (a == "--zoom") {
            out.zoom = parse_double(a, value(), 0.01, 64);
        } else if (a == "--layout") {
            out.layout = value();
            if (out.layout.empty()) throw Error("--layout needs a file name, e.g. --layout view.json");
        } else if (a == "--size") {
            const std::string& v = value();
            size_t x = v.find('x');
            if (x == std::string::npos) throw Error("--size takes WIDTHxHEIGHT, e.g. 1280x800; got '" + v + "'");
            out.width = static_cast<int>(parse_int("--size width", v.substr(0, x), 320, 4096));
            out.height = static_cast<int>(parse_int("--size height", v.substr(x + 1), 240, 4096));
        } else if (!a.empty() && a[0] == '-') {
            throw Error("unknown option '" + a + "' (see sparsa-view --help)");
        } else if (out.file.empty()) {
            out.file = a;
        } else {
            throw Error("one script at a time: got '" + out.file + "' and '" + a + "' (use --compare FILE2 for a second)");
        }
    }
    // Positions are checked against --n once all options are read (--n may come after them).
    auto check_position = [&](const std::string& option, int64_t value) {
        if (value >= out.n) {
            throw Error(option + " " + std::to_string(value) + " is outside 0 to " + std::to_string(out.n - 1) +
                        " (n = " + std::to_string(out.n) + ")");
        }
    };
    check_position("--token", out.token);
    check_position("--hover query", out.hover_q);
    check_position("--hover key", out.hover_k);
    check_position("--center query", out.center_q);
    check_position("--center key", out.center_k);
    if (out.center_q >= 0 && out.zoom == 0) throw Error("--center needs --zoom PX (the pixels per token to show it at)");
    if (!out.layout.empty() && out.screenshot.empty()) throw Error("--layout is written with a screenshot: add --screenshot OUT.png");
    if (!out.edit_file.empty() && out.file.empty()) throw Error("--edit needs a FILE to edit first: sparsa-view FILE --edit FILE3");
    if (out.hover_q >= 0 && out.screenshot.empty()) throw Error("--hover is for screenshots: add --screenshot OUT.png");
    if (!out.compare_file.empty() && out.compare_head >= 0) {
        throw Error("--compare and --compare-head both given: compare two scripts or two heads, not both");
    }
    return out;
}

} // namespace sparsa::viz
