#!/usr/bin/env bash
# Installs the Debian packages sparsa needs when they are missing, then configures and builds.
#   scripts/setup.sh [--tests] [BUILD_DIR] [-- extra cmake args]
# --tests also installs what the tests need (clang's fuzzing runtime, numpy, Chromium for the page).
# The build targets this machine's CPU (-march=native); for binaries carried to another machine:
#   scripts/setup.sh build-portable -- -DSPARSA_NATIVE=OFF
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
build_dir=build
cmake_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tests) with_tests=1 ;;
    --) shift; cmake_args=("$@"); break ;;
    *) build_dir="$1" ;;
  esac
  shift
done

packages=(cmake g++ make libboost-dev libeigen3-dev nlohmann-json3-dev catch2 libstb-dev python3-numpy)
packages+=(pkg-config libimgui-dev libglfw3-dev)  # the viewer sparsa-view (viz/)
packages+=(pybind11-dev python3-dev)  # import sparsa (python/), for Debian's /usr/bin/python3
packages+=(emscripten)  # the page (web/ -> build/web/index.html): dsl/ and analysis/ in WebAssembly
if [ "$with_tests" = 1 ]; then
  packages+=(clang libclang-rt-14-dev)
  packages+=(xvfb xauth libgl1-mesa-dri)  # viewer screenshot tests: a virtual display, Mesa's software OpenGL
  packages+=(python3-pytest python3-matplotlib python3-ipykernel python3-nbconvert jupyter-nbconvert)  # Python tests, notebooks
  packages+=(chromium)  # the page's test (tests/web): headless Chromium
  packages+=(python3-torch)  # sparsa.torch's tests (tests/python/test_torch*.py): Debian's torch, CPU only
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

jobs=$(nproc 2>/dev/null || echo 2)
launcher=()
if command -v ccache >/dev/null; then  # rebuilds in other build folders reuse what was compiled
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" "${cmake_args[@]}" >/dev/null
cmake --build "$build_dir" -j "$jobs"
