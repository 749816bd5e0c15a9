#!/usr/bin/env bash
# Build llama.cpp's CPU tools (llama-simple, llama-bench) from the llama-cpp-python sdist, which vendors
# llama.cpp's source, into a cache folder that tests/test_llama_cpp.py and benchmarks/llama_cpp.py find:
#
#     ${LMFORGE_CACHE:-~/.cache/lmforge}/llama.cpp-<version>/bin/
#
# A finished build is reused: running this again does nothing. It takes several minutes on 2 cores.
# Needs cmake and a C++17 compiler (apt-get install cmake build-essential) and a package registry.
#
#     scripts/build_llama_cpp.sh              # the pinned version below, -j = number of CPUs
#     LLAMA_CPP_PYTHON_VERSION=0.3.36 JOBS=2 scripts/build_llama_cpp.sh
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc)}"
CACHE="${LMFORGE_CACHE:-$HOME/.cache/lmforge}"
PREFIX="$CACHE/llama.cpp-$VERSION"
TOOLS=(llama-simple llama-bench)

if [[ -x "$PREFIX/bin/llama-simple" && -x "$PREFIX/bin/llama-bench" ]]; then
    echo "llama.cpp tools already built: $PREFIX/bin"
    exit 0
fi
for tool in cmake c++; do
    if ! command -v "$tool" >/dev/null; then
        echo "missing $tool: apt-get install cmake build-essential" >&2
        exit 1
    fi
done

WORK="$PREFIX/src"
mkdir -p "$WORK"
SDIST="$WORK/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
fi
SOURCE="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
[[ -d "$SOURCE" ]] || tar -xzf "$SDIST" -C "$WORK"

# Static libraries so the binaries keep working wherever the cache folder is; no server, tests or UI.
cmake -S "$SOURCE" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_OPENSSL=OFF >"$WORK/cmake.log"
for tool in "${TOOLS[@]}"; do
    cmake --build "$WORK/build" --target "$tool" -j "$JOBS"
done
mkdir -p "$PREFIX/bin"
for tool in "${TOOLS[@]}"; do
    install -m 755 "$WORK/build/bin/$tool" "$PREFIX/bin/$tool"
done
rm -rf "$WORK"
echo "llama.cpp tools built: $PREFIX/bin"
