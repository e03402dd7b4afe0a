#!/usr/bin/env bash
# Fills .deps/ (git-ignored) with the headers and CMake package files that the GPU machine lacks,
# so that the Python module (python/, with dsl/, learn/ and the CUDA engine) builds there:
# python/run_gpu_torch.sh, and bench/run_gpu.sh's CMAKE_PREFIX_PATH, read it. Run it HERE, on
# Debian with the packages scripts/setup.sh installs; carry .deps to the GPU machine.
#
#   python/gpu_deps.sh            # about 14 MB; prints what it copied
#
# .deps/ is a CMake prefix:
#   include/boost/...      only the Boost headers our sources include (g++ -M over every source
#                          the module compiles, about 1,000 files, 4 MB), plus boost/config and
#                          boost/predef whole (what they pick depends on the compiler there)
#   include/eigen3/Eigen   Eigen (header-only)    share/eigen3/cmake       Debian's package files
#   include/nlohmann       nlohmann-json          share/cmake/nlohmann_json
#   include/catch2         Catch2 2 (tests)       lib/cmake/Catch2, lib/libCatch2WithMain.a
#   include/stb            stb_image_write.h (plot/canvas.cpp; no package file: -isystem .deps/include)
#   lib/cmake/Boost-1.74.0 a BoostConfig.cmake of our own giving Boost::headers (Debian's expects
#                          its own folder layout)
#   python/                Debian's pytest 7.2 and what it imports (pure Python): the GPU
#                          machine's Python has torch but maybe no pytest; run_gpu_torch.sh
#                          puts this on PYTHONPATH only where `import pytest` fails
set -euo pipefail
cd "$(dirname "$0")/.."
DEPS=.deps

fail() { echo "gpu_deps.sh: $*" >&2; exit 1; }
for path in /usr/include/boost/version.hpp /usr/include/eigen3/Eigen/Core /usr/share/eigen3/cmake/Eigen3Config.cmake \
            /usr/include/nlohmann/json.hpp /usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake \
            /usr/include/catch2/catch.hpp /usr/lib/cmake/Catch2/Catch2Config.cmake /usr/lib/libCatch2WithMain.a \
            /usr/include/stb/stb_image_write.h \
            /usr/include/pybind11/pybind11.h /usr/lib/python3/dist-packages/pytest/__init__.py; do
    [[ -e $path ]] || fail "$path is missing (scripts/setup.sh installs the Debian packages this copies from)"
done
python_include=$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=$tmp/deps
mkdir -p "$out/include" "$out/share" "$out/lib/cmake" "$out/python"

# Boost: the headers the module's sources include, with the definitions the module is built with.
: >"$tmp/boost.list"
for f in dsl/*.cpp learn/*.cpp analysis/*.cpp plot/*.cpp io/*.cpp engine/*.cpp engine/content/*.cpp python/*.cpp; do
    g++ -std=c++20 -M -DSPARSA_HAVE_CUDA=1 -DSPARSA_HAVE_LEARN=1 -I. -I/usr/include/eigen3 -I"$python_include" "$f" \
        >"$tmp/one.d" 2>"$tmp/one.err" || fail "g++ -M $f failed: $(head -3 "$tmp/one.err")"
    tr ' \\' '\n\n' <"$tmp/one.d" | grep '^/usr/include/boost/' >>"$tmp/boost.list" || true
done
sort -u "$tmp/boost.list" -o "$tmp/boost.list"
[[ -s $tmp/boost.list ]] || fail "no Boost header found in the sources' dependencies (is dsl/ there?)"
(cd /usr/include && sed 's|^/usr/include/||' "$tmp/boost.list" | xargs cp --parents -t "$out/include")
cp -r /usr/include/boost/config /usr/include/boost/predef "$out/include/boost/"
boost_version=$(sed -n 's/^#define BOOST_LIB_VERSION "\([0-9_]*\)"/\1/p' /usr/include/boost/version.hpp | tr _ .)
[[ $boost_version == *.*.* ]] || boost_version=$boost_version.0
mkdir -p "$out/lib/cmake/Boost-$boost_version"
cat >"$out/lib/cmake/Boost-$boost_version/BoostConfig.cmake" <<EOF
# Boost's headers only, copied by python/gpu_deps.sh: Boost::headers (and its old name Boost::boost).
get_filename_component(_sparsa_boost_prefix "\${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(Boost_INCLUDE_DIRS "\${_sparsa_boost_prefix}/include")
set(Boost_INCLUDE_DIR "\${Boost_INCLUDE_DIRS}")
set(Boost_VERSION $boost_version)
set(Boost_VERSION_STRING $boost_version)
set(Boost_LIBRARIES "")
if(NOT TARGET Boost::headers)
  add_library(Boost::headers INTERFACE IMPORTED)
  set_target_properties(Boost::headers PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "\${Boost_INCLUDE_DIRS}")
  add_library(Boost::boost INTERFACE IMPORTED)
  set_target_properties(Boost::boost PROPERTIES INTERFACE_LINK_LIBRARIES Boost::headers)
endif()
set(Boost_FOUND TRUE)
EOF
cat >"$out/lib/cmake/Boost-$boost_version/BoostConfigVersion.cmake" <<EOF
set(PACKAGE_VERSION $boost_version)
if(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()
EOF

# Eigen, nlohmann-json, Catch2 with Debian's package files (they find their headers relative to
# themselves: three folders up is the prefix); stb_image_write.h alone.
mkdir -p "$out/include/eigen3" "$out/share/eigen3" "$out/share/cmake" "$out/include/stb"
cp -r /usr/include/eigen3/Eigen /usr/include/eigen3/signature_of_eigen3_matrix_library "$out/include/eigen3/"
cp -r /usr/share/eigen3/cmake "$out/share/eigen3/"
cp -r /usr/include/nlohmann "$out/include/"
cp -r /usr/share/cmake/nlohmann_json "$out/share/cmake/"
cp -r /usr/include/catch2 "$out/include/"
cp -r /usr/lib/cmake/Catch2 "$out/lib/cmake/"
cp /usr/lib/libCatch2WithMain.a "$out/lib/"   # its package files check that it exists
cp /usr/include/stb/stb_image_write.h "$out/include/stb/"

# pytest 7.2 and the pure-Python packages it imports (tests/python's conftest needs nothing else).
for pkg in pytest _pytest pluggy iniconfig py attr packaging; do
    cp -r "/usr/lib/python3/dist-packages/$pkg" "$out/python/"
done
find "$out/python" -name __pycache__ -prune -exec rm -rf {} +

rm -rf "$DEPS"
mv "$out" "$DEPS"
echo "gpu_deps.sh: $DEPS: $(wc -l <"$tmp/boost.list") Boost headers (+ boost/config, boost/predef), Eigen, nlohmann-json, Catch2, stb_image_write, pytest $(/usr/bin/python3 -c 'import pytest; print(pytest.__version__)'); $(du -sh "$DEPS" | cut -f1) in all"
