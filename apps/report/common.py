"""Helpers shared by the report modules: CSV reading, mean ± std, Markdown tables, figures.

Every app module in this package defines

    render(results_dir: pathlib.Path, figures_dir: pathlib.Path) -> str | None

which reads ``results_dir/<app>.csv``, returns None when that file is absent,
writes its PNGs ``<app-prefix>_*.png`` into figures_dir and returns a Markdown
body whose image links are relative to docs/ (``figures/<name>.png``).
"""
from __future__ import annotations

import csv
import math
import pathlib
from typing import Callable, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

FIGURE_LINK_DIR = "figures"  # image links are relative to docs/


def _convert(text: str):
    """'3' -> 3, '0.25' -> 0.25, anything else stays a string ('' stays '')."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_csv(path: pathlib.Path) -> list[dict] | None:
    """Rows of a CSV with a header line, numbers converted; None if the file does not exist."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise ValueError(f"{path}: empty file (no header line)")
        rows = []
        for line, raw in enumerate(reader, start=2):
            if None in raw or any(value is None for value in raw.values()):
                raise ValueError(f"{path}:{line}: expected {len(reader.fieldnames)} fields")
            rows.append({key: _convert(value.strip()) for key, value in raw.items()})
    return rows


def require_columns(rows: Sequence[dict], columns: Iterable[str], path) -> None:
    """Raise ValueError naming the file and the columns it lacks."""
    if not rows:
        return
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")


def read_results(results_dir: pathlib.Path, csv_name: str, columns: Iterable[str]) -> list[dict] | None:
    """Rows of results_dir/csv_name (see read_csv); None if the file does not exist.

    Raises ValueError naming the file if it has no data rows or lacks one of `columns`.
    """
    path = pathlib.Path(results_dir) / csv_name
    rows = read_csv(path)
    if rows is None:
        return None
    if not rows:
        raise ValueError(f"{path}: no data rows")
    require_columns(rows, columns, path)
    return rows


def rows_of_one_split(rows: Sequence[dict]) -> tuple[str, list[dict]]:
    """(split, its rows): the rows evaluated on "test" if any, else on the first split named."""
    splits = distinct(rows, "eval_split")
    split = "test" if "test" in splits else splits[0]
    return split, [r for r in rows if r["eval_split"] == split]


def group_by(rows: Iterable[dict], *keys: str) -> dict:
    """{(row[k1], row[k2], ...): [rows]} (a 1-tuple key for one column), in first-seen order."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return groups


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation with n - 1, n); the std is NaN when n < 2."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan, n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var), n


def fmt_mean_std(mean: float, std: float, n: int, digits: int = 4, show_n: bool = False) -> str:
    """'0.8186 ± 0.0123', '0.8186' when n < 2, with ' (n = 2)' appended if show_n; '—' when n = 0."""
    if n == 0:
        return "—"
    text = f"{mean:.{digits}f}"
    if n >= 2:
        text += f" ± {std:.{digits}f}"
    if show_n:
        text += f" (n = {n})"
    return text


def fmt_number(value) -> str:
    """90 -> '90', 97.5 -> '97.5', 0.001 -> '0.001' (no trailing zeros)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def fmt_int(value) -> str:
    """26620 -> '26,620'."""
    return f"{int(round(value)):,}"


def bold(text: str) -> str:
    return f"**{text}**"


def best_indices(values: Sequence[float], larger_is_better: bool = True) -> set[int]:
    """Indices of the best finite values (all of them on a tie)."""
    finite = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not finite:
        return set()
    best = (max if larger_is_better else min)(v for _, v in finite)
    return {i for i, v in finite if v == best}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table (no trailing newline); '|' inside cells is escaped."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells, header has {len(header)}")
    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(r) for r in rows])


def distinct(rows: Iterable[dict], key: str, sort: bool = True) -> list:
    """Distinct values of a column (sorted, or in first-seen order)."""
    seen = list(dict.fromkeys(row[key] for row in rows))
    return sorted(seen) if sort else seen


def ordered(values: Iterable, preferred: Sequence) -> list:
    """values in the order of `preferred`, then any others in first-seen order."""
    values = list(dict.fromkeys(values))
    return [v for v in preferred if v in values] + [v for v in values if v not in preferred]


def joined(rows: Iterable[dict], key: str, fmt: Callable = fmt_number) -> str:
    """The distinct values of a column, sorted, formatted and joined by '/': '1/2'."""
    return "/".join(fmt(v) for v in distinct(rows, key))


def seeds_phrase(rows: Iterable[dict]) -> str:
    """'seed 1' or 'seeds 1, 2, 3': the distinct seeds of the rows."""
    seeds = distinct(rows, "seed")
    return f"seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))}"


