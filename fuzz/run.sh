#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (fuzzer + ASan + UBSan) from the core
# sources directly, then runs each for a bounded time.
#
#   fuzz/run.sh [seconds_per_target]      default 60
#
# Environment: FUZZ_TARGETS (default "solvers isotonic cli_parser"),
# FUZZ_BUILD_DIR (default fuzz/build), CXX_FUZZ (default clang++),
# FUZZ_BUILD_ONLY=1 to build and stop, FUZZ_SEED and FUZZ_RUNS to fix libFuzzer's
# seed and cap its executions (a reproducible run: the same inputs in the same
# order, whatever the machine's speed).
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

common=(-std=c++20 -O1 -gline-tables-only -fno-omit-frame-pointer -I"$root/include"
        -fsanitize=address,undefined -fno-sanitize-recover=all)

mkdir -p "$out/obj" "$out/crashes"
# Objects are rebuilt when the flags change or any source or header is newer.
if [[ "$(cat "$out/obj/flags" 2>/dev/null)" != "$cxx ${common[*]}" ]]; then
  rm -f "$out"/obj/*.o
  printf '%s' "$cxx ${common[*]}" >"$out/obj/flags"
fi

# The core and the CLI parser, instrumented for coverage but without libFuzzer's main.
sources=("$root"/src/core/*.cpp "$root/src/cli/parse.cpp")
objects=()
pids=()
for src in "${sources[@]}"; do
  obj="$out/obj/$(basename "$(dirname "$src")")_$(basename "${src%.cpp}").o"
  objects+=("$obj")
  if [[ -f "$obj" && -z "$(find "$root/include" "$root/src/core" "$root/src/cli" -name '*.[hc]pp' -newer "$obj" | head -1)" ]]; then
    continue
  fi
  "$cxx" "${common[@]}" -fsanitize=fuzzer-no-link -c "$src" -o "$obj" &
  pids+=($!)
  if (( ${#pids[@]} >= 2 )); then
    wait "${pids[0]}" || { echo "build failed" >&2; exit 2; }
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || { echo "build failed" >&2; exit 2; }; done

for target in $targets; do
  "$cxx" "${common[@]}" -fsanitize=fuzzer "$here/fuzz_$target.cpp" "${objects[@]}" -pthread \
    -o "$out/fuzz_$target" || { echo "build failed: fuzz_$target" >&2; exit 2; }
done
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
