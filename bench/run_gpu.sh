#!/usr/bin/env bash
# The GPU run of the CUDA engine in one command: build (engine only, no Boost), test against the
# CPU engine, compute-sanitizer (memcheck, racecheck) on the small tests, benchmark sparsa's
# kernels, then PyTorch SDPA (cuDNN, FlashAttention) and FlexAttention on the same masks
# (bench/gpu_compare.py), which writes bench/results/cuda-<gpu>.md.
#
#   bench/run_gpu.sh masks              # on a machine with dsl/ built (build-cuda/cli/sparsa):
#                                       #   compiles the benchmark and test masks to .benchmasks/
#   bench/run_gpu.sh [STEP...]          # on the GPU machine; steps: build test sanitize bench compare
#                                       #   (the default, in that order), compare_fwd then compare_grad
#                                       #   (compare in two calls: forward, then backward and forward +
#                                       #   backward; BWD_KERNELS: the backward kernels bench times,
#                                       #   default 3,5,0), carried, cli, bench_d64 and
#                                       #   compare_d64 (d = 64 on dense 16,384 and window 65,536:
#                                       #   bench/results/cuda-<gpu>-d64.md), crossover (kernels 15,
#                                       #   18 and 19 from short rows to long, for kernel 0's choice:
#                                       #   bench/results/cuda-<gpu>-crossover.md), ab (builds timed
#                                       #   in turn: AB_BUILDS="build-a build-b"; $LOGS/ab.md)
#   PROFILE="10:bigbird64-65536 10:dense-16384" bench/run_gpu.sh carried profile
#                                       # Nsight Compute (--set full, clocks as found) on one timed
#                                       #   launch of each kernel:mask; reports, the details page and
#                                       #   the per-SASS-line stall samples (CSV) in $LOGS/profile
#   PROFILE_BWD="6:dense-16384 6:bigbird64-65536" BUILD=build-cuda bench/run_gpu.sh profile_bwd
#                                       # the same for backward kernels (dK / dV pass, dQ pass, merges)
#   BUILD=build-D bench/run_gpu.sh content_sanitize content
#                                       # the content-based heads (lsh, anchors, FAVOR+:
#                                       #   engine/cuda/content/content_cuda.hpp) with carried binaries
#                                       #   tests/test_content_cuda and bench/bench_content_cuda:
#                                       #   memcheck on the small cases; tests, the benchmark
#                                       #   (CONTENT_ARGS for bench_content_cuda) and cuDNN dense /
#                                       #   causal in the same run: bench/results/content-cuda-<gpu>.md
#   BUILD=build-cuda bench/run_gpu.sh carried test sanitize cli bench compare
#                                       # the same with binaries built here and carried (step
#                                       #   `carried` instead of `build`: the GPU machine has no
#                                       #   Boost, so the sparsa CLI and test_cli come this way)
#
# Headers the GPU machine lacks (Eigen, nlohmann-json, Catch2) come from .deps/ (a prefix with
# include/ and the CMake package files, git-ignored), masks from .benchmasks/. Logs go to build-gpu/logs
# (or $LOGS).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD:-build-gpu}
LOGS=${LOGS:-$BUILD/logs}
MASKS=${MASKS:-.benchmasks}
mkdir -p "$LOGS"

