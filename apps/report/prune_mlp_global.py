"""Report for global-budget pruning (build/bin/prune_mlp with the global variants,
CSV prune_mlp_global.csv): the same table and plot as prune_mlp.py, for the run
that compares one budget over the three layers (dense_global, gradual_global,
hard_global, global43) with per-layer budgets, written to prune_mlp_global_accuracy.png.
"""
from __future__ import annotations

import pathlib

from . import prune_mlp

APP = "prune_mlp_global"
CSV_NAME = "prune_mlp_global.csv"
FIGURE = "prune_mlp_global_accuracy.png"


def render(results_dir: pathlib.Path, figures_dir: pathlib.Path) -> str | None:
    return prune_mlp.render(results_dir, figures_dir, csv_name=CSV_NAME, figure=FIGURE)
