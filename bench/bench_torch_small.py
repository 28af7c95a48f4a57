#!/usr/bin/env python3
"""Per-call cost of the soft top-k operators on small inputs, against torch.topk.

Times, from Python and in one run, the eager calls

- ``torch.topk(x, k, dim=-1)``: forward (the values), and forward + backward
  (``values.sum().backward()``);
- ``sparsetopk.soft_topk_mask(x, k)`` and ``sparsetopk.soft_topk_mag(x, k)``
  with the default ``l`` and ``p = 4/3`` (the default) or ``p = 2``: forward,
  and forward + backward (``out.sum().backward()``);

on float32 inputs of the shapes 8x8, 64x8, 256x64 and 1024x64 (rows x n, the
selection along the last dim), k = 2 and 4, with torch's default thread count
and with ``torch.set_num_threads(1)``. The sparsetopk ops use at most torch's
thread count: batches of 4096 entries or more (256x64 and 1024x64 here) run in
parts on torch's intra-op threads, the others on the calling thread.

Method: each timed function runs in blocks of a fixed number of calls (chosen
so that a block takes about ``--block-ms``); a round runs one block of every
function of a (shape, k) in a random order, and ``--rounds`` rounds are run.
The time per call is the median over the rounds of the block means, the ratio
is the median over the rounds of (block mean / torch.topk's block mean in the
same round and mode): interleaving and pairing keep the ratio meaningful on a
noisy machine even when the absolute times drift. Python's garbage collector
is off inside the blocks (as in ``timeit``) and runs between rounds. In
forward + backward, ``x.grad`` is reset to None before each call.

Prints a Markdown table (and writes it to ``--output`` if given). A full run
takes 1 to 1.5 minutes on a 2-core machine. Run it from the repository root
with the package and library on the path, e.g.

    PYTHONPATH=python SPARSETOPK_LIBRARY=build/lib/libsparsetopk_torch.so \\
        python bench/bench_torch_small.py --output /tmp/small.md
"""

import argparse
import os
import platform
import random
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

import interleaved  # bench/interleaved.py
import sparsetopk
from interleaved import format_us

SHAPES = ((8, 8), (64, 8), (256, 64), (1024, 64))
KS = (2, 4)
OPERATORS = (("mask", sparsetopk.soft_topk_mask), ("mag", sparsetopk.soft_topk_mag))
PS = ((4.0 / 3.0, "4/3"), (2.0, "2"))
MODES = ("forward", "forward+backward")


def _forward(fn: Callable, x: torch.Tensor) -> Callable[[], object]:
    def run():
        return fn(x)
    return run


def _forward_backward(fn: Callable, x: torch.Tensor) -> Callable[[], None]:
    def run():
        x.grad = None
        fn(x).sum().backward()
    return run


def candidates(rows: int, n: int, k: int, seed: int) -> Dict[Tuple[str, str], Callable[[], object]]:
    """The timed functions of one (shape, k), keyed by (mode, name)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=generator)
    functions: Dict[Tuple[str, str], Callable[[], object]] = {}
    # every function gets its own leaf, so that no two share a .grad
    leaf = lambda: x.clone().requires_grad_(True)  # noqa: E731
    topk_values = lambda t: torch.topk(t, k, dim=-1).values  # noqa: E731
    functions[("forward", "torch.topk")] = _forward(lambda t: torch.topk(t, k, dim=-1), x)
    functions[("forward+backward", "torch.topk")] = _forward_backward(topk_values, leaf())
    for op_name, op in OPERATORS:
        for p, p_name in PS:
            name = f"{op_name}, p = {p_name}"
            if p == 4.0 / 3.0:  # the default: called as users call it
                call = (lambda op: lambda t: op(t, k))(op)
            else:
                call = (lambda op, p: lambda t: op(t, k, p=p))(op, p)
            functions[("forward", name)] = _forward(call, x)
            functions[("forward+backward", name)] = _forward_backward(call, leaf())
    return functions


def run_group(functions: Dict[Tuple[str, str], Callable[[], object]], rounds: int, block_seconds: float,
              rng: random.Random) -> Dict[Tuple[str, str], Tuple[float, float]]:
    """(median us per call, median paired ratio to torch.topk) of every function."""
    return interleaved.run_group(functions, rounds, block_seconds, rng, lambda key: (key[0], "torch.topk"))


def table(results: Dict[Tuple[int, Tuple[int, int], int], Dict[Tuple[str, str], Tuple[float, float]]],
          names: Sequence[str]) -> List[str]:
    header = ["threads", "shape", "k", "mode", "torch.topk (us)"] + [f"{name} (us, x topk)" for name in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    worst = {mode: (0.0, "") for mode in MODES}
    for (threads, (rows, n), k), group in results.items():
        for mode in MODES:
            topk_us, _ = group[(mode, "torch.topk")]
            cells = [str(threads), f"{rows}x{n}", str(k), mode, format_us(topk_us)]
            for name in names:
                us, ratio = group[(mode, name)]
                cells.append(f"{format_us(us)} ({ratio:.2f})" if ratio <= 2.0 else f"{format_us(us)} (**{ratio:.2f}**)")
                if ratio > worst[mode][0]:
                    worst[mode] = (ratio, f"{name}, {rows}x{n}, k = {k}, {threads} thread(s)")
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for mode in MODES:
        ratio, where = worst[mode]
        lines.append(f"- worst {mode} ratio: {ratio:.2f} ({where})")
    return lines


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per (shape, k) (default 15)")
    parser.add_argument("--block-ms", type=float, default=15.0, help="target length of one block (default 15 ms)")
    parser.add_argument("--threads", default="default,1",
                        help="comma-separated torch thread counts; 'default' is torch's own (default: default,1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the Markdown table to this file")
    args = parser.parse_args(list(argv) or None)

    default_threads = torch.get_num_threads()
    settings = [default_threads if t.strip() == "default" else int(t) for t in args.threads.split(",")]
    rng = random.Random(args.seed)
    names = [f"{op}, p = {p}" for op, _ in OPERATORS for _, p in PS]
    results = {}
    started = time.perf_counter()
    for threads in settings:
        torch.set_num_threads(threads)
        for shape in SHAPES:
            for k in KS:
                group = run_group(candidates(*shape, k, args.seed), args.rounds, args.block_ms / 1e3, rng)
                results[(threads, shape, k)] = group
                print(f"# {threads} thread(s), {shape[0]}x{shape[1]}, k = {k}: done at "
                      f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    torch.set_num_threads(default_threads)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    lines = [
        f"- torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"torch default threads {default_threads}; load average at the end "
        + (", ".join(f"{v:.2f}" for v in load) if load else "unknown"),
        f"- float32, standard normal (seed {args.seed}), l = 0.1 (default); {args.rounds} interleaved rounds of "
        f"~{args.block_ms:g} ms blocks per (shape, k); times: median us per call (wall clock); in parentheses: "
        "median of the per-round ratios to torch.topk in the same mode (bold: above 2)",
        f"- run time {time.perf_counter() - started:.0f} s",
        "",
    ] + table(results, names)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
