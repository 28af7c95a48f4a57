"""Report for mixture-of-experts routing (build/bin/moe_router, CSV moe_router.csv).

Table: per router (and soft setting), accuracy on the evaluation set (the test
set, or a validation split when the CSV says so), experts evaluated per token
(mean, and the max over every token and seed), load across experts (min, max,
coefficient of variation of the share of token-expert assignments) and time
per training step / evaluation batch, mean ± sample std over seeds. Figures:
moe_accuracy_cost.png (accuracy and experts per token per router) and
moe_load.png (share of assignments per expert, experts sorted by load within
each run, since expert numbers mean nothing across seeds). If
moe_router_pilot.csv (same columns: the runs on a validation split that chose
the soft router's l) is next to it, a table of it is added.
"""
from __future__ import annotations

import math
import pathlib

from . import common

APP = "moe"
CSV_NAME = "moe_router.csv"
PILOT_CSV_NAME = "moe_router_pilot.csv"
FIGURE_COST = "moe_accuracy_cost.png"
FIGURE_LOAD = "moe_load.png"

COLUMNS = (
    "router,p,l_rel,seed,steps,epochs,batch_size,lr,aux_loss,k,experts,train_examples,eval_set,eval_examples,"
    "train_loss,train_acc,eval_acc,experts_per_token_mean,experts_per_token_max,"
    "train_experts_per_token_mean,train_experts_per_token_max,load_min,load_max,load_cv,load,"
    "train_load_cv,l_final,ms_per_step,ms_per_eval_batch,eval_batch,seconds,threads"
).split(",")

ROUTERS = ("topk", "topk3", "soft", "soft2", "expert", "dense")
COLORS = {"topk": "black", "topk3": "tab:purple", "soft": "tab:orange", "soft2": "tab:blue", "expert": "tab:red",
          "dense": "gray"}


def _topk_n(router) -> str | None:
    """'topk3' -> '3' (the hard router with its own k), else None."""
    router = str(router)
    return router[4:] if router.startswith("topk") and router[4:].isdigit() else None


def _key(row) -> tuple:
    """One group per router, and per l_rel for the soft routers."""
    return (row["router"], row["l_rel"] if str(row["router"]).startswith("soft") else 0)


def _label(key, several_l: bool, k=None) -> str:
    """A row label; k (the group's k, if one) names the hard router's top-k."""
    router, l_rel = key
    base = {
        "topk": f"softmax + hard top-{k if k is not None else 'k'}, renormalized",
        "soft": "soft top-k, p = 4/3",
        "soft2": "soft top-k, p = 2",
        "expert": "expert choice: soft top-k of the tokens per expert, p = 4/3",
        "dense": "dense softmax (all experts)",
    }.get(router, str(router))
    if _topk_n(router):
        base = f"softmax + hard top-{_topk_n(router)}, renormalized"
    if str(router).startswith("soft") and several_l:
        base += f", l = {common.fmt_number(l_rel)}·s"
    return base


def _short(key, several_l: bool, k=None) -> str:
    router, l_rel = key
    name = {"topk": f"top-{k if k is not None else 'k'}", "soft": "soft 4/3", "soft2": "soft p=2", "expert": "expert",
            "dense": "dense"}.get(router, str(router))
    if _topk_n(router):
        name = f"top-{_topk_n(router)}"
    if str(router).startswith("soft") and several_l:
        name += f"\nl={common.fmt_number(l_rel)}s"
    return name


def _loads(row) -> list[float]:
    return [float(x) for x in str(row["load"]).split(";") if x != ""]


def _one_k(rows):
    ks = {int(r["k"]) for r in rows}
    return ks.pop() if len(ks) == 1 else None


def _stat(rows, column):
    return common.mean_std([float(r[column]) for r in rows])


def _paired(groups, keys, several_l) -> str | None:
    """Accuracy differences to the topk router seed by seed (same seed: same
    initialization and batch order), for routers that share seeds with it."""
    base = [k for k in keys if k[0] == "topk"]
    if not base:
        return None
    base_acc = {r["seed"]: float(r["eval_acc"]) for r in groups[base[0]]}
    parts = []
    for k in keys:
        if k == base[0]:
            continue
        diffs = [100 * (float(r["eval_acc"]) - base_acc[r["seed"]]) for r in groups[k] if r["seed"] in base_acc]
        if len(diffs) < 2:
            continue
        m, sd, n = common.mean_std(diffs)
        parts.append(f"{_label(k, several_l, _one_k(groups[k]))}: "
                     f"{', '.join(f'{d:+.2f}' for d in diffs)} (mean {m:+.2f} ± {sd:.2f})")
    if not parts:
        return None
    return ("Accuracy minus that of the top-k router with the same seed (same initialization and "
            "batch order), in points: " + "; ".join(parts) + ".")


