"""Turns application results (CSV files) into the tables and figures of docs/applications.md.

One module per application (prune_mlp, moe, vit), each with
``render(results_dir, figures_dir) -> str | None``; see common.py for the
contract and apps/make_report.py for the command.
"""
