"""Report for pruning during training (build/bin/prune_mlp, CSV prune_mlp.csv).

Table: test accuracy of the hard-pruned network (test_acc_hard), mean ± sample
std over seeds, one row per variant and one column per sparsity, best mean per
column in bold; the kept weights per sparsity; the settings read from the CSV;
and the plot prune_mlp_accuracy.png (accuracy against sparsity, error bars = std).
"""
from __future__ import annotations

import pathlib

from . import common

APP = "prune_mlp"
CSV_NAME = "prune_mlp.csv"
FIGURE = "prune_mlp_accuracy.png"

COLUMNS = (
    "variant,sparsity,seed,steps,epochs,batch_size,lr,band,l_fc1,l_fc2,l_fc3,train_loss,train_acc,"
    "test_acc_hard,test_acc_as_trained,nnz,total_weights,soft_nnz_over_k,seconds,anneal"
).split(",")

VARIANTS = ("dense", "hard", "ste", "soft2", "soft43", "dense_global", "gradual_global", "hard_global", "global43")
LABELS = {
    "dense": "dense, then pruned once (no fine-tuning)",
    "hard": "hard top-k",
    "ste": "hard top-k, straight-through",
    "soft2": "soft, p = 2",
    "soft43": "soft, p = 4/3",
    "dense_global": "dense, then pruned once with one global threshold (global_unstructured)",
    "gradual_global": "gradual global magnitude pruning (cubic schedule, one budget over the layers)",
    "hard_global": "global hard top-k (one budget over the layers)",
    "global43": "global soft, p = 4/3 (one budget over the layers)",
}
SHORT_LABELS = {"dense": "dense, pruned after", "hard": "hard", **common.PRUNING_SHORT_LABELS,
                "dense_global": "dense, global prune after", "gradual_global": "gradual global",
                "hard_global": "global hard",
                "global43": "global soft p=4/3"}
STYLES = {
    "dense": dict(color="gray", marker="x", linestyle=":"),
    "hard": dict(color="black", marker="s", linestyle="--"),
    **common.PRUNING_STYLES,
    "dense_global": dict(color="tab:gray", marker="+", linestyle="-."),
    "gradual_global": dict(color="tab:purple", marker="v", linestyle="--"),
    "hard_global": dict(color="tab:brown", marker="D", linestyle="--"),
    "global43": dict(color="tab:red", marker="o", linestyle="-"),
}


def _settings(rows) -> str:
    """One line with the training settings, every distinct value of each setting."""
    anneal = {1: "annealed", 0: "not annealed"}
    annealing = common.joined(rows, "anneal", lambda a: anneal.get(a, str(a)))
    parts = [
        f"{common.joined(rows, 'steps')} steps ({common.joined(rows, 'epochs')} epochs)",
        f"batch {common.joined(rows, 'batch_size')}",
        f"Adam lr {common.joined(rows, 'lr')}",
        f"band b = {common.joined(rows, 'band')} ({annealing})",
        common.seeds_phrase(rows),
    ]
    return "Settings (from the CSV): " + ", ".join(parts) + "."


def _plot(stats, variants, sparsities, dense_unpruned, figures_dir, figure=FIGURE) -> str:
    fig, ax = common.new_figure(7.5, 4.0)
    common.plot_mean_std_lines(ax, stats, variants, sparsities, SHORT_LABELS, STYLES)
    if dense_unpruned is not None:
        ax.axhline(dense_unpruned, color="gray", linewidth=1, linestyle="-.",
                   label=f"dense, unpruned ({dense_unpruned:.3f})")
    common.sparsity_axis(ax, sparsities, "sparsity (share of weights removed)")
    ax.set_ylabel("test accuracy, hard-pruned network")
    ax.set_ylim(0, 1)
    ax.set_title(f"MLP 784-300-100-10 on Fashion-MNIST ({common.seeds_in_title(stats)})", fontsize=10)
    common.legend_right(ax)
    return common.save_figure(fig, figures_dir, figure)


def render(results_dir: pathlib.Path, figures_dir: pathlib.Path, csv_name: str = CSV_NAME,
           figure: str = FIGURE) -> str | None:
    """The section of `csv_name` in results_dir (prune_mlp_global.py passes its own CSV and figure)."""
    rows = common.read_results(results_dir, csv_name, COLUMNS)
    if rows is None:
        return None

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

    dense_rows = [r for r in rows if r["variant"] in ("dense", "dense_global")]
    dense_unpruned = None
    if dense_rows:
        # One dense run per seed: the same test_acc_as_trained is repeated for each sparsity.
        per_seed = {r["seed"]: r["test_acc_as_trained"] for r in dense_rows}
        m, sd, n = common.mean_std(list(per_seed.values()))
        dense_unpruned = m
        paragraphs.append(f"The dense network before pruning scores {common.fmt_mean_std(m, sd, n)} "
                          f"({n} seed{'s' if n != 1 else ''}).")
    paragraphs.append(_settings(rows))
    link = _plot(stats, variants, sparsities, dense_unpruned, figures_dir, figure)
    paragraphs.append(common.image("Test accuracy against sparsity, per variant", link))
    return "\n\n".join(paragraphs)
