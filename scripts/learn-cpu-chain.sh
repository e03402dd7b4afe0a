#!/usr/bin/env bash
# Issue 16's CPU chain in one command: set up and build (scripts/setup.sh), then train three small
# causal teachers at n = 256 (2 layers x 1 head of width 64, d = 64, MLP 128, no positions, no
# shaping; each until 80% validation accuracy or 4 minutes) and measure them at n = 4,096 with every
# row of `sparsa learn ruler` (dense, the trivial baselines, the selectors, the families), on small
# streams so that it ends in under 30 minutes on this repository's 2-core machine (22.6 minutes after
# the build: bench/results/learn-ruler-cpu-chain/README.md). The figures at full scale come from the
# GPU chain (python/run_gpu_ruler.sh) and the longer CPU runs in docs/learn.md.
#   scripts/learn-cpu-chain.sh [OUT]      (default build/learn-cpu-chain)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/learn-cpu-chain}"

scripts/setup.sh build
exec build/cli/sparsa learn ruler --seeds 1,2,3 --train-n 256 --n 4096 --d 64 --heads 1 --mlp 128 \
  --steps 4000 --max-minutes 4 --stop-accuracy 0.8 --test-inputs 40 --validation-inputs 10 \
  --indexer-inputs 16 --pooled-gate-inputs 32 --search-inputs 16 -o "$out"