def _settings(rows) -> str:
    def values(key, fmt=common.fmt_number):
        return common.joined(rows, key, fmt)

    parts = [
        f"{values('steps')} steps ({values('epochs', lambda e: f'{e:.2f}')} epochs) "
        f"on {values('train_examples', common.fmt_int)} training images",
        f"batch {values('batch_size')} images (16 tokens each)",
        f"Adam lr {values('lr')}",
        f"k = {values('k')} of {values('experts')} experts (topkN: k = N)",
        f"load-balancing loss coefficient {values('aux_loss')}",
        common.seeds_phrase(rows),
        f"{values('threads')} thread(s)",
    ]
    return "Settings (from the CSV): " + ", ".join(parts) + "."


def _plot_cost(groups, keys, several_l, figures_dir) -> str:
    fig, (ax_acc, ax_cost) = common.plt.subplots(1, 2, figsize=(9.0, 3.8), dpi=150)
    xs = list(range(len(keys)))
    labels = [_short(k, several_l, _one_k(groups[k])) for k in keys]
    colors = [COLORS.get(k[0], "tab:green") for k in keys]
    acc = [_stat(groups[k], "eval_acc") for k in keys]
    ax_acc.bar(xs, [a[0] for a in acc], yerr=[0 if math.isnan(a[1]) else a[1] for a in acc], capsize=4,
               color=colors, alpha=0.8)
    lo = min(a[0] - (0 if math.isnan(a[1]) else a[1]) for a in acc)
    hi = max(a[0] + (0 if math.isnan(a[1]) else a[1]) for a in acc)
    pad = max(0.005, 0.5 * (hi - lo))
    ax_acc.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title("accuracy (mean ± std over seeds)", fontsize=9)

    mean = [_stat(groups[k], "experts_per_token_mean") for k in keys]
    peak = [max(float(r["experts_per_token_max"]) for r in groups[k]) for k in keys]
    ax_cost.bar(xs, [m[0] for m in mean], yerr=[0 if math.isnan(m[1]) else m[1] for m in mean], capsize=4,
                color=colors, alpha=0.8, label="mean")
    ax_cost.scatter(xs, peak, marker="_", s=300, color="red", zorder=3, label="max over tokens")
    k_values = common.distinct([r for rs in groups.values() for r in rs], "k")
    for k in k_values:
        ax_cost.axhline(float(k), color="black", linewidth=0.8, linestyle=":")
    ax_cost.set_ylabel("experts evaluated per token")
    ax_cost.set_title("cost: experts per token", fontsize=9)
    ax_cost.legend(fontsize=7, loc="upper left")
    for ax in (ax_acc, ax_cost):
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    return common.save_figure(fig, figures_dir, FIGURE_COST)


def _plot_load(groups, keys, several_l, figures_dir) -> str:
    fig, ax = common.new_figure(6.5, 3.8)
    width = 0.8 / max(len(keys), 1)
    n_experts = 0
    for i, k in enumerate(keys):
        sorted_loads = [sorted(_loads(r), reverse=True) for r in groups[k]]
        sorted_loads = [s for s in sorted_loads if s]
        if not sorted_loads:
            continue
        n = min(len(s) for s in sorted_loads)
        n_experts = max(n_experts, n)
        stats = [common.mean_std([s[j] for s in sorted_loads]) for j in range(n)]
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(n)]
        ax.bar(xs, [s[0] for s in stats], width=width, yerr=[0 if math.isnan(s[1]) else s[1] for s in stats],
               capsize=2, color=COLORS.get(k[0], "tab:green"), alpha=0.85,
               label=_short(k, several_l, _one_k(groups[k])).replace("\n", " "))
    if n_experts:
        ax.axhline(1.0 / n_experts, color="black", linewidth=0.8, linestyle=":", label="uniform")
        ax.set_xticks(list(range(n_experts)))
        ax.set_xticklabels([str(j + 1) for j in range(n_experts)])
    ax.set_xlabel("expert, by rank of its load within the run")
    ax.set_ylabel("share of token-expert assignments")
    ax.set_title("load across experts on the evaluation set", fontsize=9)
    ax.legend(fontsize=7)
    return common.save_figure(fig, figures_dir, FIGURE_LOAD)


