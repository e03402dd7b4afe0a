#!/usr/bin/env bash
# Makes the README's images (the viewer, the coverage plot, the CLI's pictures, the page), from a build folder (default
# build/, as scripts/setup.sh makes it). Needs xvfb-run (Debian's xvfb) for the viewer and Chromium for the page:
#   docs/images/make.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
view() { LIBGL_ALWAYS_SOFTWARE=1 xvfb-run -a -s '-screen 0 1600x1000x24' "$build/viz/sparsa-view" "$@"; }
p=examples/patterns

view $p/longformer.pat --n 2048 --hover 40,100 --frames 4 --screenshot docs/images/viewer-mask.png
view $p/longformer.pat --n 2048 --edit docs/images/longformer_typo.pat --screenshot docs/images/viewer-edit.png
view $p/longformer_growing.pat --n 4096 --token 2048 --view reach --screenshot docs/images/viewer-reach.png
view $p/longformer_growing.pat --n 4096 --view hops --screenshot docs/images/viewer-hops.png
view $p/local_window.pat --n 4096 --compare $p/longformer.pat --view compare --screenshot docs/images/viewer-compare.png
view $p/bigbird.pat --n 4096 --view demo --screenshot docs/images/viewer-demo.png
view $p/per_head_mix.pat --n 2048 --view overview --screenshot docs/images/viewer-overview.png
# Zoomed to 6 pixels a token on a dilated head (dilated(32, 4)): each kept pair is drawn.
view $p/per_head_mix.pat --n 4096 --layer 0 --head 3 --zoom 6 --center 2048,2000 --screenshot docs/images/viewer-dilated.png
"$build/cli/sparsa" reach $p/longformer_growing.pat --n 4096 --png docs/images/coverage-longformer_growing.png
# The pictures of sparsa show/stats --png (no display needed).
"$build/cli/sparsa" show $p/per_head_mix.pat --n 2048 --png docs/images/overview.png
"$build/cli/sparsa" stats $p/per_head_mix.pat --n 4096 --brief --png docs/images/stats.png
"$build/cli/sparsa" show $p/per_head_mix.pat --n 512 --layer 0 --head 3 --width 700 --height 700 --png docs/images/dilated_head.png
# The page in headless Chromium (built with emscripten; tests/web's readme test takes the picture).
SPARSA_WEB_PAGE=$build/web/index.html SPARSA_CLI=$build/cli/sparsa SPARSA_WEB_SCREENSHOT=docs/images/web-page.png \
    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/web -k readme
