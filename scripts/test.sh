#!/usr/bin/env bash
# Sets up, builds with warnings as errors, and runs every test: the Catch2 and Python tests
# through ctest, then the fuzzers (scripts, .npy, .npz) for a bounded time (FUZZ_SECONDS in all,
# default 60, split evenly).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --tests build-test -- -DSPARSA_WERROR=ON
(cd build-test && ctest --output-on-failure -j "$(nproc 2>/dev/null || echo 2)")

if [ "${FUZZ_SECONDS:-60}" != 0 ]; then
  scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
fi
