"""Report for fine-tuning the ViT for top-k accuracy (build/bin/vit_topk, CSV vit_topk.csv).

Tables: top-1, top-3 and top-5 accuracy on the evaluation pairs, mean ± sample
std over seeds, one row per method, one table per label-noise level, best mean
per column in bold; and the plot vit_topk_accuracy.png (top-1 and top-5 per
method, clean against noisy labels, error bars = std).
"""
from __future__ import annotations

import pathlib

from . import common

APP = "vit_topk"
CSV_NAME = "vit_topk.csv"
FIGURE = "vit_topk_accuracy.png"

COLUMNS = ("method,loss,k,p,noise,seed,eval_split,top1,top3,top5,labels_changed,train_pairs,eval_pairs,steps,"
           "batch_size,lr,l,svm_tau,svm_alpha,train_loss,train_acc,seconds").split(",")
METHODS = ("ce", "topk1_p43", "topk3_p43", "topk5_p43", "topk1_p2", "topk3_p2", "topk5_p2", "svm1", "svm3", "svm5")
METRICS = ("top1", "top3", "top5")


def _stats(rows, methods, noises):
    """{(method, noise, metric): (mean, std, n)}."""
    groups = common.group_by(rows, "method", "noise")
    return {(m, z, metric): common.mean_std([r[metric] for r in groups[(m, z)]])
            for m in methods for z in noises if (m, z) in groups for metric in METRICS}


def _table(stats, methods, noise) -> str:
    header = ["method", "seeds", "top-1", "top-3", "top-5"]
    present = [m for m in methods if (m, noise, "top1") in stats]
    best = {metric: common.best_indices([stats[(m, noise, metric)][0] for m in present]) for metric in METRICS}
    table = []
    for i, m in enumerate(present):
        cells = [common.fmt_mean_std(*stats[(m, noise, metric)], digits=3) for metric in METRICS]
        cells = [common.bold(c) if i in best[metric] else c for c, metric in zip(cells, METRICS)]
        table.append([f"`{m}`", str(stats[(m, noise, "top1")][2])] + cells)
    return common.markdown_table(header, table)


def _plot(stats, methods, noises, figures_dir) -> str:
    fig, axes = common.new_figure(width=9.0, height=3.6)
    fig.clf()
    axes = fig.subplots(1, len(noises), sharey=True, squeeze=False)[0]
    width = 0.38
    for ax, noise in zip(axes, noises):
        present = [m for m in methods if (m, noise, "top1") in stats]
        xs = range(len(present))
        for offset, metric, color in ((-width / 2, "top1", "tab:blue"), (width / 2, "top5", "tab:orange")):
            means = [stats[(m, noise, metric)][0] for m in present]
            stds = [stats[(m, noise, metric)][1] for m in present]
            ax.bar([x + offset for x in xs], means, width, yerr=stds, capsize=2, color=color,
                   label=metric.replace("top", "top-"))
        ax.set_xticks(list(xs))
        ax.set_xticklabels(present, rotation=45, ha="right", fontsize=8)
        ax.set_title("clean labels" if noise == 0 else f"{common.fmt_number(noise)}% of training labels random")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("test accuracy (mean ± std over seeds)")
    axes[0].legend(loc="lower left", fontsize=8)
    return common.save_figure(fig, figures_dir, FIGURE)


def render(results_dir: pathlib.Path, figures_dir: pathlib.Path) -> str | None:
    rows = common.read_results(results_dir, CSV_NAME, COLUMNS)
    if rows is None:
        return None
    split, rows = common.rows_of_one_split(rows)
    methods = common.ordered((r["method"] for r in rows), METHODS)
    noises = common.distinct(rows, "noise")
    stats = _stats(rows, methods, noises)
    parts = []
    for noise in noises:
        title = "clean labels" if noise == 0 else f"{common.fmt_number(noise)}% of the training labels replaced at random"
        parts.append(f"**{title}** ({split} pairs; mean ± sample sd over the seeds; best mean in bold):")
        parts.append(_table(stats, methods, noise))
    parts.append(common.image("top-1 and top-5 accuracy per loss, clean and noisy labels",
                              _plot(stats, methods, noises, figures_dir)))
    parts.append(f"Rows in [`results/{CSV_NAME}`](results/{CSV_NAME}): {len(rows)}; "
                 f"{common.joined(rows, 'steps')} fine-tuning steps, batch {common.joined(rows, 'batch_size')}, "
                 f"lr {common.joined(rows, 'lr')}.")
    return "\n\n".join(parts)
