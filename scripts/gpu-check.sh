#!/usr/bin/env bash
# The device check: what a session lent a GPU machine runs first, from a fresh
# copy of the tree (no build folder carried), within 8 minutes of a cold start.
#
#   bash scripts/gpu-check.sh             # on the GPU machine
#   bash scripts/gpu-check.sh --dry-run   # anywhere: prints the plan and its budgets, runs nothing
#                                         # (or GPU_CHECK_DRY_RUN=1)
#
# Steps, in order, each under `timeout` with its own budget (seconds):
#    1 env             environment: GPU, driver, nvcc, torch/jax and their CUDA, CPUs
#    2 configure       CMake (Ninja if present), tests/CLI/apps off, against python3's torch and jax
#    3 build_selftest  the torch-free kernel_selftest target alone (quick)
#    4 selftest        kernel_selftest --check: the kernels against the CPU core, case by case
#    5-8 memcheck, racecheck, synccheck, initcheck
#                      compute-sanitizer on kernel_selftest --check --small (memcheck) or --smoke
#                      (racecheck, synccheck, initcheck); a non-zero error count fails
#    9 build_libs      the torch and JAX libraries (and their CUDA ones), -j$(nproc)
#   10 pytest          tests/python/test_gpu.py and test_cuda_build.py (not the compile test), JUnit XML
#   11 bench           bench/bench_gpu.py: CSV and Markdown, time-capped
#   12 jax             tests/python/gpu_jax_smoke.py (default registration)
#   13 jax_kernels     optional: the same with SPARSETOPK_JAX_CUDA_KERNELS=1
#   14 compile         optional: the torch.compile test of test_gpu.py
# The budgets sum to at most GPU_CHECK_SECONDS (480). Time a step leaves unused
# passes to the next required step: a step may run for the time left minus the
# budgets of the required steps after it (never less than its own budget while
# that much is left). An optional step runs only if its whole budget is left. A
# step whose input is missing (a failed build) is skipped and counts as failed.
#
# Results go to $OUT (set by the device tool; build-gpu/out otherwise) as each
# step finishes, in 8 files at most (the tool brings back 8):
#   summary.txt   the environment, then one line per step as it ends, the test
#                 tails, and the final table (printed last, too)
#   build.log     CMake's configure and both builds, the kernels' machine code
#   selftest.txt  kernel_selftest --check
#   sanitizer.txt the four compute-sanitizer runs
#   pytest.xml    JUnit XML of the GPU suite
#   bench.csv, bench.md   the benchmark
#   jax.txt       the JAX smoke test (both registrations)
# Nothing is written in the tree outside build-gpu/ (ignored by .gitignore):
# per-step logs are in build-gpu/logs, Python writes no bytecode, pytest no cache.
# Exit status 0 iff every required step passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

dry_run=${GPU_CHECK_DRY_RUN:-0}
for arg in "$@"; do
  case $arg in
    --dry-run) dry_run=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check: unknown argument $arg (--dry-run, --help)" >&2; exit 2 ;;
  esac
done
[ "$dry_run" = 0 ] || dry_run=1

