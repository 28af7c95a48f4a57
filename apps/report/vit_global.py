"""Report for global-budget fine-tuning of the small ViT (build/bin/vit_finetune with the
global methods, CSV vit_finetune_global.csv).

Table: accuracy of the hard-pruned network after fine-tuning (finetuned_acc), mean ±
sample std over seeds, one row per method and one column per sparsity, best mean per
column in bold. The per-layer methods come from the same CSV if it has them, otherwise
from vit_finetune.csv beside it, but only if that CSV was made from the same dense
checkpoint (the same dense accuracy, one-shot accuracies and pre-training steps); the
text says which. Reference rows: the checkpoint pruned once without fine-tuning, per
layer and with one global threshold, and unpruned. A second table gives how the global
methods split the budget between the layers (kept share per layer, mean over seeds,
from the column nnz_per_layer), the settings read from the CSV, and the plot
vit_global_accuracy.png.
"""
from __future__ import annotations

import pathlib

from . import common, vit

APP = "vit_global"
CSV_NAME = "vit_finetune_global.csv"
FIGURE = "vit_global_accuracy.png"

COLUMNS = vit.COLUMNS + ["oneshot_global_acc", "layers", "prunable_per_layer", "nnz_per_layer"]

GLOBAL_METHODS = ("oneshot_global", "gradual_global", "hard_global", "ste_global", "global43")
METHODS = vit.METHODS + GLOBAL_METHODS
LABELS = {
    **{m: f"{label} — per layer" for m, label in vit.LABELS.items()},
    "oneshot_global": "one-shot global magnitude pruning (global_unstructured), then fine-tuning (mask fixed)",
    "gradual_global": "gradual global magnitude pruning (cubic schedule)",
    "hard_global": "global hard top-k (gradient to the kept weights)",
    "ste_global": "global hard top-k, straight-through",
    "global43": "global soft top-k in magnitude, p = 4/3",
}
SHORT_LABELS = {
    **vit.SHORT_LABELS,
    "oneshot_global": "global one-shot + fine-tune",
    "gradual_global": "global gradual",
    "hard_global": "global hard",
    "ste_global": "global straight-through",
    "global43": "global soft p = 4/3",
}
STYLES = {
    **vit.STYLES,
    "oneshot_global": dict(color="black", marker="s", linestyle=":"),
    "gradual_global": dict(color="tab:purple", marker="v", linestyle=":"),
    "hard_global": dict(color="tab:brown", marker="x", linestyle=":"),
    "ste_global": dict(color="tab:green", marker="^", linestyle=":"),
    "global43": dict(color="tab:red", marker="o", linestyle="-"),
}


def _same_checkpoint(a, b) -> bool:
    """Whether two sets of rows were fine-tuned from the same dense checkpoint, as far as the
    CSVs tell: the same dense accuracy, one-shot accuracies per sparsity and pre-training."""
    keys = ("dense_acc", "pretrain_steps", "eval_split")
    if any(common.distinct(a, k) != common.distinct(b, k) for k in keys):
        return False
    for s in set(common.distinct(a, "sparsity")) & set(common.distinct(b, "sparsity")):
        if common.distinct([r for r in a if r["sparsity"] == s], "oneshot_acc") != \
                common.distinct([r for r in b if r["sparsity"] == s], "oneshot_acc"):
            return False
    return True


def _per_layer_rows(results_dir: pathlib.Path, rows) -> tuple[list, str]:
    """(per-layer rows to add, a sentence on where they come from)."""
    if any(r["method"] in vit.METHODS for r in rows):
        return [], "All rows, per-layer and global, come from this CSV (one program build, one checkpoint)."
    other = common.read_results(results_dir, vit.CSV_NAME, vit.COLUMNS)
    if other is None:
        return [], f"No per-layer rows: {vit.CSV_NAME} not found."
    _, other = common.rows_of_one_split(other)
    sparsities = set(common.distinct(rows, "sparsity"))
    other = [r for r in other if r["sparsity"] in sparsities and r["method"] in vit.METHODS]
    if not other:
        return [], f"No per-layer rows: {vit.CSV_NAME} has none at these sparsities."
    if not _same_checkpoint(rows, other):
        return [], (f"No per-layer rows: {vit.CSV_NAME} was made from another dense checkpoint "
                    f"(its dense or one-shot accuracies differ).")
    return other, (f"The per-layer rows are those of {vit.CSV_NAME} (the table above): the global runs "
                   f"started from a checkpoint with the same dense and one-shot accuracies.")


def _split_table(rows, sparsities):
    """Kept share of each prunable layer under the global methods (mean over seeds)."""
    global_rows = [r for r in rows if r["method"] in GLOBAL_METHODS]
    if not global_rows:
        return None
    names = str(global_rows[0]["layers"]).split(";")
    sizes = [int(x) for x in str(global_rows[0]["prunable_per_layer"]).split(";")]
    header = ["method", "sparsity"] + names
    table = []
    groups = common.group_by(global_rows, "method", "sparsity")
    for m in common.ordered((r["method"] for r in global_rows), GLOBAL_METHODS):
        for s in sparsities:
            g = groups.get((m, s), [])
            if not g:
                continue
            shares = [[int(x) / size for x, size in zip(str(r["nnz_per_layer"]).split(";"), sizes)] for r in g]
            means = [sum(col) / len(col) for col in zip(*shares)]
            table.append([SHORT_LABELS.get(m, m), f"{common.fmt_number(s)}%"] +
                         [f"{100 * x:.1f}%" for x in means])
    return header, table, names, sizes