# [SECTION] masks (run where dsl/ is built)
make_masks() {
    local sparsa=${SPARSA:-build-cuda/cli/sparsa} tmp
    tmp=$(mktemp -d)
    mkdir -p "$MASKS/bench" "$MASKS/test"
    printf 'block 64\nattend = dense\n' >"$tmp/dense.pat"
    printf 'block 64\ncausal\nattend = dense\n' >"$tmp/causal.pat"
    printf 'block 64\nattend = window(256)\n' >"$tmp/window256.pat"
    printf 'block 64\nattend = window(256) | global(first(64))\n' >"$tmp/longformer.pat"
    printf 'block 64\nattend = band(1) | global(first(2 * B)) | random(3, seed = 7)\n' >"$tmp/bigbird64.pat"
    printf 'block 64\nattend = random(n / B / 10, seed = 7)\n' >"$tmp/random10.pat"
    for n in 4096 16384; do
        "$sparsa" compile "$tmp/dense.pat" --n $n -o "$MASKS/bench/dense-$n.npz"
        "$sparsa" compile "$tmp/causal.pat" --n $n -o "$MASKS/bench/causal-$n.npz"
    done
    # the same attention on 128-token blocks: Flex's default tiles, one mask row per 128-row tile
    "$sparsa" compile "$tmp/dense.pat" --block 128 --n 16384 -o "$MASKS/bench/denseB128-16384.npz"
    "$sparsa" compile "$tmp/window256.pat" --block 128 --n 65536 -o "$MASKS/bench/window256B128-65536.npz"
    for n in 16384 65536; do
        for p in window256 bigbird64 random10; do "$sparsa" compile "$tmp/$p.pat" --n $n -o "$MASKS/bench/$p-$n.npz"; done
    done
    "$sparsa" compile "$tmp/longformer.pat" --n 65536 -o "$MASKS/bench/longformer-65536.npz"
    # n = 131,072 (the dense and causal files are 15-34 MB: compile them on the GPU machine with
    # the carried CLI, SPARSA=build-cuda/cli/sparsa, rather than carry them)
    for p in dense causal window256 bigbird64; do "$sparsa" compile "$tmp/$p.pat" --n 131072 -o "$MASKS/bench/$p-131072.npz"; done
    for f in examples/patterns/*.pat; do "$sparsa" compile "$f" --n 1000 -o "$MASKS/test/$(basename "$f" .pat).npz"; done
    # the crossover step's masks: rows of 9 to 129 blocks at 65,536 (windows), and dense from 4,096
    # (few thread blocks) to 32,768
    mkdir -p "$MASKS/crossover"
    for n in 4096 8192 32768; do "$sparsa" compile "$tmp/dense.pat" --n $n -o "$MASKS/crossover/dense-$n.npz"; done
    for w in 256 512 1024 2048 4096; do
        printf 'block 64\nattend = window(%d)\n' $w >"$tmp/w.pat"
        "$sparsa" compile "$tmp/w.pat" --n 65536 -o "$MASKS/crossover/window$w-65536.npz"
    done
    rm -rf "$tmp"
    du -sh "$MASKS"
}

# [SECTION] steps on the GPU machine
step_build() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPARSA_ENGINE_ONLY=ON -DSPARSA_NATIVE=OFF \
        -DCMAKE_PREFIX_PATH="$ROOT/.deps" >"$LOGS/cmake.log" 2>&1 || { tail -30 "$LOGS/cmake.log"; exit 1; }
    ninja -C "$BUILD" test_cuda_attention bench_cuda >"$LOGS/build.log" 2>&1 || { tail -40 "$LOGS/build.log"; exit 1; }
    echo "build: ok"
}

step_carried() {   # binaries built elsewhere (BUILD=build-cuda, the paths carried)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    for f in tests/test_cuda_attention bench/bench_cuda cli/sparsa tests/cli/test_cli; do
        [[ -x $BUILD/$f ]] || { echo "carried: $BUILD/$f is missing (carry it)"; exit 1; }
    done
    # sparsa loads its CUDA engine from this module beside it (cli/cuda_module.hpp), and
    # test_cli loads it too: without it, --engine cuda says it cannot be loaded.
    [[ -f $BUILD/cli/libsparsa_cli_cuda.so ]] || { echo "carried: $BUILD/cli/libsparsa_cli_cuda.so is missing (carry it beside cli/sparsa)"; exit 1; }
    echo "carried: ok"
}

# SPARSA_SOURCE_DIR: the tree the tests read examples/patterns from, this one (a carried binary
# has the path of the tree it was built in compiled in, which this machine may not have).
step_test() {
    SPARSA_SOURCE_DIR=$ROOT SPARSA_CUDA_TEST_MASKS=$ROOT/$MASKS/test "$BUILD/tests/test_cuda_attention" >"$LOGS/test.log" 2>&1 \
        || { tail -60 "$LOGS/test.log"; exit 1; }
    tail -3 "$LOGS/test.log"
}

step_sanitize() {
    for tool in memcheck racecheck; do
        SPARSA_SOURCE_DIR=$ROOT compute-sanitizer --tool $tool --error-exitcode 3 "$BUILD/tests/test_cuda_attention" "[small]" \
            >"$LOGS/sanitize-$tool.log" 2>&1 || { tail -40 "$LOGS/sanitize-$tool.log"; exit 1; }
        echo "compute-sanitizer $tool: $(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$LOGS/sanitize-$tool.log" | tr '\n' ' ')"
    done
}

# sparsa run --engine cuda as a user runs it, and the CLI's CUDA tests (carried binaries only:
# `build` here makes no CLI, which needs Boost). test_cli has the
# build machine's paths compiled in (SPARSA_CLI, SPARSA_SOURCE_DIR): link them to this tree.
step_cli() {
    local want
    want=$(grep -a -o -m1 "/[-_./a-zA-Z0-9]*/examples/patterns/" "$BUILD/tests/cli/test_cli" | head -1 | sed 's|/examples/patterns/$||') || true
    if [[ -n $want && $want != "$ROOT" && ! -e $want ]]; then mkdir -p "$(dirname "$want")" && ln -s "$ROOT" "$want"; fi
    { "$BUILD/cli/sparsa" run examples/patterns/bigbird.pat --n 65536 --d 128 --engine cuda
      "$BUILD/cli/sparsa" run examples/patterns/bigbird.pat --n 4096 --d 128 --engine cuda --check; } 2>&1 | tee "$LOGS/cli.log"
    "$BUILD/tests/cli/test_cli" "[cuda]" >"$LOGS/test_cli.log" 2>&1 || { tail -60 "$LOGS/test_cli.log"; exit 1; }
    tail -3 "$LOGS/test_cli.log"
}

