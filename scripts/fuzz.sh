#!/usr/bin/env bash
# Builds the parser fuzzer with clang (libFuzzer, AddressSanitizer, UndefinedBehaviorSanitizer)
# and runs it for SECONDS (default 60) on a corpus seeded with the examples and golden cases.
# Exits non-zero on any crash; the crashing input is saved under build-fuzz/crashes/.
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

command -v clang++ >/dev/null || { echo "fuzz: clang++ is missing (scripts/setup.sh --tests installs it)" >&2; exit 1; }
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=clang++ \
  -DSPARSA_FUZZ=ON -DSPARSA_TESTS=OFF -DSPARSA_BENCH=OFF \
  -DCMAKE_CXX_FLAGS="-O1 -g -fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=all" >/dev/null
cmake --build build-fuzz -j "$(nproc 2>/dev/null || echo 2)" --target parser_fuzz

corpus=build-fuzz/corpus
mkdir -p "$corpus" build-fuzz/crashes
cp examples/patterns/*.pat tests/dsl/cases/*.pat "$corpus"/
echo "fuzz: running parser_fuzz for $seconds s"
log=build-fuzz/fuzz.log
set +e
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  build-fuzz/tests/fuzz/parser_fuzz "$corpus" -max_total_time="$seconds" -timeout=20 \
  -rss_limit_mb=4096 -max_len=4096 -print_final_stats=1 -artifact_prefix=build-fuzz/crashes/ >"$log" 2>&1
status=$?
set -e
grep -E "^#[0-9]+ +DONE|stat::number_of_executed_units" "$log" || true
if [ "$status" != 0 ]; then
  tail -n 60 "$log" >&2
  echo "fuzz: FAILED (exit $status); the input is in build-fuzz/crashes/, the log in $log" >&2
  exit 1
fi
echo "fuzz: no crash in $seconds s"
