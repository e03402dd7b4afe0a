// The layout file of a screenshot (see layout.hpp).
#include "viz/layout.hpp"

#include "engine/error.hpp"
#include "io/atomic_file.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

namespace sparsa::viz {

bool LayoutRect::clipped(double tolerance) const {
    return x0 < clip_x0 - tolerance || y0 < clip_y0 - tolerance || x1 > clip_x1 + tolerance || y1 > clip_y1 + tolerance;
}

double LayoutRect::overlap_area(const LayoutRect& other) const {
    double w = std::min(x1, other.x1) - std::max(x0, other.x0);
    double h = std::min(y1, other.y1) - std::max(y0, other.y0);
    return w > 0 && h > 0 ? w * h : 0.0;
}

std::vector<const LayoutRect*> Layout::of_kind(const std::string& kind) const {
    std::vector<const LayoutRect*> out;
    for (const LayoutRect& r : rects) {
        if (r.kind == kind) out.push_back(&r);
    }
    return out;
}

namespace {

std::string quoted(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out + "\"";
}

std::string number(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", v);
    return buf;
}

// One line's flat object {"key": "string" or number, ...} into key -> raw value (strings unescaped).
std::map<std::string, std::string> parse_object(const std::string& text, const std::string& where) {
    std::map<std::string, std::string> out;
    size_t i = text.find('{');
    if (i == std::string::npos) throw Error(where + ": expected '{'");
    ++i;
    auto skip = [&] { while (i < text.size() && (text[i] == ' ' || text[i] == ',')) ++i; };
    auto string_at = [&]() {
        if (i >= text.size() || text[i] != '"') throw Error(where + ": expected a string at column " + std::to_string(i + 1));
        std::string s;
        for (++i; i < text.size() && text[i] != '"'; ++i) {
            if (text[i] != '\\') {
                s += text[i];
                continue;
            }
            if (++i >= text.size()) break;
            if (text[i] == 'u' && i + 4 < text.size()) {
                s += static_cast<char>(std::stoi(text.substr(i + 1, 4), nullptr, 16));
                i += 4;
            } else {
                s += text[i];
            }
        }
        if (i >= text.size()) throw Error(where + ": a string does not end");
        ++i;
        return s;
    };
    for (skip(); i < text.size() && text[i] != '}'; skip()) {
        std::string key = string_at();
        while (i < text.size() && (text[i] == ' ' || text[i] == ':')) ++i;
        if (i < text.size() && text[i] == '"') {
            out[key] = string_at();
        } else {
            size_t end = text.find_first_of(",}", i);
            if (end == std::string::npos) throw Error(where + ": the value of '" + key + "' does not end");
            out[key] = text.substr(i, end - i);
            i = end;
        }
    }
    return out;
}

double to_double(const std::map<std::string, std::string>& o, const std::string& key, const std::string& where, double fallback) {
    auto it = o.find(key);
    if (it == o.end()) return fallback;
    double v = 0;
    auto [end, ec] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), v);
    if (ec != std::errc() || end != it->second.data() + it->second.size()) {
        throw Error(where + ": '" + key + "' is not a number: '" + it->second + "'");
    }
    return v;
}

} // namespace

std::string layout_json(const Layout& layout) {
    std::ostringstream out;
    out << "{\"width\": " << layout.width << ", \"height\": " << layout.height << ", \"rects\": [\n";
    for (size_t i = 0; i < layout.rects.size(); ++i) {
        const LayoutRect& r = layout.rects[i];
        out << "{\"kind\": " << quoted(r.kind) << ", \"view\": " << quoted(r.view) << ", \"text\": " << quoted(r.text)
            << ", \"x0\": " << number(r.x0) << ", \"y0\": " << number(r.y0) << ", \"x1\": " << number(r.x1)
            << ", \"y1\": " << number(r.y1) << ", \"clip_x0\": " << number(r.clip_x0) << ", \"clip_y0\": " << number(r.clip_y0)
            << ", \"clip_x1\": " << number(r.clip_x1) << ", \"clip_y1\": " << number(r.clip_y1);
        if (r.line >= 0) out << ", \"line\": " << r.line;
        if (r.layer >= 0) out << ", \"layer\": " << r.layer << ", \"head\": " << r.head;
        if (r.texels > 0) out << ", \"texels\": " << r.texels << ", \"blocks_per_texel\": " << r.blocks_per_texel;
        out << "}" << (i + 1 < layout.rects.size() ? "," : "") << "\n";
    }
    out << "]}\n";
    return out.str();
}

void layout_save(const Layout& layout, const std::string& path) {
    std::string text = layout_json(layout);
    AtomicFile file(path);
    file.write(text.data(), text.size());
    file.commit();
}

Layout layout_load(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw Error("cannot read layout '" + path + "' (does it exist? sparsa-view --layout writes it)");
    Layout layout;
    std::string line;
    int number_of_line = 0;
    while (std::getline(in, line)) {
        ++number_of_line;
        std::string where = path + ":" + std::to_string(number_of_line);
        if (line.empty() || line == "]}") continue;
        if (number_of_line == 1) {
            if (std::sscanf(line.c_str(), "{\"width\": %d, \"height\": %d", &layout.width, &layout.height) != 2) {
                throw Error(where + ": expected {\"width\": W, \"height\": H, \"rects\": [ (not a sparsa-view layout)");
            }
            continue;
        }
        auto o = parse_object(line, where);
        LayoutRect r;
        r.kind = o["kind"];
        r.view = o["view"];
        r.text = o["text"];
        r.x0 = to_double(o, "x0", where, 0);
        r.y0 = to_double(o, "y0", where, 0);
        r.x1 = to_double(o, "x1", where, 0);
        r.y1 = to_double(o, "y1", where, 0);
        r.clip_x0 = to_double(o, "clip_x0", where, 0);
        r.clip_y0 = to_double(o, "clip_y0", where, 0);
        r.clip_x1 = to_double(o, "clip_x1", where, 0);
        r.clip_y1 = to_double(o, "clip_y1", where, 0);
        r.line = static_cast<int64_t>(to_double(o, "line", where, -1));
        r.layer = static_cast<int64_t>(to_double(o, "layer", where, -1));
        r.head = static_cast<int64_t>(to_double(o, "head", where, -1));
        r.texels = static_cast<int64_t>(to_double(o, "texels", where, 0));
        r.blocks_per_texel = static_cast<int64_t>(to_double(o, "blocks_per_texel", where, 0));
        if (r.kind.empty()) throw Error(where + ": a rectangle without a kind");
        layout.rects.push_back(std::move(r));
    }
    if (number_of_line == 0) throw Error("layout '" + path + "' is empty");
    return layout;
}

} // namespace sparsa::viz