bench_files() { ls "$MASKS"/bench/*.npz | sort -t- -k2 -n; }

step_bench() {
    "$BUILD/bench/bench_cuda" $(bench_files) --heads 16 --d 128 --dtype bf16 --kernels ${KERNELS:-4,5,6,7,8,9,10,11,12,13,14,15,0} \
        --bwd-kernels ${BWD_KERNELS:-3,5,0} --csv "$LOGS/sparsa.csv" | tee "$LOGS/bench.log"
}

step_compare() {
    PYTHONUNBUFFERED=1 python3 bench/gpu_compare.py $(bench_files) --heads 16 --d 128 --sparsa-csv "$LOGS/sparsa.csv" \
        --command "bench/run_gpu.sh ${STEPS[*]}" --out-dir bench/results --copy-to "$LOGS" 2>&1 | tee "$LOGS/compare.log"
}

# compare in two GPU-machine calls (each under 10 minutes): the forward to $LOGS only, then the
# backward and forward + backward joined with it into bench/results/cuda-<gpu>.md (LOGS must
# survive between the calls: the same warm machine, or the files carried back)
step_compare_fwd() {
    PYTHONUNBUFFERED=1 python3 bench/gpu_compare.py $(bench_files) --heads 16 --d 128 --sparsa-csv "$LOGS/sparsa.csv" --passes fwd \
        --command "bench/run_gpu.sh ${STEPS[*]}" --out-dir "$LOGS" --copy-to "$LOGS" 2>&1 | tee "$LOGS/compare-fwd.log"
}
step_compare_grad() {
    local fwd
    fwd=$(ls "$LOGS"/cuda-*-fwd.json 2>/dev/null | grep -v -- -d64- | head -1 || true)
    [[ -n $fwd ]] || { echo "compare_grad: no $LOGS/cuda-<gpu>-fwd.json (run compare_fwd first with the same LOGS)"; exit 1; }
    PYTHONUNBUFFERED=1 python3 bench/gpu_compare.py $(bench_files) --heads 16 --d 128 --sparsa-csv "$LOGS/sparsa.csv" --passes bwd,fwdbwd \
        --merge "$fwd" --command "bench/run_gpu.sh ${STEPS[*]}" --out-dir bench/results --copy-to "$LOGS" 2>&1 | tee "$LOGS/compare-grad.log"
}

# [SECTION] content-based heads (issue 14)
content_binaries() {
    for f in tests/test_content_cuda bench/bench_content_cuda; do
        [[ -x $BUILD/$f ]] || { echo "content: $BUILD/$f is missing (build it, strip it and carry it)"; exit 1; }
    done
}

step_content_sanitize() {
    content_binaries
    compute-sanitizer --tool memcheck --error-exitcode 3 "$BUILD/tests/test_content_cuda" "[small]" \
        >"$LOGS/sanitize-content.log" 2>&1 || { tail -40 "$LOGS/sanitize-content.log"; exit 1; }
    echo "compute-sanitizer memcheck (content): $(grep -h 'ERROR SUMMARY' "$LOGS/sanitize-content.log")"
}

step_content() {
    content_binaries
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$BUILD/tests/test_content_cuda" >"$LOGS/test-content.log" 2>&1 || { tail -60 "$LOGS/test-content.log"; exit 1; }
    tail -3 "$LOGS/test-content.log"
    # shellcheck disable=SC2086
    "$BUILD/bench/bench_content_cuda" --csv "$LOGS/content.csv" ${CONTENT_ARGS:-} | tee "$LOGS/bench-content.log"
    PYTHONUNBUFFERED=1 python3 bench/gpu_compare.py --content-csv "$LOGS/content.csv" --heads 16 \
        --command "bench/run_gpu.sh ${STEPS[*]}" --out-dir bench/results --copy-to "$LOGS" 2>&1 | tee "$LOGS/compare-content.log"
}

d64_files() { ls "$MASKS/bench/dense-16384.npz" "$MASKS/bench/window256-65536.npz"; }

step_bench_d64() {
    "$BUILD/bench/bench_cuda" $(d64_files) --heads 16 --d 64 --dtype bf16 --kernels ${KERNELS_D64:-7,9,10,11,12,13,14,15,0} \
        --bwd-kernels ${BWD_KERNELS_D64:-3,5,0} --csv "$LOGS/sparsa-d64.csv" | tee "$LOGS/bench-d64.log"
}

step_compare_d64() {
    PYTHONUNBUFFERED=1 python3 bench/gpu_compare.py $(d64_files) --heads 16 --d 64 --sparsa-csv "$LOGS/sparsa-d64.csv" \
        --command "bench/run_gpu.sh ${STEPS[*]}" --out-dir bench/results --suffix=-d64 --copy-to "$LOGS" 2>&1 \
        | tee "$LOGS/compare-d64.log"
}

# Two or more builds of the engine timed in turn on the same masks (AB_BUILDS: build folders, each
# with bench/bench_cuda; AB_ROUNDS rounds of all of them, 2 by default; AB_KERNELS 15,18,19 (may be
# empty), AB_BWD_KERNELS none by default (backward kernels, rows "bwdN"); AB_MASKS:
# names in $MASKS/bench, dense-16384 causal-16384 window256-65536 bigbird64-65536), so that a change
# to a kernel is judged against the code before it on one machine in one call, interleaved to spread
# the machine's drift over both. Writes $LOGS/ab-<build>-<round>.csv and $LOGS/ab.md: per mask and
# kernel, each build's medians of every round.
step_ab() {
    local builds=(${AB_BUILDS:?AB_BUILDS=\"build-a build-b\" names the builds to compare}) masks=() r b
    for m in ${AB_MASKS:-dense-16384 causal-16384 window256-65536 bigbird64-65536}; do masks+=("$MASKS/bench/$m.npz"); done
    for b in "${builds[@]}"; do [[ -x $b/bench/bench_cuda ]] || { echo "ab: $b/bench/bench_cuda is missing"; exit 1; }; done
    for ((r = 1; r <= ${AB_ROUNDS:-2}; ++r)); do
        for b in "${builds[@]}"; do
            "$b/bench/bench_cuda" "${masks[@]}" --heads 16 --d 128 --dtype bf16 --kernels "${AB_KERNELS-15,18,19}" \
                --bwd-kernels "${AB_BWD_KERNELS:-}" --runs 10 \
                --csv "$LOGS/ab-$(basename "$b")-$r.csv" >"$LOGS/ab-$(basename "$b")-$r.log" 2>&1 \
                || { tail -20 "$LOGS/ab-$(basename "$b")-$r.log"; exit 1; }
            echo "ab: $(basename "$b") round $r done"
        done
    done
    python3 - "$LOGS" "${builds[@]}" <<'PY' | tee "$LOGS/ab.md"
import csv, glob, os, sys
logs, builds = sys.argv[1], [os.path.basename(b) for b in sys.argv[2:]]
rows = {}
for b in builds:
    for path in sorted(glob.glob(os.path.join(logs, f"ab-{b}-*.csv"))):
        for row in csv.DictReader(open(path)):
            rows.setdefault((row["mask"], row["kernel"]), {}).setdefault(b, []).append(float(row["median_ms"]))
print("| mask | kernel | " + " | ".join(builds) + " |")
print("|---|---|" + "---|" * len(builds))
for (mask, kernel), by in rows.items():
    print(f"| {mask} | {kernel} | " + " | ".join(", ".join(f"{t:.3f}" for t in by.get(b, [])) for b in builds) + " |")
PY
}

# Where kernel 18 (128-row tiles, 128 keys a step, warp-specialized) or 19 (18 persistent) overtakes
# 15 (64-row tiles, three blocks an SM), for kernel 0's choice: all three on windows of 256 to 4,096 at 65,536 (rows of 9
# to 129 kept blocks), dense from 4,096 (few thread blocks) to 32,768, and the bench step's dense
# and causal 16,384. Writes bench/results/cuda-<gpu>-crossover.md (the command, the date, the
# table) and $LOGS/crossover.csv.
step_crossover() {
    local gpu out files
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
    # the GPU's name as gpu_compare.py writes it in file names (lower case, other runs of characters as -)
    out=bench/results/cuda-$(echo "$gpu" | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')-crossover.md
    files=$(ls "$MASKS"/crossover/*.npz "$MASKS"/bench/dense-16384.npz "$MASKS"/bench/causal-16384.npz | sort -t- -k2 -n)
    # shellcheck disable=SC2086
    "$BUILD/bench/bench_cuda" $files --heads 16 --d 128 --dtype bf16 --kernels ${KERNELS_CROSSOVER:-15,18,19,0} --runs 10 \
        --csv "$LOGS/crossover.csv" >"$LOGS/crossover.log" 2>&1 || { tail -20 "$LOGS/crossover.log"; exit 1; }
    { echo "# Kernels 15, 18 and 19 from short rows to long on $gpu"
      echo
      echo "Command: \`bench/run_gpu.sh crossover\` ($(date -u '+%Y-%m-%d %H:%M UTC'), driver" \
           "$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1), binary $BUILD/bench/bench_cuda):" \
           "masks from \`bench/run_gpu.sh masks\`, bf16, d = 128, 16 heads, batch 1; medians of 10 runs;" \
           "a kernel marked (auto) is kernel 0's choice."
      echo
      cat "$LOGS/crossover.log"; } >"$out"
    cat "$out"
}

# Nsight Compute (--set full, clocks as found) on one launch of a kernel on a mask: pass fwd (forward
# kernel N; bench_cuda launches a warm-up, one sizing run, then --runs timed runs, each the kernel
# and, when the mask has split rows, attn_combine: skip four launches, profile the next two) or bwd
# (backward kernel N, no forward timed: its dK / dV pass, its dQ pass and any merge of split rows).
profile_run() {
    local pass=$1 kernel=$2 mask=$3 out regex skip count args
    if [[ $pass == fwd ]]; then
        out=$LOGS/profile/k$kernel-$mask regex="attn_fwd_kernel${kernel}([^0-9]|$)|attn_combine" skip=4 count=2
        args=(--kernels "$kernel")
    else
        out=$LOGS/profile/bwd$kernel-$mask regex="attn_bwd_kernel${kernel}_|attn_bwd_combine" skip=0 count=4
        args=(--kernels "" --bwd-kernels "$kernel" --budget-ms 1)
    fi
    ncu --clock-control none --set full --import-source no -k "regex:$regex" --launch-skip $skip --launch-count $count -f -o "$out" \
        "$BUILD/bench/bench_cuda" "$MASKS/bench/$mask.npz" --heads 16 --d 128 --dtype bf16 "${args[@]}" --runs 3 \
        >"$out.log" 2>&1 || { tail -20 "$out.log"; exit 1; }
    ncu -i "$out.ncu-rep" --page details >"$out.txt"
    ncu -i "$out.ncu-rep" --page source --print-source sass --csv >"$out-sass.csv"
    echo "profile $pass$kernel $mask: $(grep -E '^  [a-z_]+.*\(|^ +Duration' "$out.txt" | sed -E 's/^ +//; s/\(.*//' | tr -s ' ' | paste -sd ' ')"
}

step_profile() {
    local item
    mkdir -p "$LOGS/profile"
    for item in ${PROFILE:?PROFILE=\"kernel:mask ...\" names what to profile}; do profile_run fwd "${item%%:*}" "${item#*:}"; done
}

step_profile_bwd() {
    local item
    mkdir -p "$LOGS/profile"
    for item in ${PROFILE_BWD:?PROFILE_BWD=\"kernel:mask ...\" names what to profile}; do profile_run bwd "${item%%:*}" "${item#*:}"; done
}

if [[ ${1:-} == masks ]]; then make_masks; exit 0; fi
STEPS=("$@")
[[ ${#STEPS[@]} -eq 0 ]] && STEPS=(build test sanitize bench compare)
for s in "${STEPS[@]}"; do
    start=$(date +%s)
    "step_$s"
    echo "[$s: $(($(date +%s) - start)) s]"
done
