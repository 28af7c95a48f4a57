"""Report for expert choice against token choice (build/bin/moe_router with the
expert router, CSV moe_router_expert.csv).

Table: per router, accuracy on the evaluation set, experts per token (mean, and
the fraction of tokens that no expert evaluates), and the load across experts
as tokens per expert: max / mean (1 = perfectly balanced; the CSV's load_max
is a share of the assignments, so max / mean = load_max * experts) and the
coefficient of variation; mean ± sample std over seeds.
"""
from __future__ import annotations

import pathlib

from . import common, moe

APP = "moe_expert"
CSV_NAME = "moe_router_expert.csv"
COLUMNS = moe.COLUMNS + ["zero_expert_fraction", "train_zero_expert_fraction"]


def render(results_dir: pathlib.Path, figures_dir: pathlib.Path) -> str | None:
    del figures_dir  # a table only
    rows = common.read_results(results_dir, CSV_NAME, COLUMNS)
    if rows is None:
        return None
    # one group per router, and per l_rel for the soft ones (token choice "soft*", expert choice "expert")
    groups = {}
    for r in rows:
        soft = str(r["router"]).startswith("soft") or r["router"] == "expert"
        groups.setdefault((r["router"], r["l_rel"] if soft else 0), []).append(r)
    order = {name: i for i, name in enumerate(moe.ROUTERS)}
    keys = sorted(groups, key=lambda k: (order.get(k[0], len(order)), str(k[0]), k[1]))
    ns = sorted({len(g) for g in groups.values()})
    spread = ("1 seed, so no spread" if ns == [1]
              else f"mean ± sample standard deviation over {'/'.join(map(str, ns))} seeds")

    def stat(g, f, digits):
        return common.fmt_mean_std(*common.mean_std([f(r) for r in g]), digits=digits)

    header = ["router", "l", "accuracy", "experts/token (mean)", "tokens with no expert", "tokens per expert: max / mean",
              "load CV"]
    accuracies = [round(common.mean_std([float(r["eval_acc"]) for r in groups[k]])[0], 4) for k in keys]
    best = common.best_indices(accuracies)
    table = []
    for i, key in enumerate(keys):
        g = groups[key]
        acc = stat(g, lambda r: float(r["eval_acc"]), 4)
        table.append([
            moe._label((key[0], 0), False, moe._one_k(g)),
            f"{common.fmt_number(key[1])}·s" if key[1] else "—",
            common.bold(acc) if i in best else acc,
            stat(g, lambda r: float(r["experts_per_token_mean"]), 3),
            stat(g, lambda r: float(r["zero_expert_fraction"]), 4),
            stat(g, lambda r: float(r["load_max"]) * float(r["experts"]), 3),
            stat(g, lambda r: float(r["load_cv"]), 3),
        ])
    eval_sets = " and ".join(f"{s} set" for s in common.distinct(rows, "eval_set"))
    return "\n\n".join([
        f"Accuracy on the {eval_sets} ({common.joined(rows, 'eval_examples', common.fmt_int)} images, in "
        f"evaluation batches of {common.joined(rows, 'eval_batch', common.fmt_int)} images), and routing on "
        f"the same images ({spread}; best accuracy in bold). l: the soft routers' l, relative to s, the "
        "running mean over tokens of the std of a token's router logits. Load: tokens each expert "
        "evaluates, max over experts / mean over experts, and the coefficient of variation (std / mean) "
        "of the shares.",
        common.markdown_table(header, table),
        moe._settings(rows),
    ])
