// The command line of sparsa-view, parsed apart from any window so tests can check its errors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparsa::viz {

enum class ViewKind { mask, reach, hops, compare, overview, demo };
const char* view_kind_name(ViewKind kind);  // "mask", "reach", ...

struct ViewArgs {
    std::string file;             // script to open ("" : an example or an empty editor)
    std::string compare_file;     // --compare: the second script of the compare view
    std::string edit_file;        // --edit FILE2: then replace the editor's text by FILE2's, as if
                                  // typed (a bad edit shows its diagnostics over the last good mask)
    int64_t n = 4096;             // --n
    int64_t layer = 0, head = 0;  // --layer, --head: the mask shown
    int64_t compare_head = -1;    // --compare-head: compare two heads of FILE instead (-1: off)
    int64_t token = -1;           // --token: the receptive field's token (-1: n / 2)
    ViewKind view = ViewKind::mask;
    std::string screenshot;       // --screenshot OUT.png: render, write, exit
    int frames = 3;               // --frames K
    int width = 1280, height = 800;  // --size WxH
    int64_t hover_q = -1, hover_k = -1;  // --hover Q,K: with --screenshot, the mouse over pair (Q, K)
    double zoom = 0;              // --zoom PX: the mask view at PX screen pixels per token (0: fit)
    int64_t center_q = -1, center_k = -1;  // --center Q,K: the pair at the zoomed view's centre (-1: n / 2)
    std::string layout;           // --layout OUT.json: with --screenshot, the drawn rectangles (layout.hpp)
    bool help = false;
};

// Parses argv[1..]. Throws sparsa::Error naming the option and what to do for bad arguments.
ViewArgs view_args_parse(const std::vector<std::string>& args);

// The --help text.
std::string view_args_usage();

} // namespace sparsa::viz
