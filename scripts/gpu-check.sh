#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (made for the H200 machines:
# torch 2.11+cu130, Python 3.12, nvcc 13, CMake and ninja, no network). From a
# fresh copy of the tree it:
#   1. builds libsparsetopk_torch.so and the CUDA kernels' library
#      libsparsetopk_torch_cuda.so (where CMake finds nvcc) against that
#      machine's python3 torch (a build carried from elsewhere would have
#      another torch's ABI), 16 jobs, and lists the kernels' machine code;
#   2. runs the GPU suite (tests/python/test_gpu.py: every op on CUDA tensors
#      against the CPU core, random / tied / hostile rows, p in {4/3, 2, 1.5, 3},
#      forward, VJP and JVP, on the default generic path and on the opt-in
#      (UNVERIFIED) kernels; torch.compile of a CUDA training step) and the CPU
#      suites of the torch layer that are quick (test_ops.py, test_pytorch2.py
#      without the compile tests);
#   3. runs the GPU benchmark (bench/bench_gpu.py, CUDA events, both paths);
#   4. writes the results into docs/gpu.md (everything after its line
#      "<!-- gpu-check results -->"): date, GPU, torch, commit, the test summary, the table.
# Under 8 minutes on an H200 machine. OUT=dir also copies the results there.
#
#   bash scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
build=build-gpu
log=$build/gpu-check.log
mkdir -p "$build"
: > "$log"
start=$(date +%s)

echo "== build against $($python -c 'import torch; print("torch", torch.__version__)')" | tee -a "$log"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPARSETOPK_PYTHON="$(command -v "$python")" \
  -DSPARSETOPK_BUILD_TESTS=OFF -DSPARSETOPK_BUILD_CLI=OFF -DSPARSETOPK_BUILD_APPS=OFF >> "$log" 2>&1 &&
  cmake --build "$build" -j "$(nproc)" >> "$log" 2>&1  # (tests, CLI, apps off: the libraries only)
build_status=$?
if [ -f "$build/lib/libsparsetopk_torch_cuda.so" ]; then
  echo "== CUDA kernels: $(cuobjdump --list-elf "$build/lib/libsparsetopk_torch_cuda.so" 2>&1 | tr '\n' ' ')" | tee -a "$log"
else
  echo "== CUDA kernels: not built (no nvcc found by CMake); the GPU suite skips their tests" | tee -a "$log"
fi
if [ $build_status -ne 0 ]; then tail -40 "$log"; echo "gpu-check: the build failed"; exit 1; fi

export PYTHONPATH=$PWD/python SPARSETOPK_LIBRARY=$PWD/$build/lib/libsparsetopk_torch.so PYTHONDONTWRITEBYTECODE=1
echo "== GPU suite" | tee -a "$log"
$python -m pytest -q -p no:cacheprovider -rs tests/python/test_gpu.py tests/python/test_cuda_build.py tests/python/test_ops.py \
  tests/python/test_pytorch2.py -k "not compile or cuda" 2>&1 | tee "$build/tests.txt" | tail -25
test_status=${PIPESTATUS[0]}

# sparsetopk.jax: its suite on that machine's jax (a newer one than .venv's),
# first on the verified CPU target, then on the opt-in CUDA handlers.
echo "== JAX suite (CPU target, JAX_PLATFORMS=cpu)" | tee -a "$log"
if [ -f "$build/lib/libsparsetopk_jax.so" ]; then
  JAX_PLATFORMS=cpu SPARSETOPK_JAX_LIBRARY=$PWD/$build/lib/libsparsetopk_jax.so \
    $python -m pytest -q -p no:cacheprovider tests/python/test_jax.py 2>&1 | tee "$build/jax.txt" | tail -5
  if [ -f "$build/lib/libsparsetopk_jax_cuda.so" ]; then
    # the UNVERIFIED CUDA handlers, opted in, on the GPU (Dykstra has no CUDA kernel: those tests fail)
    echo "== JAX suite on the GPU (SPARSETOPK_JAX_CUDA_KERNELS=1)" | tee -a "$log"
    SPARSETOPK_JAX_CUDA_KERNELS=1 SPARSETOPK_JAX_CUDA_LIBRARY=$PWD/$build/lib/libsparsetopk_jax_cuda.so \
      SPARSETOPK_JAX_LIBRARY=$PWD/$build/lib/libsparsetopk_jax.so \
      $python -m pytest -q -p no:cacheprovider tests/python/test_jax.py 2>&1 | tee -a "$build/jax.txt" | tail -8
  fi
else
  echo "(not built: no jax in $python)" | tee "$build/jax.txt"
fi

echo "== GPU benchmark" | tee -a "$log"
$python bench/bench_gpu.py --output "$build/bench.md" 2>&1 | tee -a "$log"
bench_status=${PIPESTATUS[0]}

{
  echo "## Latest run of scripts/gpu-check.sh"
  echo
  echo "Written by \`bash scripts/gpu-check.sh\` on $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
  echo "GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1);" \
       "$($python -c 'import torch, sys; print("torch", torch.__version__, "CUDA", torch.version.cuda, "Python", sys.version.split()[0])')."
  echo "Elapsed: $(( $(date +%s) - start )) s (build, tests, benchmark)."
  echo
  echo "### Tests (exit status $test_status)"
  echo
  echo '```'
  tail -15 "$build/tests.txt"
  echo '```'
  echo
  echo "### JAX suite, CPU target ($($python -c 'import jax; print("jax", jax.__version__)' 2>/dev/null || echo "no jax"))"
  echo
  echo '```'
  grep -E "passed|failed|error" "$build/jax.txt" | tail -4
  echo '```'
  echo
  echo "### Benchmark (exit status $bench_status)"
  echo
  cat "$build/bench.md" 2>/dev/null || echo "(no benchmark output)"
} > "$build/results.md"
marker='<!-- gpu-check results -->'
{ sed "/^$marker\$/q" docs/gpu.md; cat "$build/results.md"; } > "$build/gpu.md" && mv "$build/gpu.md" docs/gpu.md
if [ -n "${OUT:-}" ]; then cp docs/gpu.md "$build/tests.txt" "$log" "$OUT/" 2>/dev/null; fi
echo "gpu-check: tests $test_status, benchmark $bench_status, $(( $(date +%s) - start )) s; results in docs/gpu.md"
[ $test_status -eq 0 ] && [ $bench_status -eq 0 ]
