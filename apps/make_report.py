#!/usr/bin/python3
"""Turns application results into the PNG figures and tables of docs/applications.md.

Usage (any working directory; relative paths are taken from it):

    /usr/bin/python3 apps/make_report.py --results DIR [--docs docs/applications.md]
                                         [--figures docs/figures] [--print]

For each report module (apps/report/prune_mlp.py, prune_mlp_global.py, moe.py,
moe_expert.py, vit.py, vit_global.py, vit_topk.py) it calls
render(results_dir, figures_dir), which reads DIR/<app>.csv (prune_mlp.csv,
moe_router.csv, vit_finetune.csv), writes figures and returns Markdown. A
module that does not exist yet, or whose CSV is absent, is skipped with a
message on stderr. The returned Markdown replaces what lies between the lines
<!-- report:NAME --> and <!-- /report:NAME --> of the docs file; the rest of
the file is left untouched, and a missing marker is an error (nothing is
written then). With --print the Markdown goes to stdout instead and the docs
file is not read or written; figures are written only if --figures is given.
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import sys
import tempfile

APPS_DIR = pathlib.Path(__file__).resolve().parent
REPO = APPS_DIR.parent

# (report module in apps/report/, the CSV it reads, a title for --print)
MODULES = (
    ("prune_mlp", "prune_mlp.csv", "Pruning during training (prune_mlp)"),
    ("prune_mlp_global", "prune_mlp_global.csv", "Global-budget pruning (prune_mlp)"),
    ("moe", "moe_router.csv", "Mixture-of-experts routing (moe_router)"),
    ("moe_expert", "moe_router_expert.csv", "Expert choice against token choice (moe_router)"),
    ("vit", "vit_finetune.csv", "ViT fine-tuning (vit_finetune)"),
    ("vit_global", "vit_finetune_global.csv", "Global-budget ViT fine-tuning (vit_finetune)"),
    ("vit_topk", "vit_topk.csv", "ViT fine-tuning for top-k accuracy (vit_topk)"),
)


class ReportError(Exception):
    """A problem with the docs file (markers); the message says which."""


def begin_marker(name: str) -> str:
    return f"<!-- report:{name} -->"


def end_marker(name: str) -> str:
    return f"<!-- /report:{name} -->"


def replace_region(text: str, name: str, body: str) -> str:
    """text with the lines strictly between the marker lines of `name` replaced by body.

    Marker lines must appear exactly once each, on lines of their own (surrounding
    whitespace allowed), the begin marker first. The result is
    begin marker, blank line, body, blank line, end marker, so running twice
    gives the same text.
    """
    lines = text.splitlines(keepends=True)
    begin, end = begin_marker(name), end_marker(name)
    starts = [i for i, line in enumerate(lines) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if not starts:
        raise ReportError(f"marker line '{begin}' not found")
    if not ends:
        raise ReportError(f"marker line '{end}' not found")
    if len(starts) > 1 or len(ends) > 1:
        raise ReportError(f"marker '{begin}' or '{end}' appears more than once")
    i, j = starts[0], ends[0]
    if j < i:
        raise ReportError(f"'{end}' comes before '{begin}'")
    newline = "\r\n" if lines[i].endswith("\r\n") else "\n"
    body = body.strip("\n")
    block = newline + newline.join(body.split("\n")) + newline + newline if body else newline
    return "".join(lines[: i + 1]) + block + "".join(lines[j:])


def load_module(name: str):
    """apps/report/<name>.py as a module, or None if that file does not exist."""
    if str(APPS_DIR) not in sys.path:
        sys.path.insert(0, str(APPS_DIR))
    try:
        return importlib.import_module(f"report.{name}")
    except ModuleNotFoundError as error:
        if error.name == f"report.{name}":
            return None
        raise


def render_all(results: pathlib.Path, figures: pathlib.Path, log=None) -> dict[str, str]:
    """{module name: Markdown} for every module that exists and has its CSV."""
    log = log or sys.stderr
    bodies = {}
    for name, csv_name, _ in MODULES:
        module = load_module(name)
        if module is None:
            print(f"make_report: skipping {name}: apps/report/{name}.py does not exist yet", file=log)
            continue
        try:
            body = module.render(results, figures)
        except ValueError as error:  # a malformed CSV: say which report it was
            raise ValueError(f"{name} report: {error}") from error
        if body is None:
            print(f"make_report: skipping {name}: {results / csv_name} not found", file=log)
            continue
        bodies[name] = body
    return bodies


def update_docs(docs: pathlib.Path, bodies: dict[str, str]) -> None:
    """Replace every rendered region of the docs file; write nothing if a marker is missing."""
    text = docs.read_text()
    for name, body in bodies.items():
        try:
            text = replace_region(text, name, body)
        except ReportError as error:
            raise ReportError(f"{docs}: {error} (needed for the {name} report)") from None
    docs.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, type=pathlib.Path,
                        help="directory with prune_mlp.csv, moe_router.csv, vit_finetune.csv")
    parser.add_argument("--docs", type=pathlib.Path, default=REPO / "docs" / "applications.md")
    parser.add_argument("--figures", type=pathlib.Path, default=None,
                        help="where the PNGs go (default docs/figures; with --print, none)")
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="print the Markdown to stdout, do not edit the docs file")
    args = parser.parse_args(argv)

    if not args.results.is_dir():
        print(f"make_report: --results {args.results}: no such directory", file=sys.stderr)
        return 2
    if not args.print_only and not args.docs.is_file():
        print(f"make_report: --docs {args.docs}: no such file", file=sys.stderr)
        return 2

    try:
        if args.print_only:
            with tempfile.TemporaryDirectory() as scratch:
                figures = args.figures or pathlib.Path(scratch)
                bodies = render_all(args.results, figures)
            titles = {name: title for name, _, title in MODULES}
            for name, body in bodies.items():
                print(f"## {titles[name]}\n\n{body.strip()}\n")
        else:
            figures = args.figures or args.docs.parent / "figures"
            bodies = render_all(args.results, figures)
            update_docs(args.docs, bodies)
            for name in bodies:
                print(f"make_report: updated the {name} section of {args.docs}")
    except (ReportError, ValueError) as error:
        print(f"make_report: {error}", file=sys.stderr)
        return 2
    if not bodies:
        print("make_report: no results found, nothing to report", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
