#!/usr/bin/env bash
# The CPU engine at the machine's vector width against the portable build, from one run: builds
# bench_cpu twice (-DSPARSA_NATIVE=ON: -march=native, the default; OFF: the compiler's portable
# target, SSE2 on x86-64), then runs the native one with the portable one as its baseline: each
# size and each matrix-product rate runs in both builds, one after the other, so a change of load
# falls on both alike. Writes bench/results/cpu-<cpu>.md with both rates and their ratio per row.
#
#   bench/run_cpu.sh              # the full run, into bench/results/: on a quiet machine
#   bench/run_cpu.sh --quick      # n = 4,096 and 16,384, d = 64, one timed run each, into
#                                 #   $NATIVE/cpu-quick.md: checks the builds and the script
#   bench/run_cpu.sh -- ARGS...   # more bench_cpu arguments (e.g. -- --threads 2 --runs 9)
#
# Step content (issue 14), after the engine step: bench_content_cpu in the native build, the
# content-based families (lsh, anchors, FAVOR+ bidirectional and causal) at n = 4,096 to 65,536,
# d = 64 and 128, 8 heads, against dense and a window of as many keys, hashing, sorting and
# gathering timed apart; writes bench/results/content-cpu-<cpu>.md (--quick: n up to 16,384,
# d = 64, into $NATIVE/content-cpu-quick.md). The full step runs dense at n = 65,536 (about 9 and
# 18 TFLOP a run at d = 64 and 128): about half an hour on 2 quiet cores, dense most of it.
#   bench/run_cpu.sh --step engine    # only bench_cpu (both builds)
#   bench/run_cpu.sh --step content   # only bench_content_cpu (the native build); -- ARGS go to it
#
# Build folders (this script's own; created with CUDA, Python, the viewer and the tests off):
# build-cpu-native and build-cpu-portable, or $NATIVE and $PORTABLE.
set -euo pipefail
cd "$(dirname "$0")/.."
NATIVE=${NATIVE:-build-cpu-native}
PORTABLE=${PORTABLE:-build-cpu-portable}

quick=0
step=all
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --step)
      step=${2:-}
      case "$step" in engine|content|all) ;; *) echo "run_cpu.sh: --step '$step': use engine, content or all" >&2; exit 2 ;; esac
      shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "run_cpu.sh: unknown argument '$1' (use --quick, --step engine|content|all, or -- followed by the benchmark's arguments)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$step" = all ] && [ ${#extra[@]} -gt 0 ]; then
  echo "run_cpu.sh: arguments after -- go to one benchmark: add --step engine or --step content" >&2
  exit 2
fi

# [SECTION] the two builds
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
variants=(portable native)
[ "$step" != content ] || variants=(native)
for variant in "${variants[@]}"; do
  if [ $variant = native ]; then dir=$NATIVE flag=ON; else dir=$PORTABLE flag=OFF; fi
  mkdir -p "$dir"
  fresh=()
  # a new folder gets only what bench_cpu needs; an existing one keeps its other settings
  [ -f "$dir/CMakeCache.txt" ] || fresh=(-DSPARSA_CUDA=OFF -DSPARSA_PYTHON=OFF -DSPARSA_VIEWER=OFF -DSPARSA_TESTS=OFF)
  start=$(date +%s)
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DSPARSA_NATIVE=$flag "${fresh[@]}" "${launcher[@]}" \
    >"$dir/run_cpu-cmake.log" 2>&1 || { tail -30 "$dir/run_cpu-cmake.log"; exit 1; }
  targets=(bench_cpu)
  [ $variant = portable ] || [ "$step" = engine ] || targets+=(bench_content_cpu)
  [ "$step" != content ] || targets=(bench_content_cpu)
  cmake --build "$dir" -j "$(nproc)" --target "${targets[@]}" >"$dir/run_cpu-build.log" 2>&1 \
    || { tail -40 "$dir/run_cpu-build.log"; exit 1; }
  echo "$variant build ($dir, -DSPARSA_NATIVE=$flag): $(grep -o 'CPU target .*' "$dir/run_cpu-cmake.log"), $(($(date +%s) - start)) s"
done

# [SECTION] the engine step: bench_cpu, native against portable
if [ "$step" != content ]; then
args=()
if [ $quick = 1 ]; then args=(--max-n 16384 --d 64 --runs 1 --max-gflop 5 --out "$NATIVE/cpu-quick.md"); fi
shown="bench/run_cpu.sh"
[ "$step" = all ] || shown+=" --step $step"
[ $quick = 0 ] || shown+=" --quick"
[ ${#extra[@]} -eq 0 ] || shown+=" -- ${extra[*]}"
ran=("$NATIVE/bench/bench_cpu" --baseline "$PORTABLE/bench/bench_cpu" "${args[@]}" "${extra[@]}")
how="\`$shown\` (Release builds: $PORTABLE with -DSPARSA_NATIVE=OFF, $NATIVE with -DSPARSA_NATIVE=ON; then \`${ran[*]}\`)"
start=$(date +%s)
"${ran[@]}" --command "$how" >/dev/null
echo "bench_cpu, both builds: $(($(date +%s) - start)) s"
fi

# [SECTION] the content step: bench_content_cpu, native
if [ "$step" != engine ]; then
  args=()
  if [ $quick = 1 ]; then args=(--max-n 16384 --d 64 --runs 1 --out "$NATIVE/content-cpu-quick.md"); fi
  shown="bench/run_cpu.sh"
  [ "$step" = all ] || shown+=" --step $step"
  [ $quick = 0 ] || shown+=" --quick"
  [ ${#extra[@]} -eq 0 ] || shown+=" -- ${extra[*]}"
  ran=("$NATIVE/bench/bench_content_cpu" "${args[@]}" "${extra[@]}")
  how="\`$shown\` (Release build $NATIVE with -DSPARSA_NATIVE=ON; then \`${ran[*]}\`)"
  start=$(date +%s)
  "${ran[@]}" --command "$how" >/dev/null
  echo "bench_content_cpu: $(($(date +%s) - start)) s"
fi
