#!/usr/bin/env bash
# One lab teacher trained with PyTorch on the GPU machine, in one command: build the Python module
# there with the CUDA engine (python/run_gpu_torch.sh build), run tests/python/test_lab.py on that
# torch (the CPU checks against the C++ teacher, and the GPU forward against the CPU's), time a few
# training steps at length N with sparsa's attention and with SDPA (the time per step of each), then
# train one teacher at N with examples/torch/train_lab_teacher.py and save it where
# `sparsa learn ruler --teachers` reads it. docs/lab-torch.md says more.
#
#   python/gpu_deps.sh                             # here, once: fills .deps (git-ignored; carry it)
#   python/run_gpu_learn.sh N [TRAIN ARGS...]      # there, e.g. python/run_gpu_learn.sh 16384 --curriculum 4096
#
# TRAIN ARGS go to train_lab_teacher.py (its --help; the defaults are `sparsa learn teacher`'s).
# Environment: SEED (1), MINUTES (3: the most training takes, all --curriculum stages included; less
# when BUDGET (570 s: the GPU machine gives a command 600) would be passed, counting from the
# command's start, the build included), TIME_STEPS (6: steps timed per attention, 0: no timing), STEPS
# (which of build test time train to run, default all four in that order), BUILD (build-torch-gpu),
# PYTHON, PYBIND11_DIR (as run_gpu_torch.sh), DEVICE (cuda; cpu tries the steps here without a GPU). Results go to $OUT (or $BUILD/out): learn-gpu.log
# (everything printed), build.log, test-lab.log, teacher-nN-seedS.bin.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[[ $# -ge 1 && $1 =~ ^[0-9]+$ ]] || { echo "run_gpu_learn.sh: usage: python/run_gpu_learn.sh N [TRAIN ARGS...] (N: the length, 16 to 65536)"; exit 2; }
N=$1
shift
export BUILD=${BUILD:-build-torch-gpu}
export OUT=${OUT:-$BUILD/out}
RESULTS=$OUT
PY=${PYTHON:-$(command -v python3)}
SEED=${SEED:-1}
MINUTES=${MINUTES:-3}
TIME_STEPS=${TIME_STEPS:-6}
BUDGET=${BUDGET:-570}
DEVICE=${DEVICE:-cuda}
mkdir -p "$RESULTS"
LOG=$RESULTS/learn-gpu.log
exec > >(tee -a "$LOG") 2>&1

fail() { echo "run_gpu_learn.sh: $*"; exit 1; }
elapsed() { echo "[$(( SECONDS ))s] $*"; }
export PYTHONPATH=$ROOT/$BUILD/python PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# [SECTION] build: run_gpu_torch.sh's (the module with the CUDA engine; learn/ is in it)
step_build() {
    python/run_gpu_torch.sh build || fail "the build failed (build.log)"
    "$PY" -c 'import sparsa, sparsa.lab; assert sparsa.learn_built and sparsa.cuda_built' \
        || fail "the module lacks learn/ or the CUDA engine"
    elapsed "build: ok"
}

# [SECTION] test: test_lab.py on this torch (its CUDA case runs here); a failure is reported, training goes on
step_test() {
    local pythonpath=$PYTHONPATH
    "$PY" -c 'import pytest' 2>/dev/null || pythonpath=$pythonpath:$ROOT/.deps/python
    local rc=0
    (cd tests/python && PYTHONPATH=$pythonpath SPARSA_SOURCE_DIR=$ROOT \
        "$PY" -m pytest -p no:cacheprovider -v -s -rs test_lab.py) >"$RESULTS/test-lab.log" 2>&1 || rc=$?
    grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed" "$RESULTS/test-lab.log" | tail -30 || true
    if [[ $rc != 0 ]]; then
        grep -A30 "^_____" "$RESULTS/test-lab.log" | head -80 || true
        echo "test: FAILED (test-lab.log); training goes on"
    else
        elapsed "test: ok"
    fi
}

# [SECTION] time: TIME_STEPS steps at N with each attention, the same model and batches; the median step
step_time() {
    [[ $TIME_STEPS -gt 0 ]] || return 0
    local attention
    for attention in sparsa sdpa; do
        "$PY" examples/torch/train_lab_teacher.py --device "$DEVICE" --n "$N" --seed "$SEED" --attention "$attention" \
            --steps "$TIME_STEPS" --eval-every 1000000 --eval-sequences 2 --stop-accuracy 1.01 --quiet "$@" \
            -o "$RESULTS/.timing.bin" | grep -E "^(teacher|stage|n = )" \
            || fail "timing with --attention $attention failed"
        elapsed "time: $attention"
    done
    rm -f "$RESULTS/.timing.bin"
}

# [SECTION] train: one teacher at N, saved for sparsa learn ruler --teachers
step_train() {
    local file=$RESULTS/teacher-n$N-seed$SEED.bin
    # what the command has left (BUDGET seconds from its start, less a minute for the last validation and the save)
    local left=$(( BUDGET - SECONDS - 60 )) minutes
    (( left >= 30 )) || fail "train: ${left} s left of BUDGET = $BUDGET s: run it again with STEPS=train (the build is kept on a warm machine)"
    minutes=$(awk -v m="$MINUTES" -v l="$left" 'BEGIN { x = l / 60; if (m < x) x = m; printf "%.2f", x }')
    "$PY" examples/torch/train_lab_teacher.py --device "$DEVICE" --n "$N" --seed "$SEED" --max-minutes "$minutes" "$@" -o "$file" \
        || fail "training failed"
    elapsed "train: $file"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
steps=(${STEPS:-build test time train})
for s in "${steps[@]}"; do
    case $s in
        build) step_build ;;
        test) step_test ;;
        time) step_time "$@" ;;
        train) step_train "$@" ;;
        *) fail "unknown step '$s' (STEPS: build test time train)" ;;
    esac
done
