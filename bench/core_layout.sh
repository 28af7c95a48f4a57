#!/usr/bin/env bash
# bench/core_small_rows.cpp at six code layouts: linked against the core's
# static library six times, with 16 to 256 bytes of padding in front of the
# core's code (SPARSETOPK_BENCH_PADDING). On the 2-core VM of
# docs/performance_python.md the same core moved by up to 30% between layouts,
# so a change is compared by the spread over the layouts, not by one binary.
#   bench/core_layout.sh [LIBRARY.a [FILTER [BLOCKS]]]
# (defaults: build/libsparsetopk.a, every case, 5 blocks). Prints, per case,
# the us per call of the six layouts, sorted.
set -euo pipefail
cd "$(dirname "$0")/.."
library=${1:-build/libsparsetopk.a}
filter=${2:-}
blocks=${3:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
paddings=(16 64 112 160 208 256)
for padding in "${paddings[@]}"; do
  g++ -std=c++20 -O3 -DNDEBUG -Iinclude -DSPARSETOPK_BENCH_PADDING="$padding" bench/core_small_rows.cpp "$library" \
    -pthread -o "$work/core_small_rows_$padding"
  "$work/core_small_rows_$padding" --blocks "$blocks" ${filter:+"$filter"} | grep -v '^#' >"$work/times_$padding"
done
echo "# us per call at paddings ${paddings[*]} (sorted); $library"
paste -d'|' "$work"/times_* | awk -F'|' '{
  name = substr($1, 1, 36); line = sprintf("%-36s", name); n = 0
  for (i = 1; i <= NF; ++i) { split(substr($i, 37), f, " "); t[++n] = f[1] + 0 }
  for (i = 1; i <= n; ++i) for (j = i + 1; j <= n; ++j) if (t[j] < t[i]) { s = t[i]; t[i] = t[j]; t[j] = s }
  for (i = 1; i <= n; ++i) line = line sprintf(" %8.2f", t[i])
  print line }'
