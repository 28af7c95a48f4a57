#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (fuzzer + ASan + UBSan) through CMake
# (the `fuzz` preset: fuzz/CMakeLists.txt, linking the core library like any
# other user), then runs each for a bounded time.
#
#   fuzz/run.sh [seconds_per_target]      default 60
#
# Environment: FUZZ_TARGETS (default "solvers isotonic cli_parser"),
# FUZZ_BUILD_DIR (default fuzz/build, the preset's), CXX_FUZZ (default clang++),
# FUZZ_JOBS (build jobs, default 2), FUZZ_BUILD_ONLY=1 to build and stop,
# FUZZ_SEED and FUZZ_RUNS to fix libFuzzer's seed and cap its executions (a
# reproducible run: the same inputs in the same order, whatever the machine's speed).
#
# Inputs found while fuzzing go to $FUZZ_BUILD_DIR/corpus/<target> (the seed
# corpus in fuzz/corpus/<target> is only read); a crashing input is saved as
# $FUZZ_BUILD_DIR/crashes/<target>-crash-<sha1>. Reproduce one with
#   $FUZZ_BUILD_DIR/fuzz_<target> <file>
# which prints the decoded case and the violated property.
# Exit status: 0 if no target crashed, 1 otherwise (2 on a build failure).
set -uo pipefail

seconds=${1:-60}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out=${FUZZ_BUILD_DIR:-$here/build}
cxx=${CXX_FUZZ:-clang++}
targets=${FUZZ_TARGETS:-"solvers isotonic cli_parser"}

mkdir -p "$out/crashes"
out=$(cd "$out" && pwd)
rm -rf "$out/obj"  # the objects of the script's former build, before CMake
# Configured once (again when the compiler changes), then built incrementally.
cached=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$out/CMakeCache.txt" 2>/dev/null)
if [[ -z "$cached" || "$cached" != "$(command -v "$cxx" || echo "$cxx")" ]]; then
  rm -rf "$out/CMakeCache.txt" "$out/CMakeFiles"
  (cd "$root" && cmake --preset fuzz -B "$out" -DCMAKE_CXX_COMPILER="$cxx") \
    >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; echo "configure failed" >&2; exit 2; }
fi
if ! cmake --build "$out" -j "${FUZZ_JOBS:-2}" --target $(for t in $targets; do printf 'fuzz_%s ' "$t"; done) \
     >"$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  echo "build failed" >&2
  exit 2
fi
echo "built: $(for t in $targets; do printf '%s ' "$out/fuzz_$t"; done)"
[[ "${FUZZ_BUILD_ONLY:-0}" == 1 ]] && exit 0

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

status=0
summary=()
for target in $targets; do
  mkdir -p "$out/corpus/$target"
  log="$out/fuzz_$target.log"
  echo "== fuzz_$target for ${seconds}s (log: $log)"
  extra=()
  [[ -n "${FUZZ_SEED:-}" ]] && extra+=(-seed="$FUZZ_SEED")
  [[ -n "${FUZZ_RUNS:-}" ]] && extra+=(-runs="$FUZZ_RUNS")
  "$out/fuzz_$target" "${extra[@]}" -max_total_time="$seconds" -max_len=1024 -timeout=20 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$out/crashes/$target-" \
    "$out/corpus/$target" "$here/corpus/$target" >"$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  if [[ -z "$runs" ]]; then runs=$(grep -o '#[0-9]*' "$log" | tail -1 | tr -d '#'); fi
  if (( rc != 0 )); then
    status=1
    summary+=("fuzz_$target: CRASH after ${runs:-?} executions (exit $rc)")
    echo "fuzz_$target: CRASH (exit $rc); report:"
    grep -A12 -E '==== sparsetopk fuzz|ERROR: (AddressSanitizer|libFuzzer)|runtime error' "$log" | head -40
    grep -E 'Test unit written to' "$log"
  else
    summary+=("fuzz_$target: ok, ${runs:-?} executions in ${seconds}s, corpus $(ls "$out/corpus/$target" | wc -l) files")
  fi
done

echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$status"
