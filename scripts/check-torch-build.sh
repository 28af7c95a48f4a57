#!/usr/bin/env bash
# Checks that the torch bindings (target sparsetopk_torch) BUILD against another
# torch release, without installing it anywhere:
#   scripts/check-torch-build.sh VERSION [PYTHON_VERSION]     e.g. 2.11.0 3.12
# Downloads the torch wheel from PyPI (pip keeps it in its cache, ~1 GB; the
# headers and CMake files do not depend on the Python version), unpacks only
# torch/include, torch/share/cmake and torch/lib into a temporary directory,
# and configures + builds sparsetopk_torch in build-torch-VERSION against it.
# Then checks that every symbol the library needs from torch is defined by that
# release's libtorch_cpu/libc10 (ldd -r). It compiles and links; it runs nothing.
set -euo pipefail
version=${1:?usage: scripts/check-torch-build.sh TORCH_VERSION [PYTHON_VERSION]}
pyver=${2:-3.12}
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-$root/.venv/bin/python}
[[ -x $python ]] || python=python3

work=$(mktemp -d "${TMPDIR:-/tmp}/sparsetopk-torch-$version.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS

echo "== torch $version: download (cp${pyver/./}, manylinux_2_28_x86_64) =="
"$python" -m pip download "torch==$version" --no-deps --only-binary=:all: \
  --python-version "$pyver" --platform manylinux_2_28_x86_64 --disable-pip-version-check -q -d "$work/wheel"
wheel=$(ls "$work"/wheel/torch-*.whl)
"$python" - "$wheel" "$work/site" <<'EOF'
import sys, zipfile
wheel, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith(("torch/include/", "torch/share/cmake/", "torch/lib/"))])
EOF
rm -f "$wheel"
torch_dir=$work/site/torch
echo "downloaded and unpacked in $((SECONDS - start)) s"

build=$root/build-torch-$version
echo "== configure $build =="
mkdir -p "$build"
generator=()
[[ -f $build/CMakeCache.txt ]] || ! command -v ninja > /dev/null || generator=(-G Ninja)
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DSPARSETOPK_PYTHON= -DCMAKE_PREFIX_PATH="$torch_dir/share/cmake" -DTorch_DIR="$torch_dir/share/cmake/Torch" \
  -DSPARSETOPK_BUILD_TORCH=ON -DSPARSETOPK_BUILD_TESTS=OFF -DSPARSETOPK_BUILD_CLI=OFF \
  -DSPARSETOPK_BUILD_APPS=OFF -DSPARSETOPK_BUILD_BENCH=OFF > "$build/configure.log" 2>&1 ||
  { tail -40 "$build/configure.log"; exit 1; }
grep "building the torch bindings against" "$build/configure.log"
echo "== build sparsetopk_torch =="
build_start=$SECONDS
cmake --build "$build" --target sparsetopk_torch -j "$(nproc)"
echo "built in $((SECONDS - build_start)) s"

echo "== symbols resolved by torch $version's libraries =="
lib=$build/lib/libsparsetopk_torch.so
undefined=$(LD_LIBRARY_PATH=$torch_dir/lib ldd -r "$lib" 2>&1 | grep "undefined symbol" || true)
if [[ -n $undefined ]]; then
  echo "$undefined" | head -20
  echo "FAIL: $lib has symbols that torch $version does not define"
  exit 1
fi
echo "OK: sparsetopk_torch compiles and links against torch $version ($((SECONDS - start)) s in all)"