python=${PYTHON:-python3}
build=${GPU_CHECK_BUILD:-build-gpu}
case $build in /*) build_abs=$build ;; *) build_abs=$PWD/$build ;; esac
out=${OUT:-$build/out}
total=${GPU_CHECK_SECONDS:-480}
jobs=$(nproc 2>/dev/null || echo 4)
logs=$build/logs
# nvcc, compute-sanitizer and cuobjdump ship with the toolkit, which may be off the PATH
if ! command -v nvcc > /dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then PATH=/usr/local/cuda/bin:$PATH; fi
if command -v ninja > /dev/null 2>&1; then generator=Ninja; else generator="Unix Makefiles"; fi
sanitizer=$(command -v compute-sanitizer 2> /dev/null || echo /usr/local/cuda/bin/compute-sanitizer)
selftest=$build/bin/kernel_selftest
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH} PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export SPARSETOPK_LIBRARY=$build_abs/lib/libsparsetopk_torch.so
export SPARSETOPK_JAX_LIBRARY=$build_abs/lib/libsparsetopk_jax.so
export XLA_PYTHON_CLIENT_PREALLOCATE=false

# The plan: name, budget in seconds, required or optional, the file in $OUT it writes.
plan=(
  "env 15 required summary.txt"
  "configure 40 required build.log"
  "build_selftest 65 required build.log"
  "selftest 40 required selftest.txt"
  "memcheck 20 required sanitizer.txt"
  "racecheck 20 required sanitizer.txt"
  "synccheck 12 required sanitizer.txt"
  "initcheck 12 required sanitizer.txt"
  "build_libs 90 required build.log"
  "pytest 60 required pytest.xml"
  "bench 40 required bench.csv"
  "jax 20 required jax.txt"
  "jax_kernels 15 optional jax.txt"
  "compile 25 optional summary.txt"
)

field() {  # field NAME INDEX: a column of NAME's row of the plan
  local row words
  for row in "${plan[@]}"; do
    read -r -a words <<< "$row"
    if [ "${words[0]}" = "$1" ]; then echo "${words[$2]}"; return; fi
  done
  echo "gpu-check: no step $1 in the plan" >&2
  exit 2
}

reserve_after() {  # the budgets of the required steps after NAME
  local row words seen=0 sum=0
  for row in "${plan[@]}"; do
    read -r -a words <<< "$row"
    if [ $seen = 1 ] && [ "${words[2]}" = required ]; then sum=$((sum + words[1])); fi
    if [ "${words[0]}" = "$1" ]; then seen=1; fi
  done
  echo $sum
}

names=() statuses=() times=()
record() {  # record NAME STATUS SECONDS [NOTE]: the final table's row, and a line in summary.txt now
  names+=("$1") statuses+=("$2") times+=("$3")
  local line
  line=$(printf '%-15s %-8s %4s s of %3s s  -> %s' "$1" "$2" "$3" "$(field "$1" 1)" "$(field "$1" 3)")
  echo "== $line${4:+ ($4)}"
  echo "step $line${4:+ ($4)}" >> "$out/summary.txt"
}

skip() {  # skip NAME REASON
  [ "$dry_run" = 1 ] || record "$1" skipped 0 "$2"
}

planned=0
# run_step NAME COMMAND...: runs COMMAND under timeout, its output in $logs/NAME.log,
# appended to its $OUT file as soon as it ends. Returns the command's status.
run_step() {
  local name=$1 budget kind file
  shift
  budget=$(field "$name" 1) kind=$(field "$name" 2) file=$(field "$name" 3)
  if [ "$dry_run" = 1 ]; then
    planned=$((planned + budget))
    local shown
    if [ "$1" = bash ] && [ "$2" = -c ]; then  # bash -c 'function "$@"' _ ARGS: show it as function ARGS
      shown="${3%% *} $(printf '%q ' "${@:5}")"
    else
      shown=$(printf '%q ' "$@")
    fi
    printf 'STEP %-15s timeout=%3ss %-8s -> %-13s %s\n' "$name" "$budget" "$kind" "$file" "$shown"
    return 0
  fi
  local left reserve limit
  left=$((total - SECONDS)) reserve=$(reserve_after "$name")
  limit=$((left - reserve))
  [ "$limit" -ge "$budget" ] || limit=$budget
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$kind" = optional ] && [ $left -lt "$budget" ]; then
    skip "$name" "${left} s left, it needs ${budget} s"
    return 1
  fi
  if [ "$limit" -lt 5 ]; then
    skip "$name" "out of time (${left} s left)"
    return 1
  fi
  echo "== $name (up to $limit s, $left s left)"
  local t0=$SECONDS rc status
  {
    echo "---- $name: $*"
    timeout -k 5 "$limit" "$@"
  } > "$logs/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status=TIMEOUT ;;
    *) status="FAIL($rc)" ;;
  esac
  if [ "$file" != summary.txt ] && [ "$file" != pytest.xml ] && [ "$file" != bench.csv ]; then
    cat "$logs/$name.log" >> "$out/$file"
  fi
  record "$name" "$status" $((SECONDS - t0))
  if [ $rc -ne 0 ]; then
    echo "---- the end of $logs/$name.log:"
    tail -n 15 "$logs/$name.log"
  fi
  return $rc
}

ok() {  # ok NAME: did NAME pass?
  local i
  for i in "${!names[@]}"; do [ "${names[$i]}" = "$1" ] && [ "${statuses[$i]}" = ok ] && return 0; done
  [ "$dry_run" = 1 ]
}

environment() {
  echo "gpu-check at commit $(git rev-parse --short HEAD 2> /dev/null || echo unknown), $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "CPUs: $(nproc); generator: $1"
  nvidia-smi -L 2>&1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  echo "nvcc: $(command -v nvcc || echo none)"
  nvcc --version 2>&1 | tail -n 2
  echo "compute-sanitizer: $2"
  "$3" - << 'EOF'
import os, sys
print("python", sys.version.split()[0], sys.executable, "cpus", os.cpu_count())
try:
    import torch
    print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print("  device", p.name, "sm", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
              "memory GiB", round(p.total_memory / 2**30, 1))
except Exception as e:
    print("torch: not importable:", e)
try:
    import jax
    import jaxlib
    print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "backend", jax.default_backend(), jax.devices())
    try:
        from importlib.metadata import version
        print("  jax-cuda13-plugin", version("jax-cuda13-plugin"))
    except Exception as e:
        print("  no jax CUDA plugin:", type(e).__name__)
except Exception as e:
    print("jax: not importable:", e)
EOF
}
export -f environment

build_libraries() {  # the default targets (tests, CLI, apps off), then the kernels' machine code
  cmake --build "$1" -j "$2" || return
  local lib
  for lib in "$1"/lib/*cuda*.so; do
    [ -f "$lib" ] || { echo "no CUDA library built"; continue; }
    echo "$lib: $(cuobjdump --list-elf "$lib" 2>&1 | tr '\n' ' ')"
  done
}
export -f build_libraries

sanitize() {  # sanitize TOOL SANITIZER SELFTEST: fails on a non-zero error count too
  local log rc cases=--smoke
  log=$(mktemp)
  # memcheck on the small cases (144 runs); the slower race, sync and init checks on the smoke cases (22)
  [ "$1" = memcheck ] && cases=--small
  "$2" --tool "$1" --error-exitcode 99 --print-limit 30 "$3" --check "$cases" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ] && grep -Eq 'ERROR SUMMARY: [1-9]|[(][1-9][0-9]* errors' "$log"; then rc=98; fi
  if [ "$rc" -eq 0 ] && ! grep -q 'ERROR SUMMARY' "$log"; then
    echo "gpu-check: no ERROR SUMMARY from compute-sanitizer"
    rc=97
  fi
  rm -f "$log"
  return "$rc"
}
export -f sanitize

if [ "$dry_run" = 1 ]; then
  echo "gpu-check --dry-run: the plan (nothing runs), $total s in all, $jobs jobs, generator $generator, results in $out"
else
  mkdir -p "$out" "$logs"
  : > "$out/summary.txt"
fi

# 1. environment
if [ "$dry_run" = 0 ]; then
  timeout -k 5 "$(field env 1)" bash -c 'environment "$@"' _ "$generator" "$sanitizer" "$python" >> "$out/summary.txt" 2>&1
  rc=$?
  cat "$out/summary.txt"
  record env "$([ $rc = 0 ] && echo ok || echo "FAIL($rc)")" "$SECONDS"
else
  run_step env environment "$generator" "$sanitizer" "$python"
fi

# 2-3. configure, and the torch-free self-test first
run_step configure cmake -S . -B "$build" -G "$generator" -DCMAKE_BUILD_TYPE=Release \
  -DSPARSETOPK_PYTHON="$(command -v "$python" || echo "$python")" \
  -DSPARSETOPK_BUILD_TESTS=OFF -DSPARSETOPK_BUILD_CLI=OFF -DSPARSETOPK_BUILD_APPS=OFF
if ok configure; then
  run_step build_selftest cmake --build "$build" -j "$jobs" --target kernel_selftest
else
  skip build_selftest "no configured build"
fi

# 4-8. the self-test and compute-sanitizer's four tools
if [ "$dry_run" = 1 ] || [ -x "$selftest" ]; then
  run_step selftest "$selftest" --check
  for tool in memcheck racecheck synccheck initcheck; do
    run_step "$tool" bash -c 'sanitize "$@"' _ "$tool" "$sanitizer" "$selftest"
  done
else
  for name in selftest memcheck racecheck synccheck initcheck; do skip "$name" "no $selftest"; done
fi

# 9. the libraries
if ok configure; then
  run_step build_libs bash -c 'build_libraries "$@"' _ "$build" "$jobs"
else
  skip build_libs "no configured build"
fi

# 10-11. the GPU suite and the benchmark
if [ "$dry_run" = 1 ] || [ -f "$SPARSETOPK_LIBRARY" ]; then
  run_step pytest "$python" -m pytest -q -p no:cacheprovider -rs -o faulthandler_timeout=60 \
    --junitxml="$out/pytest.xml" tests/python/test_gpu.py tests/python/test_cuda_build.py -k "not compile"
  [ "$dry_run" = 1 ] || { echo "---- pytest"; tail -n 25 "$logs/pytest.log"; } >> "$out/summary.txt"
  run_step bench "$python" bench/bench_gpu.py --csv "$out/bench.csv" --markdown "$out/bench.md" \
    --time-budget $(($(field bench 1) - 10))
else
  for name in pytest bench; do skip "$name" "no $SPARSETOPK_LIBRARY"; done
fi

# 12-13. JAX: the default registration, then the opt-in CUDA handlers
if [ "$dry_run" = 1 ] || [ -f "$SPARSETOPK_JAX_LIBRARY" ]; then
  run_step jax "$python" tests/python/gpu_jax_smoke.py
  if [ "$dry_run" = 1 ] || [ -f "$build/lib/libsparsetopk_jax_cuda.so" ]; then
    run_step jax_kernels env SPARSETOPK_JAX_CUDA_KERNELS=1 \
      SPARSETOPK_JAX_CUDA_LIBRARY="$build_abs/lib/libsparsetopk_jax_cuda.so" "$python" tests/python/gpu_jax_smoke.py
  else
    skip jax_kernels "no libsparsetopk_jax_cuda.so"
  fi
else
  for name in jax jax_kernels; do skip "$name" "no $SPARSETOPK_JAX_LIBRARY"; done
fi

# 14. torch.compile of a CUDA training step, if the time is there
if [ "$dry_run" = 1 ] || [ -f "$SPARSETOPK_LIBRARY" ]; then
  run_step compile "$python" -m pytest -q -p no:cacheprovider -rs tests/python/test_gpu.py -k compile
  [ "$dry_run" = 1 ] || [ ! -f "$logs/compile.log" ] || { echo "---- compile"; tail -n 8 "$logs/compile.log"; } >> "$out/summary.txt"
else
  skip compile "no $SPARSETOPK_LIBRARY"
fi

if [ "$dry_run" = 1 ]; then
  echo "planned: ${#plan[@]} steps, budgets sum to $planned s (limit $total s)"
  [ $planned -le "$total" ]
  exit
fi

failed=0
{
  echo
  echo "gpu-check summary: $SECONDS s of $total s, results in $out"
  printf '| %-15s | %-9s | %5s | %6s | %-13s |\n' step status time budget file
  echo "|---|---|---:|---:|---|"
  for i in "${!names[@]}"; do
    printf '| %-15s | %-9s | %4s s | %4s s | %-13s |\n' "${names[$i]}" "${statuses[$i]}" "${times[$i]}" \
      "$(field "${names[$i]}" 1)" "$(field "${names[$i]}" 3)"
    if [ "${statuses[$i]}" != ok ] && [ "$(field "${names[$i]}" 2)" = required ]; then failed=$((failed + 1)); fi
  done
  for file in selftest.txt sanitizer.txt; do
    [ -f "$out/$file" ] && echo "$file: $(grep -E '^---- [a-z]+:|passed, [0-9]+ failed|ERROR SUMMARY' "$out/$file" |
      sed -e 's/^---- \([a-z]*\):.*/\1:/' -e 's/^=* *//' | tr '\n' ' ')"
  done
  [ -f "$logs/pytest.log" ] && echo "pytest: $(grep -E '(passed|failed|skipped|error)' "$logs/pytest.log" | tail -n 1)"
  echo "required steps failed: $failed"
} > "$logs/table.txt"
cat "$logs/table.txt" >> "$out/summary.txt"
cat "$logs/table.txt"
[ $failed -eq 0 ]
