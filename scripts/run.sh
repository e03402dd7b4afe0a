#!/usr/bin/env bash
# The main job: set up, build, then check, compile and summarize every bundled example script,
# show how far information travels through one, and run attention with another on the CPU.
# The build also makes the page build/web/index.html (when emscripten is installed).
#   scripts/run.sh [N]      (sequence length, default 4096)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-4096}"

scripts/setup.sh build
sparsa=build/cli/sparsa
out=build/examples
mkdir -p "$out"

echo
echo "== sparsa check examples/patterns/*.pat"
"$sparsa" check examples/patterns/*.pat

echo
echo "== sparsa compile (n = $n): masks in $out/"
for f in examples/patterns/*.pat; do
  name=$(basename "$f" .pat)
  "$sparsa" compile "$f" --n "$n" -o "$out/$name.npz" | head -n 1
done

echo
echo "== sparsa stats --brief (n = $n)"
"$sparsa" stats --brief --n "$n" examples/patterns/*.pat

echo
echo "== sparsa show examples/patterns/bigbird.pat --n 2048 (layer 0, head 0)"
"$sparsa" show examples/patterns/bigbird.pat --n 2048

echo
echo "== sparsa show examples/patterns/per_head_mix.pat --n 2048 --png $out/overview.png (every layer and head, as a picture)"
"$sparsa" show examples/patterns/per_head_mix.pat --n 2048 --png "$out/overview.png"

echo
echo "== sparsa reach examples/patterns/local_window.pat --n $n (how far information travels)"
"$sparsa" reach examples/patterns/local_window.pat --n "$n"

echo
echo "== sparsa run examples/patterns/longformer.pat --n $n --check (CPU engine against the dense reference)"
"$sparsa" run examples/patterns/longformer.pat --n "$n" --check

echo
if [ -f build/web/index.html ]; then
  echo "== the page: open file://$PWD/build/web/index.html in a browser (no server, no install)"
  echo "   or serve build/web/ as a static site: python3 -m http.server -d build/web 8000"
else
  echo "== the page was not built: install emscripten (scripts/setup.sh does) and run this again"
fi
