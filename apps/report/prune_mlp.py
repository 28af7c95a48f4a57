"""Report for pruning during training (build/bin/prune_mlp, CSV prune_mlp.csv).

Table: test accuracy of the hard-pruned network (test_acc_hard), mean ± sample
std over seeds, one row per variant and one column per sparsity, best mean per
column in bold; the kept weights per sparsity; the settings read from the CSV;
and the plot prune_mlp_accuracy.png (accuracy against sparsity, error bars = std).
"""
from __future__ import annotations

import math
import pathlib

from . import common

APP = "prune_mlp"
CSV_NAME = "prune_mlp.csv"
FIGURE = "prune_mlp_accuracy.png"

COLUMNS = (
    "variant,sparsity,seed,steps,epochs,batch_size,lr,band,l_fc1,l_fc2,l_fc3,train_loss,train_acc,"
    "test_acc_hard,test_acc_as_trained,nnz,total_weights,soft_nnz_over_k,seconds,anneal"
).split(",")

VARIANTS = ("dense", "hard", "ste", "soft2", "soft43")
LABELS = {
    "dense": "dense, then pruned once (no fine-tuning)",
    "hard": "hard top-k",
    "ste": "hard top-k, straight-through",
    "soft2": "soft, p = 2",
    "soft43": "soft, p = 4/3",
}
SHORT_LABELS = {"dense": "dense, pruned after", "hard": "hard", "ste": "straight-through",
                "soft2": "soft p = 2", "soft43": "soft p = 4/3"}
STYLES = {
    "dense": dict(color="gray", marker="x", linestyle=":"),
    "hard": dict(color="black", marker="s", linestyle="--"),
    "ste": dict(color="tab:green", marker="^"),
    "soft2": dict(color="tab:blue", marker="o"),
    "soft43": dict(color="tab:orange", marker="D"),
}


def _settings(rows) -> str:
    """One line with the training settings, every distinct value of each setting."""
    def values(key, fmt=common.fmt_number):
        return "/".join(fmt(v) for v in common.distinct(rows, key))

    seeds = common.distinct(rows, "seed")
    anneal = {1: "annealed", 0: "not annealed"}
    parts = [
        f"{values('steps')} steps ({values('epochs')} epochs)",
        f"batch {values('batch_size')}",
        f"Adam lr {values('lr')}",
        f"band b = {values('band')} ({'/'.join(anneal.get(a, str(a)) for a in common.distinct(rows, 'anneal'))})",
        f"seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))}",
    ]
    return "Settings (from the CSV): " + ", ".join(parts) + "."


def _plot(stats, variants, sparsities, dense_unpruned, figures_dir) -> str:
    fig, ax = common.new_figure(7.5, 4.0)
    for v in variants:
        pts = [(s, *stats[(v, s)]) for s in sparsities if stats[(v, s)][2] > 0]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        errs = [0.0 if math.isnan(p[2]) else p[2] for p in pts]
        ax.errorbar(xs, ys, yerr=errs, capsize=3, linewidth=1.6, markersize=5,
                    label=SHORT_LABELS.get(v, v), **STYLES.get(v, {}))
    if dense_unpruned is not None:
        ax.axhline(dense_unpruned, color="gray", linewidth=1, linestyle="-.",
                   label=f"dense, unpruned ({dense_unpruned:.3f})")
    ax.set_xticks(sparsities)
    ax.set_xticklabels([f"{common.fmt_number(s)}%" for s in sparsities])
    ax.set_xlabel("sparsity (share of weights removed)")
    ax.set_ylabel("test accuracy, hard-pruned network")
    ax.set_ylim(0, 1)
    ns = sorted({stats[key][2] for key in stats if stats[key][2] > 0})
    if ns == [1]:
        seeds = "1 seed"
    else:
        seeds = (f"{ns[0]} seeds" if len(ns) == 1 else f"{ns[0]}-{ns[-1]} seeds") + ", mean ± std"
    ax.set_title(f"MLP 784-300-100-10 on Fashion-MNIST ({seeds})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return common.save_figure(fig, figures_dir, FIGURE)


def render(results_dir: pathlib.Path, figures_dir: pathlib.Path) -> str | None:
    path = pathlib.Path(results_dir) / CSV_NAME
    rows = common.read_csv(path)
    if rows is None:
        return None
    if not rows:
        raise ValueError(f"{path}: no data rows")
    common.require_columns(rows, COLUMNS, path)

    header, table, stats = common.table_of_means(
        rows, "variant", "sparsity", "test_acc_hard", row_labels=LABELS, row_order=VARIANTS,
        col_format=lambda s: f"{common.fmt_number(s)}% sparse")
    variants = common.ordered((r["variant"] for r in rows), VARIANTS)
    sparsities = common.distinct(rows, "sparsity")
    ns = {s[2] for s in stats.values() if s[2] > 0}

    if ns == {1}:
        intro = ("Test accuracy of the hard-pruned network on the test set (1 seed, so no spread; "
                 "best per column in bold):")
    elif len(ns) == 1:
        intro = (f"Test accuracy of the hard-pruned network, mean ± standard deviation "
                 f"(sample, n - 1) over {min(ns)} seeds; best mean per column in bold:")
    else:
        intro = ("Test accuracy of the hard-pruned network, mean ± standard deviation "
                 "(sample, n - 1) over the n seeds given in each cell; best mean per column in bold:")
    paragraphs = [intro, common.markdown_table(header, table)]

    kept = []
    totals = common.distinct(rows, "total_weights")
    for s in sparsities:
        pairs = common.distinct([r for r in rows if r["sparsity"] == s], "nnz")
        kept.append(f"{common.fmt_number(s)}%: {'/'.join(common.fmt_int(p) for p in pairs)}")
    paragraphs.append(f"Non-zero weights of the evaluated network (out of "
                      f"{'/'.join(common.fmt_int(t) for t in totals)}): " + "; ".join(kept) + ".")

    dense_rows = [r for r in rows if r["variant"] == "dense"]
    dense_unpruned = None
    if dense_rows:
        # One dense run per seed: the same test_acc_as_trained is repeated for each sparsity.
        per_seed = {r["seed"]: r["test_acc_as_trained"] for r in dense_rows}
        m, sd, n = common.mean_std(list(per_seed.values()))
        dense_unpruned = m
        paragraphs.append(f"The dense network before pruning scores {common.fmt_mean_std(m, sd, n)} "
                          f"({n} seed{'s' if n != 1 else ''}).")
    paragraphs.append(_settings(rows))
    link = _plot(stats, variants, sparsities, dense_unpruned, figures_dir)
    paragraphs.append(common.image("Test accuracy against sparsity, per variant", link))
    return "\n\n".join(paragraphs)
