#!/usr/bin/env bash
# The applications of docs/applications.md on Fashion-MNIST, end to end:
# pruning during training (prune_mlp), mixture-of-experts routing (moe_router),
# sparse fine-tuning of a small ViT (vit_finetune) and fine-tuning it for
# top-k accuracy (vit_topk), then the
# report.
#
#   scripts/applications.sh short [DIR]   a few minutes on 2 cores: every program
#                                         with its --quick settings, results in DIR
#                                         (default build/results-short); prints the tables
#   scripts/applications.sh full  [DIR]   the runs behind docs/applications.md (hours
#                                         on 2 cores), results in DIR (default
#                                         docs/results); rewrites the tables and
#                                         figures of docs/applications.md
#
# Expects a release build (scripts/build.sh) and the dataset
# (/usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-short}
bin=build/bin
python=/usr/bin/python3

case "$mode" in
  short)
    out=${2:-build/results-short}
    mkdir -p "$out"
    echo "== prune_mlp --quick (all variants, 90% sparsity) =="
    "$bin/prune_mlp" --quick --out "$out/prune_mlp.csv" | grep -E "test accuracy|wrote"
    echo "== moe_router --quick =="
    "$bin/moe_router" --quick --routers topk,soft --out "$out/moe_router.csv" | grep -vE "\] step "
    echo "== vit_finetune --quick =="
    "$bin/vit_finetune" --quick --methods oneshot,soft43 --retrain --checkpoint "$out/vit_quick.pt" --out "$out/vit_finetune.csv" |
      grep -vE "\] step "
    echo "== vit_topk --quick =="
    "$bin/vit_topk" --quick --retrain --checkpoint "$out/vit_topk_quick.pt" --out "$out/vit_topk.csv" |
      grep -vE "\] step "
    echo
    "$python" apps/make_report.py --results "$out" --print
    ;;
  full)
    out=${2:-docs/results}
    mkdir -p "$out"
    "$bin/prune_mlp" --epochs 3 --batch-size 256 --seeds 1,2,3 --variants dense,hard,ste,soft2,soft43 \
      --sparsities 90,95,98,99 --log-every 100 --threads 1 --out "$out/prune_mlp.csv" | tee "$out/prune_mlp.log"
    "$bin/prune_mlp" --epochs 3 --batch-size 256 --seeds 1,2,3 \
      --variants dense,dense_global,hard,hard_global,soft43,global43,gradual_global \
      --sparsities 90,95,98,99 --log-every 100 --threads 1 --out "$out/prune_mlp_global.csv" |
      tee "$out/prune_mlp_global.log"
    moe=(--steps 400 --batch-size 128 --log-every 100 --threads 1 --soft-l 0.5 --aux-loss 0.01 --lr 1e-3)
    "$bin/moe_router" "${moe[@]}" --routers topk,topk3,soft,soft2 --seeds 1,2,3 --out "$out/moe_parts.csv" |
      tee "$out/moe_router.log"
    "$bin/moe_router" "${moe[@]}" --routers dense --seeds 1 --out "$out/moe_dense.csv" | tee -a "$out/moe_router.log"
    { cat "$out/moe_parts.csv"; tail -n +2 "$out/moe_dense.csv"; } > "$out/moe_router.csv"
    rm "$out/moe_parts.csv" "$out/moe_dense.csv"
    "$bin/vit_finetune" --val-size 5000 --pretrain-epochs 5 --checkpoint "$out/vit_dense.pt" --retrain \
      --finetune-steps 150 --seeds 1,2,3 --sparsities 90,95 --methods oneshot,gradual,ste,soft2,soft43 \
      --lr 3e-3 --band 1 --log-every 50 --threads 1 --out "$out/vit_finetune.csv" | tee "$out/vit_finetune.log"
    # Global budgets against per-layer ones, from the same checkpoint (docs/applications.md).
    "$bin/vit_finetune" --val-size 5000 --pretrain-epochs 5 --checkpoint "$out/vit_dense.pt" \
      --finetune-steps 150 --seeds 1,2,3 --sparsities 90,95 \
      --methods oneshot,gradual,ste,soft2,soft43,oneshot_global,gradual_global,hard_global,ste_global,global43 \
      --lr 3e-3 --band 1 --log-every 50 --threads 1 --out "$out/vit_finetune_global.csv" |
      tee "$out/vit_finetune_global.log"
    "$bin/vit_topk" --val-size 5000 --pretrain-epochs 5 --checkpoint "$out/vit_topk_pairs.pt" --retrain \
      --finetune-steps 300 --seeds 1,2,3 --noise 0,20 --lr 1e-2 --threads 1 --out "$out/vit_topk.csv" |
      tee "$out/vit_topk.log"
    "$python" apps/make_report.py --results "$out" --docs docs/applications.md --figures docs/figures
    ;;
  *)
    echo "usage: scripts/applications.sh short|full [results-dir]" >&2
    exit 2
    ;;
esac