def _pilot(results_dir: pathlib.Path) -> str | None:
    path = pathlib.Path(results_dir) / PILOT_CSV_NAME
    rows = common.read_csv(path)
    if not rows:
        return None
    common.require_columns(rows, COLUMNS, path)
    header = ["router", "p", "l_rel", "seed", "accuracy", "experts/token (mean)", "experts/token (max)", "load CV"]
    table = []
    for r in rows:
        soft = str(r["router"]).startswith("soft")
        table.append([
            str(r["router"]),
            f"{float(r['p']):.3g}" if soft else "—",
            common.fmt_number(r["l_rel"]) if soft else "—",
            str(r["seed"]),
            f"{float(r['eval_acc']):.4f}",
            f"{float(r['experts_per_token_mean']):.3f}",
            common.fmt_number(r["experts_per_token_max"]),
            f"{float(r['load_cv']):.3f}",
        ])
    sets = common.joined(rows, "eval_set", str)
    return (f"Pilot that chose l (on a {sets} split of {common.joined(rows, 'eval_examples', common.fmt_int)} "
            f"training images held out from training, never the test set; "
            f"{common.joined(rows, 'steps')} steps of batch "
            f"{common.joined(rows, 'batch_size')}, one seed, so differences "
            "below about one point are within noise):\n\n" + common.markdown_table(header, table))


def render(results_dir: pathlib.Path, figures_dir: pathlib.Path) -> str | None:
    rows = common.read_results(results_dir, CSV_NAME, COLUMNS)
    if rows is None:
        return None

    groups = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    keys = sorted(groups, key=lambda k: (ROUTERS.index(k[0]) if k[0] in ROUTERS else len(ROUTERS), str(k[0]), k[1]))
    soft_l = {k[1] for k in keys if str(k[0]).startswith("soft")}
    several_l = len(soft_l) > 1

    eval_sets = common.distinct(rows, "eval_set")
    eval_examples = common.joined(rows, "eval_examples", common.fmt_int)
    eval_name = " and ".join(f"{s} set" for s in eval_sets)
    ns = sorted({len(g) for g in groups.values()})
    spread = ("1 seed, so no spread" if ns == [1]
              else f"mean ± sample standard deviation over {'/'.join(map(str, ns))} seeds")

    header = ["router", "accuracy", "experts/token (mean)", "experts/token (max)", "load min", "load max",
              "load CV", "ms / train step", "ms / eval batch"]
    table = []
    accuracies = [round(_stat(groups[k], "eval_acc")[0], 4) for k in keys]
    best = common.best_indices(accuracies)
    for i, k in enumerate(keys):
        g = groups[k]
        acc = common.fmt_mean_std(*_stat(g, "eval_acc"), digits=4)
        table.append([
            _label(k, several_l, _one_k(g)),
            common.bold(acc) if i in best else acc,
            common.fmt_mean_std(*_stat(g, "experts_per_token_mean"), digits=3),
            common.fmt_number(max(float(r["experts_per_token_max"]) for r in g)),
            common.fmt_mean_std(*_stat(g, "load_min"), digits=3),
            common.fmt_mean_std(*_stat(g, "load_max"), digits=3),
            common.fmt_mean_std(*_stat(g, "load_cv"), digits=3),
            common.fmt_mean_std(*_stat(g, "ms_per_step"), digits=1),
            common.fmt_mean_std(*_stat(g, "ms_per_eval_batch"), digits=1),
        ])
    paragraphs = [
        f"Accuracy on the {eval_name} ({eval_examples} images), experts evaluated per token and load "
        f"across experts on the same images, time per step ({spread}; best accuracy in bold). "
        "Load: share of the token-expert assignments that each expert receives (uniform = 1/experts); "
        "CV = standard deviation / mean of those shares. The max of experts/token is over every token "
        "and seed.",
        common.markdown_table(header, table),
    ]

    paired = _paired(groups, keys, several_l)
    if paired:
        paragraphs.append(paired)

    soft_keys = [k for k in keys if str(k[0]).startswith("soft")]
    if soft_keys:
        notes = []
        for k in soft_keys:
            g = groups[k]
            l_final = common.mean_std([float(r["l_final"]) for r in g])
            train_e = common.mean_std([float(r["train_experts_per_token_mean"]) for r in g])
            notes.append(f"{_label(k, several_l)}: l = {common.fmt_number(k[1])} × s, l at evaluation "
                         f"{common.fmt_mean_std(*l_final, digits=3)}, experts/token over the last training "
                         f"interval {common.fmt_mean_std(*train_e, digits=3)}")
        paragraphs.append("Soft routers (s = running mean over tokens of the std of a token's router logits): "
                          + "; ".join(notes) + ".")
    paragraphs.append("Time per step is wall-clock on a shared machine (other jobs running), so it is "
                      "indicative only; experts per token is the machine-independent cost of the expert layer.")
    paragraphs.append(_settings(rows))
    pilot = _pilot(results_dir)
    if pilot:
        paragraphs.append(pilot)
    cost = _plot_cost(groups, keys, several_l, figures_dir)
    load = _plot_load(groups, keys, several_l, figures_dir)
    paragraphs.append(common.image("Accuracy and experts evaluated per token, per router", cost))
    paragraphs.append(common.image("Load across experts, experts sorted by load within each run", load))
    return "\n\n".join(paragraphs)
