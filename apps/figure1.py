#!/usr/bin/python3
"""Figure 1 of Sander et al. (ICML 2023) from the sparsetopk command-line tool.

x(s) = (3, 1, -1 + s, s), k = 2, l = 1; plots out_3 + out_4 of the top-k
mask against s in [-2, 5] for the hard mask, p = 2 and p = 4/3, and writes a
PNG. Usage (from the repository root, after building):

    /usr/bin/python3 apps/figure1.py [--cli build/bin/sparsetopk] [--out docs/figure1.png]
"""
import argparse
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def run_cli(cli, mode, xs, extra):
    """One CLI call for all vectors; returns out_3 + out_4 for each."""
    text = "".join(" ".join(repr(v) for v in x) + "\n" for x in xs)
    result = subprocess.run([cli, mode, "--k", "2", *extra], input=text, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"figure1: {cli} {mode} failed: {result.stderr.strip()}")
    rows = [list(map(float, line.split())) for line in result.stdout.splitlines()]
    if len(rows) != len(xs):
        sys.exit(f"figure1: expected {len(xs)} output lines from {cli}, got {len(rows)}")
    return [row[2] + row[3] for row in rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cli", default="build/bin/sparsetopk")
    parser.add_argument("--out", default="docs/figure1.png")
    parser.add_argument("--points", type=int, default=701)
    args = parser.parse_args()

    ss = [-2.0 + 7.0 * i / (args.points - 1) for i in range(args.points)]
    xs = [(3.0, 1.0, -1.0 + s, s) for s in ss]
    curves = [
        ("hard", run_cli(args.cli, "hard-mask", xs, []), dict(color="black", linestyle="--")),
        ("p = 2", run_cli(args.cli, "mask", xs, ["--l", "1", "--p", "2"]), dict(color="tab:blue")),
        ("p = 4/3", run_cli(args.cli, "mask", xs, ["--l", "1", "--p", "4/3"]), dict(color="tab:orange")),
    ]

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=150)
    for label, ys, style in curves:
        ax.plot(ss, ys, label=label, linewidth=1.8, **style)
    ax.set_xlabel("s")
    ax.set_ylabel(r"$\mathrm{out}_3 + \mathrm{out}_4$")
    ax.set_title(r"Top-k mask, k = 2, $x(s) = (3, 1, s - 1, s)$, l = 1")
    ax.set_xlim(-2, 5)
    ax.set_ylim(-0.1, 2.1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