def save_figure(fig, figures_dir: pathlib.Path, name: str) -> str:
    """Lay fig out (tight), write it to figures_dir/name, close it, return the Markdown link target
    'figures/name'."""
    figures_dir = pathlib.Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(figures_dir / name, metadata={"Software": None})
    plt.close(fig)
    return f"{FIGURE_LINK_DIR}/{name}"


def image(alt: str, link: str) -> str:
    return f"![{alt}]({link})"


def new_figure(width: float = 6.0, height: float = 4.0):
    """(fig, ax) with the project's plot defaults."""
    fig, ax = plt.subplots(figsize=(width, height), dpi=150)
    ax.grid(alpha=0.3)
    return fig, ax


def table_of_means(
    rows: Sequence[dict],
    row_key: str,
    col_key: str,
    value: str | Callable[[dict], float],
    row_labels: dict | None = None,
    row_order: Sequence = (),
    col_format: Callable = fmt_number,
    digits: int = 4,
    larger_is_better: bool = True,
) -> tuple[list[str], list[list[str]], dict]:
    """A (header, rows) table: one row per distinct row_key, one column per col_key,
    cells mean ± std of `value` over the rows in that cell, best mean per column in bold
    (compared as printed, with `digits` decimals; ties are all bold).

    n is shown in every cell only if it is not the same for all cells. Returns
    (header, table_rows, stats) with stats[(row, col)] = (mean, std, n).
    """
    get = value if callable(value) else (lambda r: r[value])
    row_labels = row_labels or {}
    row_values = ordered((r[row_key] for r in rows), row_order)
    col_values = distinct(rows, col_key)
    groups = group_by(rows, row_key, col_key)
    stats = {
        (rv, cv): mean_std([float(get(r)) for r in groups.get((rv, cv), [])])
        for rv in row_values
        for cv in col_values
    }
    ns = {s[2] for s in stats.values() if s[2] > 0}
    show_n = len(ns) > 1
    cells = {key: fmt_mean_std(*s, digits=digits, show_n=show_n) for key, s in stats.items()}
    for cv in col_values:
        # Compared at the printed precision, so that equal cells are both bold.
        means = [round(stats[(rv, cv)][0], digits) for rv in row_values]
        for i in best_indices(means, larger_is_better):
            cells[(row_values[i], cv)] = bold(cells[(row_values[i], cv)])
    header = [row_key] + [col_format(cv) for cv in col_values]
    table = [[row_labels.get(rv, str(rv))] + [cells[(rv, cv)] for cv in col_values] for rv in row_values]
    return header, table, stats


# --- accuracy against sparsity (prune_mlp and vit) ---------------------------------------------

# Short labels and plot styles of the pruning methods that prune_mlp and vit_finetune share.
PRUNING_SHORT_LABELS = {"ste": "straight-through", "soft2": "soft p = 2", "soft43": "soft p = 4/3"}
PRUNING_STYLES = {
    "ste": dict(color="tab:green", marker="^"),
    "soft2": dict(color="tab:blue", marker="o"),
    "soft43": dict(color="tab:orange", marker="D"),
}


def plot_mean_std_lines(ax, stats: dict, series: Sequence, xs: Sequence, labels: dict, styles: dict) -> None:
    """One line with error bars (the std; none when NaN) per entry of `series`, through the
    means stats[(entry, x)] = (mean, std, n) over xs; cells with n = 0 are left out, and so
    is a series without any."""
    for key in series:
        points = [(x, *stats[(key, x)]) for x in xs if stats[(key, x)][2] > 0]
        if not points:
            continue
        ax.errorbar([p[0] for p in points], [p[1] for p in points],
                    yerr=[0.0 if math.isnan(p[2]) else p[2] for p in points], capsize=3, linewidth=1.6,
                    markersize=5, label=labels.get(key, key), **styles.get(key, {}))


def sparsity_axis(ax, sparsities: Sequence, label: str) -> None:
    """An x axis with one tick per sparsity, labelled '90%', ..."""
    ax.set_xticks(sparsities)
    ax.set_xticklabels([f"{fmt_number(s)}%" for s in sparsities])
    ax.set_xlabel(label)


def seeds_in_title(stats: dict) -> str:
    """'1 seed', '3 seeds, mean ± std' or '2-3 seeds, mean ± std', from the n of the cells of stats."""
    ns = sorted({s[2] for s in stats.values() if s[2] > 0})
    if ns == [1]:
        return "1 seed"
    return (f"{ns[0]} seeds" if len(ns) == 1 else f"{ns[0]}-{ns[-1]} seeds") + ", mean ± std"


def legend_right(ax, handles=None, labels=None) -> None:
    """The legend right of the axes (all entries, or the given handles and labels)."""
    entries = () if handles is None else (handles, labels)
    ax.legend(*entries, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
