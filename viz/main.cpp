// sparsa-view: command line, then the viewer. Errors are one line and a non-zero exit.
#include "engine/error.hpp"
#include "viz/view_args.hpp"
#include "viz/viewer.hpp"

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

int main(int argc, char** argv) {
    try {
        std::vector<std::string> args(argv + 1, argv + argc);
        sparsa::viz::ViewArgs parsed = sparsa::viz::view_args_parse(args);
        if (parsed.help) {
            std::fputs(sparsa::viz::view_args_usage().c_str(), stdout);
            return 0;
        }
        return sparsa::viz::viewer_run(parsed);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "sparsa-view: %s\n", e.what());
        return 1;
    }
}
