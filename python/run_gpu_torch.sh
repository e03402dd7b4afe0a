#!/usr/bin/env bash
# sparsa.torch on the GPU machine in one command: build the Python module there with the CUDA
# engine (that machine's Python 3.12 and torch; Boost, Eigen, nlohmann-json and stb come from .deps,
# which python/gpu_deps.sh fills here), run tests/python/test_torch_cuda.py (and the CPU tests of
# sparsa.torch, on that torch), then train examples/torch/train_tiny_lm.py on the GPU three ways
# (SDPA dense, sparsa under a dense script, sparsa under a sparse script) and draw the loss curves.
#
#   python/gpu_deps.sh                       # here, once: fills .deps (git-ignored; carry it)
#   python/run_gpu_torch.sh [STEP...]        # there; steps: build test train (the default, in
#                                            #   that order); `torch` is all three; `seeds`: the
#                                            #   train step's SDPA and dense-script runs over SEEDS
#                                            #   (1,2,3,4,5), one after another, then
#                                            #   examples/torch/seeds_summary.py: seeds.md, seeds.json,
#                                            #   seeds.png and seeds.tgz (every run's CSV)
#
# Results go to $OUT (or $BUILD/out), flat, at most 8 files: torch-gpu.log (what every step
# printed), build.log, test.log, loss-sdpa.csv, loss-dense.csv, loss-sparse.csv, loss_cuda.png
# (where matplotlib is there; else examples/torch/plot_loss.py draws it from the CSVs).
# TRAIN_ARGS adds to train_tiny_lm.py's arguments (e.g. TRAIN_ARGS="--steps 500"); PYTHON picks
# another Python (default: python3 on PATH), PYBIND11_DIR pybind11's CMake folder (default: pip's).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD:-build-torch-gpu}
RESULTS=${OUT:-$BUILD/out}
PY=${PYTHON:-$(command -v python3)}
mkdir -p "$RESULTS"
LOG=$RESULTS/torch-gpu.log
exec > >(tee -a "$LOG") 2>&1

fail() { echo "run_gpu_torch.sh: $*"; exit 1; }
elapsed() { echo "[$(( SECONDS ))s] $*"; }

# [SECTION] build: only the module (_sparsa) and what it links, with the CUDA engine
step_build() {
    [[ -f .deps/include/boost/version.hpp && -d .deps/share/eigen3 ]] \
        || fail ".deps is missing or incomplete: run python/gpu_deps.sh where Debian's packages are, and carry .deps"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    "$PY" -c 'import sys, torch, numpy; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "numpy", numpy.__version__)' \
        || fail "$PY lacks torch or numpy"
    local pybind11_dir=${PYBIND11_DIR:-}   # default: pip's pybind11 for this Python
    [[ -n $pybind11_dir ]] || pybind11_dir=$("$PY" -m pybind11 --cmakedir) || fail "$PY has no pybind11 (pip install pybind11)"
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPARSA_CUDA=ON -DSPARSA_NATIVE=OFF \
        -DSPARSA_TESTS=OFF -DSPARSA_BENCH=OFF -DSPARSA_WEB=OFF -DSPARSA_VIEWER=OFF \
        -DCMAKE_PREFIX_PATH="$ROOT/.deps" -DCMAKE_CXX_FLAGS="-isystem $ROOT/.deps/include" \
        -DCMAKE_CUDA_FLAGS="--threads 4" \
        -DPython3_EXECUTABLE="$PY" -Dpybind11_DIR="$pybind11_dir" >"$RESULTS/build.log" 2>&1 \
        || { tail -40 "$RESULTS/build.log"; fail "cmake failed (all of it in build.log)"; }
    ninja -C "$BUILD" -j16 _sparsa >>"$RESULTS/build.log" 2>&1 \
        || { grep -B2 -A12 -m3 "error" "$RESULTS/build.log" | head -80 || true; fail "the build failed (build.log)"; }
    PYTHONPATH=$ROOT/$BUILD/python "$PY" -c 'import sparsa; print("sparsa: cuda_built", sparsa.cuda_built, sparsa.cuda_available())'
    elapsed "build: ok"
}

