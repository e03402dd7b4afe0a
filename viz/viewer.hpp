// sparsa-view: the Dear ImGui + GLFW + OpenGL 3 viewer (window, views, screenshot mode).
#pragma once

#include "viz/view_args.hpp"

namespace sparsa::viz {

// Opens the window and runs until it closes, or, with args.screenshot, renders args.frames
// frames, writes the PNG and returns. Returns the process exit code; throws sparsa::Error for
// a file that cannot be read or a window that cannot be opened.
int viewer_run(const ViewArgs& args);

} // namespace sparsa::viz
