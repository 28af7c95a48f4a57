#!/usr/bin/env bash
# Installs what is needed, builds, and runs every test (the README's test command):
#   1. the release build: core, CLI, consumer package check, the LibTorch C++ API, the
#      applications, and the pytest suite on the pinned torch of .venv (opcheck, compile,
#      torch.func, export, autocast, DDP);
#   then the wheel: `pip wheel .` against .venv's torch, installed alone into a fresh
#   environment next to that torch (tests/python/test_wheel.py);
#   2. the libFuzzer targets of fuzz/ (clang), FUZZ_SECONDS each (default 30);
#   3. the core and CLI suites, and the CUDA kernels on the CPU harness (kernel_selftest_cpu),
#      under AddressSanitizer + UndefinedBehaviorSanitizer;
#   4. the threaded tests under ThreadSanitizer, with the CUDA kernels on the CPU harness's
#      real threads (src/cuda/harness, kernel_selftest_cpu --check --smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)

scripts/build.sh
ctest --preset release -j "$jobs"

echo "== the wheel: pip wheel . (scikit-build-core, against .venv's torch), installed alone =="
rm -rf build/dist
.venv/bin/python -m pip wheel . --no-build-isolation --no-deps -q -w build/dist
# (PYTHONPATH: conftest.py imports the checkout's package; the test's own subprocess runs without it)
SPARSETOPK_WHEEL=$(ls build/dist/sparsetopk-*.whl) PYTHONPATH=python SPARSETOPK_LIBRARY=build/lib/libsparsetopk_torch.so \
  .venv/bin/python -m pytest -q -p no:cacheprovider tests/python/test_wheel.py

# Fuzzing, two parts. The regression part replays the seed corpus (fuzz/corpus,
# which holds the fixed findings) and must pass. The exploring part fuzzes each
# target for FUZZ_SECONDS from random seeds; what it finds is printed and saved
# under build-fuzz/crashes but does not fail this script: libFuzzer runs are
# not reproducible across machines, and a new finding is a new issue to fix,
# not a broken build (see docs/robustness.md).
echo "== libFuzzer: replay of the seed corpus =="
FUZZ_BUILD_DIR=build-fuzz FUZZ_RUNS=0 bash fuzz/run.sh 60
echo "== libFuzzer: each target for ${FUZZ_SECONDS:-30} s (exploring; findings reported, not fatal) =="
FUZZ_BUILD_DIR=build-fuzz bash fuzz/run.sh "${FUZZ_SECONDS:-30}" ||
  echo "exploratory fuzzing found an input: see the report above (docs/robustness.md, Fuzzing)"

echo "== AddressSanitizer + UndefinedBehaviorSanitizer =="
cmake --preset asan > /dev/null
cmake --build --preset asan -j "$jobs" > build-asan.log 2>&1 || { tail -50 build-asan.log; exit 1; }
ctest --preset asan -j "$jobs"

echo "== ThreadSanitizer: threaded paths =="
cmake --preset tsan > /dev/null
cmake --build --preset tsan -j "$jobs" --target test_concurrency test_soft_topk test_harness kernel_selftest_cpu \
  > build-tsan.log 2>&1 || { tail -50 build-tsan.log; exit 1; }
# (the CUDA harness runs each CUDA thread on a real thread under TSan: its tests and the kernels' smoke cases)
ctest --preset tsan -j "$jobs" -R "ThreadCount|Thread|Bitwise|Harness"
