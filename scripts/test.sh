#!/usr/bin/env bash
# Installs what is needed, builds, and runs every test (the README's test command):
#   1. the release build: core, CLI, consumer package check (and LibTorch/Python when built);
#   2. the libFuzzer targets of fuzz/ (clang), FUZZ_SECONDS each (default 30);
#   3. the core and CLI suites under AddressSanitizer + UndefinedBehaviorSanitizer;
#   4. the threaded tests under ThreadSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)

scripts/build.sh
ctest --preset release -j "$jobs"

# Reproducible by default (seed 1, at most 6000 inputs or 30 s per target, on
# the seed corpus): CI checks the same inputs on every machine. Unset FUZZ_SEED
# and FUZZ_RUNS, and give more seconds, to explore (see docs/robustness.md).
echo "== libFuzzer: each target for ${FUZZ_SECONDS:-30} s =="
FUZZ_BUILD_DIR=build-fuzz FUZZ_SEED=${FUZZ_SEED-1} FUZZ_RUNS=${FUZZ_RUNS-6000} bash fuzz/run.sh "${FUZZ_SECONDS:-30}"

echo "== AddressSanitizer + UndefinedBehaviorSanitizer =="
cmake --preset asan > /dev/null
cmake --build --preset asan -j "$jobs" > build-asan.log 2>&1 || { tail -50 build-asan.log; exit 1; }
ctest --preset asan -j "$jobs"

echo "== ThreadSanitizer: threaded paths =="
cmake --preset tsan > /dev/null
cmake --build --preset tsan -j "$jobs" --target test_concurrency test_soft_topk > build-tsan.log 2>&1 || { tail -50 build-tsan.log; exit 1; }
ctest --preset tsan -j "$jobs" -R "ThreadCount|Thread|Bitwise"
