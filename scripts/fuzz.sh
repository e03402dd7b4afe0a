#!/usr/bin/env bash
# Builds the fuzz targets with clang (libFuzzer, AddressSanitizer, UndefinedBehaviorSanitizer)
# and runs each for a share of SECONDS (default 60): the total is split evenly over the three
# targets, one after the other (60 -> 20 s each), so CI's fuzz time stays SECONDS plus the
# build. SECONDS = 0 skips fuzzing (and the build).
#   parser_fuzz  the pattern language (tests/fuzz/parser_fuzz.cpp)
#   npy_fuzz     the .npy reader (io/npy.hpp)
#   npz_fuzz     the .npz reader and the mask file loader (io/npz.hpp, io/mask_io.hpp)
# Each starts from its committed corpus tests/fuzz/corpus/TARGET/ (the long run's, minimised:
# scripts/fuzz-long.sh) plus the examples, copied into build-fuzz/corpus/TARGET/. Exits non-zero
# on any crash, sanitizer report, leak or timeout; the input is saved under build-fuzz/crashes/.
#   scripts/fuzz.sh [SECONDS]
#   scripts/fuzz.sh --build      only configure and build the targets (scripts/fuzz-long.sh)
# Sourced with --lib it only defines the functions below.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fuzz_targets=(parser npy npz)

fuzz_build() {
  command -v clang++ >/dev/null || { echo "fuzz: clang++ is missing (scripts/setup.sh --tests installs it)" >&2; exit 1; }
  local launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" \
    -DSPARSA_FUZZ=ON -DSPARSA_TESTS=OFF -DSPARSA_BENCH=OFF -DSPARSA_CUDA=OFF -DSPARSA_PYTHON=OFF \
    -DSPARSA_VIEWER=OFF \
    -DCMAKE_CXX_FLAGS="-O1 -g -fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=all" >/dev/null
  cmake --build build-fuzz -j "$(nproc 2>/dev/null || echo 2)" --target parser_fuzz npy_fuzz npz_fuzz
}

# fuzz_seed TARGET DIR: the committed corpus and the examples, into DIR.
fuzz_seed() {
  local target=$1 dir=$2
  mkdir -p "$dir"
  cp tests/fuzz/corpus/"$target"/* "$dir"/ 2>/dev/null || true
  case "$target" in
    parser) cp examples/patterns/*.pat tests/dsl/cases/*.pat "$dir"/ ;;
    npz) cp tests/io/data/*.npz "$dir"/ ;;
    npy) ;;
  esac
}

# fuzz_options TARGET: libFuzzer flags of TARGET (input size, dictionary) and of every run.
# Scripts are short; .npz files from `sparsa compile` at small n are a few KB to 20 KB.
fuzz_options() {
  local max_len=65536
  [ "$1" = parser ] && max_len=4096
  echo "-max_len=$max_len -dict=tests/fuzz/$1.dict -timeout=30 -rss_limit_mb=1024 -print_final_stats=1"
}

# The sanitizers stop at the first report (-fno-sanitize-recover=all), leaks included.
export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

[ "${1:-}" = --lib ] && return 0
if [ "${1:-}" = --build ]; then
  fuzz_build
  exit 0
fi

seconds="${1:-60}"
[ "$seconds" = 0 ] && { echo "fuzz: skipped (SECONDS = 0)"; exit 0; }
share=$(( seconds / ${#fuzz_targets[@]} ))
[ "$share" -lt 1 ] && share=1
fuzz_build
mkdir -p build-fuzz/crashes
failed=0
for target in "${fuzz_targets[@]}"; do
  corpus=build-fuzz/corpus/$target
  fuzz_seed "$target" "$corpus"
  log=build-fuzz/fuzz-$target.log
  echo "fuzz: running ${target}_fuzz for $share s"
  set +e
  # shellcheck disable=SC2046  # the options are words
  build-fuzz/tests/fuzz/"${target}"_fuzz "$corpus" -max_total_time="$share" $(fuzz_options "$target") \
    -artifact_prefix=build-fuzz/crashes/"$target"- >"$log" 2>&1
  status=$?
  set -e
  grep -E "^#[0-9]+[[:space:]]+DONE" "$log" || true
  if [ "$status" != 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz: ${target}_fuzz FAILED (exit $status); the input is in build-fuzz/crashes/, the log in $log" >&2
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 1
echo "fuzz: no crash in $seconds s ($share s per target: ${fuzz_targets[*]})"