def render(results_dir: pathlib.Path, figures_dir: pathlib.Path) -> str | None:
    rows = common.read_results(results_dir, CSV_NAME, COLUMNS)
    if rows is None:
        return None
    split, rows = common.rows_of_one_split(rows)
    per_layer, source = _per_layer_rows(results_dir, rows)
    all_rows = per_layer + rows

    header, table, stats = common.table_of_means(
        all_rows, "method", "sparsity", "finetuned_acc", row_labels=LABELS, row_order=METHODS,
        col_format=lambda s: f"{common.fmt_number(s)}% sparse")
    header[0] = "method"
    methods = common.ordered((r["method"] for r in all_rows), METHODS)
    sparsities = common.distinct(rows, "sparsity")
    ns = {s[2] for s in stats.values() if s[2] > 0}

    def one_per_sparsity(key):
        return {s: common.distinct([r for r in rows if r["sparsity"] == s], key)[0] for s in sparsities}

    oneshot, oneshot_global = one_per_sparsity("oneshot_acc"), one_per_sparsity("oneshot_global_acc")
    dense = common.distinct(rows, "dense_acc")
    table.append(["one-shot magnitude pruning per layer, no fine-tuning"] +
                 [f"{oneshot[s]:.4f}" for s in sparsities])
    table.append(["one-shot global magnitude pruning, no fine-tuning"] +
                 [f"{oneshot_global[s]:.4f}" for s in sparsities])
    table.append(["dense checkpoint, before pruning"] + [f"{dense[0]:.4f}"] * len(sparsities))

    spread = vit.spread_phrase(ns)
    nnz = {s: "/".join(common.fmt_int(v) for v in common.distinct([r for r in rows if r["sparsity"] == s], "nnz"))
           for s in sparsities}
    prunable = "/".join(common.fmt_int(v) for v in common.distinct(rows, "prunable"))
    paragraphs = [
        f"Accuracy on the {split} set of the **hard-pruned** network after fine-tuning; {spread}; best mean "
        f"per column in bold. Per-layer methods keep k = round((1 - sparsity) · numel) weights in every "
        f"prunable layer, global methods K = the sum of those k over all of them, split by magnitude "
        f"(hard_topk_mag_global); both keep "
        + ", ".join(f"{nnz[s]} of {prunable} at {common.fmt_number(s)}%" for s in sparsities)
        + f". The last three rows are references: the same dense checkpoint pruned once without "
        f"fine-tuning, per layer and with one global threshold, and unpruned. {source}",
        common.markdown_table(header, table),
    ]

    split_table = _split_table(rows, sparsities)
    if split_table is not None:
        split_header, split_rows, names, sizes = split_table
        per_layer_share = ", ".join(f"{n} {common.fmt_int(size)}" for n, size in zip(names, sizes))
        paragraphs.append(
            f"How the global methods split the budget: the share of each prunable layer's weights that "
            f"the evaluated network keeps (mean over seeds; the per-layer methods keep 1 - sparsity of "
            f"every layer). Layer sizes: {per_layer_share}.")
        paragraphs.append(common.markdown_table(split_header, split_rows))

    seconds = []
    groups = common.group_by(rows, "method", "sparsity")
    for m in common.ordered((r["method"] for r in rows), METHODS):
        per_s = [f"{common.mean_std([r['seconds'] for r in groups[(m, s)]])[0]:.0f}"
                 for s in sparsities if (m, s) in groups]
        seconds.append(f"{SHORT_LABELS.get(m, m)} {'/'.join(per_s)}")
    soft = [r for r in rows if r["method"] == "global43"]
    if soft:
        ratio = [common.fmt_mean_std(*common.mean_std([r["soft_nnz_over_k_max"] for r in soft
                                                        if r["sparsity"] == s]), digits=2) for s in sparsities]
        paragraphs.append("global soft p = 4/3: peak nnz/K over the progress reports "
                          + ", ".join(f"{x} at {common.fmt_number(s)}%" for x, s in zip(ratio, sparsities))
                          + ".")
    paragraphs.append("Seconds per run (mean, by sparsity): " + "; ".join(seconds) + ".")
    paragraphs.append(vit._settings(rows))
    link = vit.plot(stats, methods, sparsities, dense[0] if dense else None, {}, split, figures_dir,
                    labels=SHORT_LABELS, styles=STYLES, figure=FIGURE,
                    title="Per-layer and global budgets, small ViT on Fashion-MNIST")
    paragraphs.append(common.image(f"{split.capitalize()} accuracy against sparsity, per-layer and global "
                                   f"budgets", link))
    return "\n\n".join(paragraphs)
