"""Report for sparse fine-tuning of a small ViT (build/bin/vit_finetune, CSV vit_finetune.csv).

Tables: accuracy of the hard-pruned network after fine-tuning (finetuned_acc),
mean ± sample std over seeds, one row per method and one column per sparsity,
best mean per column in bold, with the dense accuracy before pruning and the
accuracy right after one-shot magnitude pruning (no fine-tuning) as reference
rows; a second table with the weights kept, the accuracy of the weights as
trained, the soft operators' peak nnz/k and the seconds per run; the settings
read from the CSV; and the plot vit_accuracy.png (accuracy against sparsity,
error bars = std).
"""
from __future__ import annotations

import pathlib

from . import common

APP = "vit"
CSV_NAME = "vit_finetune.csv"
FIGURE = "vit_accuracy.png"

COLUMNS = (
    "method,sparsity,seed,eval_split,dense_acc,oneshot_acc,finetuned_acc,as_trained_acc,nnz,prunable,"
    "total_params,steps,epochs,batch_size,lr,band,anneal,l_start,soft_nnz_over_k_max,train_loss,train_acc,"
    "seconds,pretrain_steps,pretrain_seconds,checkpoint_loaded"
).split(",")

METHODS = ("oneshot", "gradual", "ste", "soft2", "soft43")
LABELS = {
    "oneshot": "one-shot magnitude pruning, then fine-tuning (mask fixed)",
    "gradual": "gradual magnitude pruning (cubic schedule)",
    "ste": "hard top-k, straight-through",
    "soft2": "soft top-k in magnitude, p = 2",
    "soft43": "soft top-k in magnitude, p = 4/3",
}
SHORT_LABELS = {"oneshot": "one-shot + fine-tune", "gradual": "gradual", **common.PRUNING_SHORT_LABELS}
STYLES = {
    "oneshot": dict(color="black", marker="s", linestyle="--"),
    "gradual": dict(color="tab:purple", marker="v"),
    **common.PRUNING_STYLES,
}


def _settings(rows) -> str:
    soft = [r for r in rows if r["method"] in ("soft2", "soft43", "global43")]
    anneal = {1: "annealed linearly to 1%", 0: "not annealed"}
    parts = [
        f"{common.joined(rows, 'steps')} fine-tuning steps "
        f"({common.joined(rows, 'epochs', lambda e: f'{e:.2f}')} epochs)",
        f"batch {common.joined(rows, 'batch_size')}",
        f"Adam lr {common.joined(rows, 'lr')} (cosine-decayed)",
    ]
    if soft:
        annealing = common.joined(soft, "anneal", lambda a: anneal.get(a, str(a)))
        parts.append(f"band b = {common.joined(soft, 'band')} ({annealing})")
    parts.append(f"{common.seeds_phrase(rows)} (fine-tuning batch order; "
                 f"every run starts from the same dense checkpoint)")
    parts.append(f"pre-training {common.joined(rows, 'pretrain_steps')} steps")
    pretrain_seconds = [s for s in common.distinct(rows, "pretrain_seconds") if s > 0]
    if pretrain_seconds:
        parts[-1] += f" ({'/'.join(f'{s:.0f}' for s in pretrain_seconds)} s)"
    elif all(r["checkpoint_loaded"] == 1 for r in rows):
        parts[-1] += " (checkpoint from an earlier run, reused)"
    return "Settings (from the CSV): " + ", ".join(parts) + "."


def spread_phrase(ns: set) -> str:
    """How the table's cells spread, for the seed counts ns of its cells."""
    if ns == {1}:
        return "1 seed, so no spread"
    if len(ns) == 1:
        return f"mean ± standard deviation (sample, n - 1) over {min(ns)} fine-tuning seeds"
    return "mean ± standard deviation (sample, n - 1) over the n seeds given in each cell"


def plot(stats, methods, sparsities, dense, oneshot_only, split, figures_dir, labels=None, styles=None,
         figure=FIGURE, title="Sparse fine-tuning of a small ViT on Fashion-MNIST") -> str:
    """Accuracy against sparsity per method (vit_global.py passes its own labels, styles, figure
    and title); oneshot_only (one-shot without fine-tuning per sparsity) may be empty."""
    labels, styles = labels or SHORT_LABELS, styles or STYLES
    fig, ax = common.new_figure(7.5, 4.0)
    common.plot_mean_std_lines(ax, stats, methods, sparsities, labels, styles)
    # The fine-tuned methods differ by a few points: zoom on them (and the dense
    # line); the one-shot accuracies without fine-tuning are far below, in the table.
    finite = [stats[k][0] for k in stats if stats[k][2] > 0]
    low = min(finite) - 0.03 if finite else 0.0
    high = max(finite + ([dense] if dense is not None else [])) + 0.02 if finite else 1.0
    if oneshot_only and min(oneshot_only.values()) >= low:
        xs = sorted(oneshot_only)
        ax.plot(xs, [oneshot_only[s] for s in xs], color="gray", marker="x", linestyle=":",
                label="one-shot, no fine-tuning")
    if dense is not None:
        ax.axhline(dense, color="gray", linewidth=1, linestyle="-.", label=f"dense, unpruned ({dense:.3f})")
    common.sparsity_axis(ax, sparsities, "sparsity of the prunable weights (transformer blocks)")
    ax.set_ylabel(f"{split} accuracy, hard-pruned network")
    ax.set_ylim(max(low, 0.0), min(high, 1.0))
    ax.set_title(f"{title} ({common.seeds_in_title(stats)})", fontsize=10)
    handles, shown = ax.get_legend_handles_labels()
    method_labels = [labels.get(m, m) for m in methods]
    order = sorted(range(len(shown)), key=lambda i: (shown[i] not in method_labels, i))
    common.legend_right(ax, [handles[i] for i in order], [shown[i] for i in order])
    return common.save_figure(fig, figures_dir, figure)


