#!/usr/bin/env bash
# Builds the benchmarks (Release, in build-bench/), runs all of them on this
# machine and regenerates docs/performance.md and docs/performance.png.
#
#   bench/run.sh                  # everything, about 10-15 minutes on 2 cores
#   MIN_TIME=0.05 REPETITIONS=1 bench/run.sh    # quicker, noisier
#   nice -n -10 bench/run.sh      # on a shared machine: less disturbed by other processes
#
# Extra arguments go to sparsetopk_bench (e.g. --benchmark_filter=...; the
# report then covers only what ran).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=/usr/bin/python3            # Debian's, with numpy, scikit-learn, matplotlib
MIN_TIME=${MIN_TIME:-0.2}
REPETITIONS=${REPETITIONS:-3}      # interleaved at random; the report keeps the fastest
BUILD=build-bench
OUT=$BUILD/results
NICENESS=$(nice)
COMMAND="MIN_TIME=$MIN_TIME REPETITIONS=$REPETITIONS $([ "$NICENESS" = 0 ] || echo "nice -n $NICENESS ")bench/run.sh${*:+ $*}"

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSPARSETOPK_BUILD_BENCH=ON \
  -DSPARSETOPK_BUILD_TESTS=OFF -DSPARSETOPK_BUILD_CLI=OFF -DSPARSETOPK_BUILD_TORCH=OFF >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target sparsetopk_bench sparsetopk_bench_data sparsetopk_dykstra_accuracy

mkdir -p "$OUT/data"
start=$(date +%s)
echo "== inputs" && "$BUILD/bin/sparsetopk_bench_data" "$OUT/data"
echo "== Google Benchmark (C++: floors, at::topk, sparsetopk)"
"$BUILD/bin/sparsetopk_bench" --benchmark_min_time="$MIN_TIME" \
  --benchmark_repetitions="$REPETITIONS" --benchmark_enable_random_interleaving=true \
  --benchmark_display_aggregates_only=true \
  --benchmark_context=min_time="${MIN_TIME} s",repetitions="$REPETITIONS" \
  --benchmark_out="$OUT/bench.json" --benchmark_out_format=json "$@"
echo "== scikit-learn isotonic_regression"
"$PYTHON" bench/sklearn_isotonic.py --data "$OUT/data" --out "$OUT/sklearn.json" --min-time "$MIN_TIME"
echo "== Dykstra accuracy"
"$BUILD/bin/sparsetopk_dykstra_accuracy" "$OUT/dykstra_accuracy.json"
echo "== report"
"$PYTHON" bench/report.py --bench "$OUT/bench.json" --sklearn "$OUT/sklearn.json" \
  --accuracy "$OUT/dykstra_accuracy.json" --notes bench/performance_notes.md \
  --command "$COMMAND" --md docs/performance.md --png docs/performance.png
rm -rf "$OUT/data"
echo "wrote docs/performance.md and docs/performance.png in $(( $(date +%s) - start )) s"