# [SECTION] test: the GPU tests, then the CPU tests of sparsa.torch on this torch (custom op, opcheck)
step_test() {
    local pythonpath=$ROOT/$BUILD/python
    # Debian's pytest from .deps where this Python has none (pure Python; gpu_deps.sh)
    "$PY" -c 'import pytest' 2>/dev/null || pythonpath=$pythonpath:$ROOT/.deps/python
    local rc=0
    (cd tests/python && PYTHONPATH=$pythonpath SPARSA_SOURCE_DIR=$ROOT PYTHONDONTWRITEBYTECODE=1 \
        "$PY" -m pytest -p no:cacheprovider -s -v -rs test_torch_cuda.py test_torch.py) >"$RESULTS/test.log" 2>&1 || rc=$?
    grep -E "relative error|explain|PASSED|FAILED|ERROR|SKIPPED|passed|failed" "$RESULTS/test.log" | tail -80 || true
    [[ $rc == 0 ]] || { grep -A40 "^_____" "$RESULTS/test.log" | head -150 || true; fail "tests failed (test.log)"; }
    elapsed "test: ok"
}

# [SECTION] train: the example's loss curves on the GPU, the same seed (weights, batches) for all three
# train_tiny_lm.py's run on the GPU (examples/torch/README.md, "On a GPU"), but for its seed.
TRAIN_COMMON=(--device cuda --dim 256 --heads 4 --layers 2 --keys 16 --pairs 8 --queries 8 --filler 480
              --block 64 --batch 64 --steps 1500 --lr 1e-3)

step_train() {
    local common=("${TRAIN_COMMON[@]}" --seed 1)
    # shellcheck disable=SC2206
    local extra=(${TRAIN_ARGS:-})
    export PYTHONPATH=$ROOT/$BUILD/python PYTHONUNBUFFERED=1
    "$PY" examples/torch/train_tiny_lm.py --attention sdpa "${common[@]}" "${extra[@]}" --csv "$RESULTS/loss-sdpa.csv"
    elapsed "train: sdpa"
    "$PY" examples/torch/train_tiny_lm.py --pattern examples/torch/dense_causal.pat "${common[@]}" "${extra[@]}" \
        --csv "$RESULTS/loss-dense.csv"
    elapsed "train: sparsa, dense_causal.pat"
    "$PY" examples/torch/train_tiny_lm.py --pattern examples/torch/recall_sparse.pat "${common[@]}" "${extra[@]}" \
        --csv "$RESULTS/loss-sparse.csv"
    elapsed "train: sparsa, recall_sparse.pat"
    if "$PY" -c 'import matplotlib' 2>/dev/null; then
        "$PY" examples/torch/plot_loss.py "$RESULTS/loss-sdpa.csv" "$RESULTS/loss-dense.csv" "$RESULTS/loss-sparse.csv" \
            -o "$RESULTS/loss_cuda.png" --title "train_tiny_lm.py on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), bf16" \
            --labels "SDPA dense" "sparsa, dense_causal.pat" "sparsa, recall_sparse.pat"
    else
        echo "train: no matplotlib for $PY; draw the PNG from the CSVs elsewhere with examples/torch/plot_loss.py"
    fi
}

# [SECTION] seeds: SDPA against sparsa under the dense script over several seeds, the spread between
# seeds beside the difference between the two (examples/torch/README.md, "Over seeds")
step_seeds() {
    local common=("${TRAIN_COMMON[@]}")
    # shellcheck disable=SC2206
    local extra=(${TRAIN_ARGS:-}) seed sdpa=() dense=()
    export PYTHONPATH=$ROOT/$BUILD/python PYTHONUNBUFFERED=1
    mkdir -p "$RESULTS/seeds"
    local seeds=${SEEDS:-1,2,3,4,5}
    for seed in ${seeds//,/ }; do
        "$PY" examples/torch/train_tiny_lm.py --attention sdpa "${common[@]}" --seed "$seed" "${extra[@]}" \
            --csv "$RESULTS/seeds/sdpa-seed$seed.csv" | tail -1
        "$PY" examples/torch/train_tiny_lm.py --pattern examples/torch/dense_causal.pat "${common[@]}" --seed "$seed" "${extra[@]}" \
            --csv "$RESULTS/seeds/dense-seed$seed.csv" | tail -1
        sdpa+=("$RESULTS/seeds/sdpa-seed$seed.csv")
        dense+=("$RESULTS/seeds/dense-seed$seed.csv")
        elapsed "seeds: seed $seed"
    done
    "$PY" examples/torch/seeds_summary.py --group "SDPA dense" "${sdpa[@]}" --group "sparsa, dense_causal.pat" "${dense[@]}" \
        -o "$RESULTS/seeds"
    (cd "$RESULTS" && tar czf seeds.tgz seeds/*.csv && rm -r seeds)
}

steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(build test train)
for s in "${steps[@]}"; do
    case $s in
        build) step_build ;;
        test) step_test ;;
        train) step_train ;;
        torch) step_build; step_test; step_train ;;
        seeds) step_seeds ;;
        *) fail "unknown step '$s' (steps: build test train torch seeds)" ;;
    esac
done
