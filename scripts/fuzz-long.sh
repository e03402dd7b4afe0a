#!/usr/bin/env bash
# The long fuzz run (issue 17): the three targets of scripts/fuzz.sh at once, each for SECONDS
# (default 3600) of wall clock, niced (nice -n 10: the machine is shared), each on its own corpus
# build-fuzz/long/corpus/TARGET/ seeded like scripts/fuzz.sh's. Logs: build-fuzz/long/TARGET.log
# (libFuzzer's), build-fuzz/long/TARGET.time (/usr/bin/time -v: wall and CPU time); crashing
# inputs: build-fuzz/long/crashes/; build-fuzz/long/summary.txt says when it ran and how each
# target ended. Exits non-zero when a target crashed or reported anything.
#   nohup scripts/fuzz-long.sh [SECONDS] > build-fuzz/long.out 2>&1 &
# Then record the result (bench/results/fuzz-*.md) and keep the corpus for CI's short run:
#   scripts/fuzz-long.sh --merge
# minimises each target's long-run corpus together with the committed one into a fresh
# tests/fuzz/corpus/TARGET/ with the binaries of the last build (libFuzzer -merge=1
# -use_counters=0: a file is kept only when it reaches a code edge no other kept file reaches;
# with hit counts as well the parser's would be ~1,200 files for the same edges, not ~300).
# Files named seed_* (hand-made: e.g. mask files in the current format) are always kept.
set -euo pipefail
# shellcheck source=scripts/fuzz.sh
source "$(dirname "${BASH_SOURCE[0]}")/fuzz.sh" --lib
long=build-fuzz/long

if [ "${1:-}" = --merge ]; then
  for target in "${fuzz_targets[@]}"; do
    fresh=$long/merged/$target
    rm -rf "$fresh" && mkdir -p "$fresh"
    # shellcheck disable=SC2046
    build-fuzz/tests/fuzz/"${target}"_fuzz -merge=1 -use_counters=0 "$fresh" tests/fuzz/corpus/"$target" "$long"/corpus/"$target" \
      $(fuzz_options "$target") >"$long/merge-$target.log" 2>&1 ||
      { tail -n 20 "$long/merge-$target.log" >&2; echo "fuzz-long: merging $target failed" >&2; exit 1; }
    # Hand-made seeds (seed_*: files in the current formats) stay whatever coverage they add.
    seeds=$long/seeds/$target
    rm -rf "$seeds" && mkdir -p "$seeds"
    find tests/fuzz/corpus/"$target" -maxdepth 1 -name 'seed_*' -exec cp {} "$seeds"/ \;
    rm -rf tests/fuzz/corpus/"$target" && mkdir -p tests/fuzz/corpus/"$target"
    cp "$fresh"/* tests/fuzz/corpus/"$target"/
    find "$seeds" -maxdepth 1 -name 'seed_*' -exec cp {} tests/fuzz/corpus/"$target"/ \;
    echo "fuzz-long: tests/fuzz/corpus/$target: $(find tests/fuzz/corpus/"$target" -type f | wc -l) files," \
         "$(du -sb tests/fuzz/corpus/"$target" | cut -f1) bytes"
  done
  exit 0
fi

seconds="${1:-3600}"
fuzz_build
# The run uses copies: build-fuzz may be rebuilt while it runs.
mkdir -p "$long/crashes" "$long/bin"
for target in "${fuzz_targets[@]}"; do cp build-fuzz/tests/fuzz/"${target}"_fuzz "$long/bin/"; done
summary=$long/summary.txt
{
  echo "started: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "seconds per target: $seconds (all three at once, nice -n 10)"
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
  echo "compiler: $(clang++ --version | head -1)"
  echo "source: commit $(git rev-parse --short HEAD), $(git status --short | grep -c .) changed or new files in the tree"
} >"$summary"
pids=()
for target in "${fuzz_targets[@]}"; do
  fuzz_seed "$target" "$long/corpus/$target"
  # shellcheck disable=SC2046
  nice -n 10 /usr/bin/time -v -o "$long/$target.time" \
    "$long/bin/${target}_fuzz" "$long/corpus/$target" -max_total_time="$seconds" \
    $(fuzz_options "$target") -artifact_prefix="$long/crashes/$target-" >"$long/$target.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!fuzz_targets[@]}"; do
  target=${fuzz_targets[$i]}
  status=0
  wait "${pids[$i]}" || status=$?
  reports=$(grep -cE "ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY: " "$long/$target.log" || true)
  echo "$target: exit $status, sanitizer/libFuzzer reports $reports, $(grep -E '^#[0-9]+[[:space:]]+DONE' "$long/$target.log" || echo 'no DONE line')" >>"$summary"
  [ "$status" = 0 ] && [ "$reports" = 0 ] || failed=1
done
echo "ended: $(date -u '+%Y-%m-%d %H:%M:%S UTC')" >>"$summary"
cat "$summary"
[ "$failed" = 0 ] || { echo "fuzz-long: a target crashed or reported; inputs in $long/crashes/" >&2; exit 1; }
