#!/usr/bin/env bash
# The main job: installs what is needed, builds, runs the CLI on SPEC.md's
# example, prints the Figure 1 curves of the paper as a table, then runs short
# versions of the applications (pruning, MoE routing, ViT fine-tuning; a few
# minutes on 2 cores) and prints their tables.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh > /dev/null
cli=build/bin/sparsetopk

echo "== SPEC.md example: x = -5 -2 3 1, k = 2, l = 0.01 =="
for mode in mask mag hard-mask hard-mag; do
  printf '%-9s ' "$mode"
  echo "-5 -2 3 1" | "$cli" "$mode" --k 2 --l 0.01
done

echo
echo "== Figure 1: x(s) = (3, 1, -1+s, s), k = 2, l = 1: out_3 + out_4 =="
s_values=$(seq -2 0.25 5)
rows() { for s in $s_values; do awk -v s="$s" 'BEGIN { printf "3 1 %.2f %.2f\n", -1 + s, s }'; done; }
sum34() { awk '{ printf "%.6f\n", $3 + $4 }'; }
paste <(echo "$s_values") \
      <(rows | "$cli" hard-mask --k 2 | sum34) \
      <(rows | "$cli" mask --k 2 --l 1 --p 2 | sum34) \
      <(rows | "$cli" mask --k 2 --l 1 --p 4/3 | sum34) |
  awk 'BEGIN { printf "%6s %10s %10s %10s\n", "s", "hard", "p=2", "p=4/3" }
       { printf "%6.2f %10s %10s %10s\n", $1, $2, $3, $4 }'

echo
echo "== Applications on Fashion-MNIST, short versions (docs/applications.md has the full runs) =="
scripts/applications.sh short build/results-short
