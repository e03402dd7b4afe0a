#!/usr/bin/env bash
# Issue 16's GPU chain in one command, on the GPU machine: build the Python module there with the
# CUDA engine (python/run_gpu_torch.sh build), train one lab teacher per seed at a short length with
# sparsa.lab (examples/torch/train_lab_teacher.py: the default model, no positions, causal,
# unshaped), then measure them at length N with sparsa.ruler (python3 -m sparsa.ruler: dense, the
# trivial baselines, the selectors; report.md and report.json). docs/learn.md, "The evaluation in
# PyTorch", says what each row is.
#
#   python/gpu_deps.sh                          # here, once: fills .deps (git-ignored; carry it)
#   python/run_gpu_ruler.sh N [RULER ARGS...]   # there, e.g. python/run_gpu_ruler.sh 16384 --test-inputs 200
#
# RULER ARGS go to python3 -m sparsa.ruler (its --help; defaults: --densities 0.125 --block 64
# --test-inputs 100 --validation-inputs 20). Environment: SEEDS (1,2,3), TRAIN_N (256: where a teacher
# without positions learns fastest; docs/learn.md, "Rotary or no positions across lengths"),
# TRAIN_MINUTES (1.5 a seed at most; training stops earlier at --stop-accuracy 0.98), TRAIN_STEPS (10000:
# enough that the time, not the count, ends training on the H100; train_lab_teacher.py's own 3000 left
# one seed in three at 41% validation accuracy twice: bench/results/learn-ruler-gpu-nvidia-h100), TRAIN_ARGS (more
# options for train_lab_teacher.py), PARALLEL_TRAIN (1 on cuda: the seeds train side by side, each
# logging to train-seedS.log; 0 elsewhere: one after another), STEPS (which of build train ruler to run, default all three),
# TEACHERS (checkpoints to measure instead of training: comma-separated, or a .tgz of teacher-seed*.bin
# such as bench/results/ruler-gpu-teachers-nvidia-h100.tgz, with STEPS="build ruler"), BUILD (build-torch-gpu),
# PYTHON, DEVICE (cuda; cpu tries the steps here without a GPU, e.g. STEPS="train ruler" BUILD=build). Results go to $OUT (or $BUILD/out), flat (tar them: the lent GPU machine returns 8 files a call): ruler-gpu.log
# (everything printed), build.log, teacher-seedS.bin and train-seedS.log, report.md, report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[[ $# -ge 1 && $1 =~ ^[0-9]+$ ]] || { echo "run_gpu_ruler.sh: usage: python/run_gpu_ruler.sh N [RULER ARGS...] (N: the length to measure at)"; exit 2; }
N=$1
shift
export BUILD=${BUILD:-build-torch-gpu}
export OUT=${OUT:-$BUILD/out}
RESULTS=$OUT
PY=${PYTHON:-$(command -v python3)}
SEEDS=${SEEDS:-1,2,3}
TRAIN_N=${TRAIN_N:-256}
TRAIN_MINUTES=${TRAIN_MINUTES:-1.5}
TRAIN_STEPS=${TRAIN_STEPS:-10000}
DEVICE=${DEVICE:-cuda}
PARALLEL_TRAIN=${PARALLEL_TRAIN:-$([[ $DEVICE == cuda ]] && echo 1 || echo 0)}
mkdir -p "$RESULTS"
exec > >(tee -a "$RESULTS/ruler-gpu.log") 2>&1

fail() { echo "run_gpu_ruler.sh: $*"; exit 1; }
elapsed() { echo "[$(( SECONDS ))s] $*"; }
export PYTHONPATH=$ROOT/$BUILD/python PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

step_build() {
    python/run_gpu_torch.sh build >/dev/null || { tail -30 "$RESULTS/torch-gpu.log" 2>/dev/null; fail "the build failed (build.log)"; }
    rm -f "$RESULTS/torch-gpu.log"   # run_gpu_torch.sh's own log: its lines are in build.log
    "$PY" -c 'import sparsa, sparsa.ruler; assert sparsa.learn_built and sparsa.cuda_built; print("sparsa:", sparsa.cuda_device_name())' \
        || fail "the module lacks learn/ or the CUDA engine"
    elapsed "build: ok"
}

step_train() {
    local seed pids=()
    # shellcheck disable=SC2206
    local extra=(${TRAIN_ARGS:-})
    train_one() {
        "$PY" examples/torch/train_lab_teacher.py --device "$DEVICE" --n "$TRAIN_N" --seed "$1" --max-minutes "$TRAIN_MINUTES" --steps "$TRAIN_STEPS" \
            "${extra[@]}" -o "$RESULTS/teacher-seed$1.bin" > "$RESULTS/train-seed$1.log" 2>&1
    }
    if [[ $PARALLEL_TRAIN == 1 ]]; then   # the seeds side by side: a lab teacher's steps leave the GPU mostly idle
        for seed in ${SEEDS//,/ }; do train_one "$seed" & pids+=($!); done
        for pid in "${pids[@]}"; do wait "$pid" || true; done
    fi
    for seed in ${SEEDS//,/ }; do
        [[ $PARALLEL_TRAIN == 1 ]] || train_one "$seed" || true
        grep -E "teacher:|validation acc|stage|trained|wrote|rror" "$RESULTS/train-seed$seed.log" || true
        [[ -f $RESULTS/teacher-seed$seed.bin ]] || fail "seed $seed: no checkpoint written (train-seed$seed.log)"
        elapsed "train: seed $seed"
    done
}

step_ruler() {
    local teachers=${TEACHERS:-}
    if [[ $teachers == *.tgz ]]; then   # an archive of teacher-seed*.bin (bench/results/ruler-gpu-teachers-*.tgz)
        mkdir -p /tmp/ruler-teachers && tar xzf "$teachers" -C /tmp/ruler-teachers || fail "cannot unpack $teachers"
        teachers=$(find /tmp/ruler-teachers -name 'teacher-seed*.bin' | sort | paste -sd,)
        [[ -n $teachers ]] || fail "$TEACHERS holds no teacher-seed*.bin"
    fi
    if [[ -z $teachers ]]; then
        local seed
        for seed in ${SEEDS//,/ }; do teachers+=${teachers:+,}$RESULTS/teacher-seed$seed.bin; done
    fi
    [[ $DEVICE != cuda ]] || nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
    "$PY" -m sparsa.ruler --teachers "$teachers" --n "$N" --device "$DEVICE" "$@" -o "$RESULTS"
    elapsed "ruler: n = $N"
}

STEPS=${STEPS:-build train ruler}
for s in $STEPS; do
    case $s in
        build) step_build ;;
        train) step_train ;;
        ruler) step_ruler "$@" ;;
        *) fail "unknown step '$s' (build, train, ruler)" ;;
    esac
done
