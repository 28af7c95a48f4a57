#!/usr/bin/env python3
"""The JAX operators of sparsetopk.jax against jax.lax.top_k, on the same arrays, in one run.

Times the jitted calls

- ``jax.lax.top_k(x, k)`` (values and indices): forward, and forward + backward
  (``jax.grad`` of ``values.sum()``);
- ``sparsetopk.jax.soft_topk_mask(x, k)`` and ``soft_topk_mag(x, k)`` with the
  default ``l = 0.1`` and ``p = 4/3`` or ``p = 2``: forward, and forward +
  backward (``jax.grad`` of ``out.sum()``);

on float32 arrays (rows x n, selection along the last axis) of the router
shapes 8x8, 64x8, 256x64, 1024x64 (k = 2 and 4), 8192x64 (k = 2), 4096x256
(k = 8) and the pruning shape 16x65536 (k = 1024), or the cases given with
``--case ROWSxNxK``. A second table gives each operator's backward against its
forward: (forward+backward) / forward - 1, paired in each round, median over rounds.

Method: every function is jitted and compiled before timing; each call waits
for its result (``block_until_ready``); the calls are timed in interleaved
blocks, ``--rounds`` rounds per (shape, k), each paired with jax.lax.top_k in
the same round and mode (bench/interleaved.py). Prints a Markdown table (``--output`` writes it too).

    PYTHONPATH=python SPARSETOPK_JAX_LIBRARY=build/lib/libsparsetopk_jax.so \\
        .venv/bin/python bench/bench_jax.py --output /tmp/jax.md

One thread (XLA's and the core's; the core runs one row on one thread anyway):

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" taskset -c 0 \\
        env PYTHONPATH=python SPARSETOPK_JAX_LIBRARY=build/lib/libsparsetopk_jax.so \\
        .venv/bin/python bench/bench_jax.py --case 1x1000000x10000
"""

import argparse
import os
import platform
import random
import sys
from typing import Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import sparsetopk.jax as stj
from interleaved import format_us, paired_ratio, print_and_save, run_group  # bench/interleaved.py

CASES = ((8, 8, 2), (8, 8, 4), (64, 8, 2), (64, 8, 4), (256, 64, 2), (256, 64, 4), (1024, 64, 2), (1024, 64, 4),
         (8192, 64, 2), (4096, 256, 8), (16, 65536, 1024))
OPERATORS = (("mask", stj.soft_topk_mask), ("mag", stj.soft_topk_mag))
PS = ((4.0 / 3.0, "4/3"), (2.0, "2"))
MODES = ("forward", "forward+backward")
BASELINE = "lax.top_k"


def candidates(rows: int, n: int, k: int, seed: int) -> Dict[Tuple[str, str], Callable[[], object]]:
    """(name, mode) -> a call on one float32 array, compiled."""
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((rows, n)), jnp.float32)
    functions = {
        (BASELINE, "forward"): jax.jit(lambda v: jax.lax.top_k(v, k)),
        (BASELINE, "forward+backward"): jax.jit(jax.grad(lambda v: jax.lax.top_k(v, k)[0].sum())),
    }
    for op_name, op in OPERATORS:
        for p, p_name in PS:
            name = f"soft_topk_{op_name} p={p_name}"
            functions[(name, "forward")] = jax.jit(lambda v, op=op, p=p: op(v, k, 0.1, p))
            functions[(name, "forward+backward")] = jax.jit(jax.grad(lambda v, op=op, p=p: op(v, k, 0.1, p).sum()))
    calls = {}
    for key, fn in functions.items():
        jax.block_until_ready(fn(x))  # compile
        calls[key] = lambda fn=fn: jax.block_until_ready(fn(x))
    return calls


def backward_table(samples) -> str:
    """(forward+backward) / forward - 1 of each soft operator, paired in each round."""
    names = [f"soft_topk_{o} p={p}" for o, _ in OPERATORS for _, p in PS]
    lines = ["| shape (rows x n) | k | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for (rows, n, k), group in samples.items():
        cells = [f"{paired_ratio(group, (name, 'forward+backward'), (name, 'forward')) - 1:.2f}" for name in names]
        lines.append(f"| {rows} x {n} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_case(text: str) -> Tuple[int, int, int]:
    rows, n, k = (int(part) for part in text.lower().split("x"))
    return rows, n, k


def table(results) -> str:
    names = [BASELINE] + [f"soft_topk_{o} p={p}" for o, _ in OPERATORS for _, p in PS]
    lines = ["| shape (rows x n) | k | mode | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for (rows, n, k), group in results.items():
        for mode in MODES:
            cells = []
            for name in names:
                us, ratio = group[(name, mode)]
                cells.append(f"{format_us(us)} us" if name == BASELINE else f"{format_us(us)} us ({ratio:.2f}x)")
            lines.append(f"| {rows} x {n} | {k} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11, help="interleaved rounds per (shape, k) (default 11)")
    parser.add_argument("--block-ms", type=float, default=20.0, help="target length of one block (default 20 ms)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the four smallest cases only")
    parser.add_argument("--case", action="append", type=parse_case, metavar="ROWSxNxK",
                        help="a case to run instead of the default ones (repeatable), e.g. 1x1000000x10000")
    parser.add_argument("--output", help="also write the Markdown table to this file")
    args = parser.parse_args(list(argv) or None)
    rng = random.Random(args.seed)
    results, samples = {}, {}
    cases = args.case or (CASES[:4] if args.quick else CASES)
    for case in cases:
        samples[case] = {}
        results[case] = run_group(candidates(*case, seed=args.seed), args.rounds, args.block_ms / 1e3, rng,
                                  lambda key: (BASELINE, key[1]), samples[case])
        print(f"done {case}", file=sys.stderr, flush=True)
    header = (f"jax {jax.__version__}, {jax.devices()[0].platform}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs "
              f"({platform.processor() or platform.machine()}), float32, {args.rounds} rounds; "
              "time per call (ratio to jax.lax.top_k in the same mode)")
    text = (header + "\n\n" + table(results) + "\n\nbackward / forward of each operator: (forward+backward) / "
            "forward - 1, paired in each round\n\n" + backward_table(samples))
    print_and_save(text, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
