#!/usr/bin/env bash
# Checks that this checkout's operators give bitwise the outputs of a git ref
# (default: c209753, main before the "math once" restructuring), on the CPU, on
# the random, tied and hostile inputs of tests/bitwise/dump_outputs.py, and
# reports how far the derivatives moved. Builds the ref's torch and JAX
# libraries in build/bitwise-ref (a few minutes), and this checkout's with
# scripts/build.sh. Not part of CI (two builds); run it after changing a solver.
#   bash scripts/check-bitwise.sh [REF]
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:-c209753}
root=$PWD
work=build/bitwise-ref
python=$root/.venv/bin/python

rm -rf "$work/src"
mkdir -p "$work"
git worktree prune
git worktree add --detach "$work/src" "$ref" > /dev/null
trap 'git worktree remove --force "$root/$work/src" 2> /dev/null || true' EXIT
ln -s "$root/.venv" "$work/src/.venv"
cmake -S "$work/src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DSPARSETOPK_BUILD_TESTS=OFF \
  -DSPARSETOPK_BUILD_APPS=OFF -DSPARSETOPK_BUILD_CLI=OFF -DSPARSETOPK_BUILD_CUDA=OFF \
  -DSPARSETOPK_PYTHON="$python" > "$work/configure.log"
cmake --build "$work/build" -j "$(nproc)" --target sparsetopk_torch sparsetopk_jax > "$work/build.log"
scripts/build.sh > /dev/null

echo "== dump with $ref =="
(cd "$work/src" && PYTHONPATH=python SPARSETOPK_LIBRARY="$root/$work/build/lib/libsparsetopk_torch.so" \
  SPARSETOPK_JAX_LIBRARY="$root/$work/build/lib/libsparsetopk_jax.so" \
  "$python" "$root/tests/bitwise/dump_outputs.py" dump "$root/$work/before.npz")
echo "== dump with this checkout =="
PYTHONPATH=python SPARSETOPK_LIBRARY=build/lib/libsparsetopk_torch.so \
  SPARSETOPK_JAX_LIBRARY=build/lib/libsparsetopk_jax.so \
  "$python" tests/bitwise/dump_outputs.py dump "$work/after.npz"
"$python" tests/bitwise/dump_outputs.py compare "$work/before.npz" "$work/after.npz"