def render(results_dir: pathlib.Path, figures_dir: pathlib.Path) -> str | None:
    rows = common.read_results(results_dir, CSV_NAME, COLUMNS)
    if rows is None:
        return None
    split, rows = common.rows_of_one_split(rows)

    header, table, stats = common.table_of_means(
        rows, "method", "sparsity", "finetuned_acc", row_labels=LABELS, row_order=METHODS,
        col_format=lambda s: f"{common.fmt_number(s)}% sparse")
    header[0] = "method"
    methods = common.ordered((r["method"] for r in rows), METHODS)
    sparsities = common.distinct(rows, "sparsity")
    ns = {s[2] for s in stats.values() if s[2] > 0}

    # Reference rows: the dense checkpoint and one-shot pruning without fine-tuning
    # (the same for every method and seed: one value per sparsity).
    dense = common.distinct(rows, "dense_acc")
    oneshot_only = {s: common.distinct([r for r in rows if r["sparsity"] == s], "oneshot_acc")[0]
                    for s in sparsities}
    table.append(["one-shot magnitude pruning, no fine-tuning"] + [f"{oneshot_only[s]:.4f}" for s in sparsities])
    table.append(["dense checkpoint, before pruning"] + [f"{dense[0]:.4f}"] * len(sparsities))

    spread = spread_phrase(ns)
    paragraphs = [
        f"Accuracy on the {split} set of the **hard-pruned** network after fine-tuning "
        f"(exactly k = round((1 - sparsity) · numel) non-zeros in every prunable layer; {spread}; "
        f"best mean per column in bold). The last two rows are references: the same dense checkpoint "
        f"pruned once without fine-tuning, and unpruned.",
        common.markdown_table(header, table),
    ]

    detail_header = ["method", "sparsity", "non-zeros / prunable", "accuracy as trained",
                     "soft nnz/k (peak)", "seconds per run"]
    detail = []
    groups = common.group_by(rows, "method", "sparsity")
    for m in methods:
        for s in sparsities:
            g = groups.get((m, s), [])
            if not g:
                continue
            nnz = "/".join(common.fmt_int(v) for v in common.distinct(g, "nnz"))
            prunable = "/".join(common.fmt_int(v) for v in common.distinct(g, "prunable"))
            as_trained = common.fmt_mean_std(*common.mean_std([r["as_trained_acc"] for r in g]))
            soft = m in ("soft2", "soft43")
            ratio = common.fmt_mean_std(*common.mean_std([r["soft_nnz_over_k_max"] for r in g]), digits=2) \
                if soft else "—"
            seconds = common.mean_std([r["seconds"] for r in g])[0]
            detail.append([SHORT_LABELS.get(m, m), f"{common.fmt_number(s)}%", f"{nnz} / {prunable}",
                           as_trained if soft else "= hard-pruned", ratio, f"{seconds:.0f}"])
    total = "/".join(common.fmt_int(v) for v in common.distinct(rows, "total_params"))
    paragraphs.append(
        f"Details. The model has {total} parameters; the prunable ones are the qkv, attention-output, "
        f"MLP-in and MLP-out weight matrices of every block, each pruned separately (patch embedding, CLS "
        f"token, position embeddings, LayerNorms, biases and head stay dense). \"Accuracy as trained\" is "
        f"the soft network with the band of the last step (for the other methods the training weights are "
        f"the hard-pruned ones). \"soft nnz/k (peak)\" is the largest ratio, over the progress reports, of "
        f"the soft weights' non-zeros to the budget k.")
    paragraphs.append(common.markdown_table(detail_header, detail))
    paragraphs.append(_settings(rows))
    link = plot(stats, methods, sparsities, dense[0] if dense else None, oneshot_only, split, figures_dir)
    paragraphs.append(common.image(f"{split.capitalize()} accuracy against sparsity, per method", link))
    return "\n\n".join(paragraphs)
