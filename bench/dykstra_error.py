"""Max error of solver="dykstra" against the exact solver as a function of num_iter.

Standard-normal rows (float64), l = 0.3, p = 2, k = n / 8; the error is the
largest absolute difference of the outputs over all rows, for the soft mask
and the soft magnitude. Prints a markdown table (docs/dykstra.md) and, with
--json, writes the rows as JSON.

    PYTHONPATH=python SPARSETOPK_LIBRARY=build/lib/libsparsetopk_torch.so \
        python bench/dykstra_error.py [--device cpu] [--json out.json]

On the CPU the ops run the core's Dykstra (src/core/dykstra.cpp); on any other
device the batched ATen form (src/torch/generic), which gives the same results.
"""

import argparse
import json
import time

import torch

import sparsetopk

L = 0.3
SIZES = ((64, 16), (1024, 16), (65536, 4))  # (n, rows)
NUM_ITERS = (10, 100, 1000, 3000, 10000, 30000, 100000)
OPS = (("mask", sparsetopk.soft_topk_mask), ("mag", sparsetopk.soft_topk_mag))


def measure(device: str):
    results = []
    for n, rows in SIZES:
        x = torch.randn(rows, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64).to(device)
        k = n // 8
        for name, op in OPS:
            exact = op(x, k, L, 2.0)
            for num_iter in NUM_ITERS:
                start = time.perf_counter()
                out = op(x, k, L, 2.0, solver="dykstra", num_iter=num_iter)
                seconds = time.perf_counter() - start
                error = float((out - exact).abs().max())
                results.append(dict(op=name, n=n, k=k, rows=rows, num_iter=num_iter, max_abs_error=error,
                                    seconds=seconds))
                print(f"# {name} n={n} num_iter={num_iter}: {error:.2e} ({seconds:.3f} s)", flush=True)
    return results


def table(results) -> str:
    lines = ["| operator | n | k | rows | " + " | ".join(f"{t}" for t in NUM_ITERS) + " |",
             "|---|---|---|---|" + "---|" * len(NUM_ITERS)]
    for name, _ in OPS:
        for n, rows in SIZES:
            cells = {r["num_iter"]: r["max_abs_error"] for r in results if r["op"] == name and r["n"] == n}
            lines.append(f"| {name} | {n} | {n // 8} | {rows} | " +
                         " | ".join(f"{cells[t]:.1e}" for t in NUM_ITERS) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args()
    results = measure(args.device)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=args.device, torch=torch.__version__, l=L, results=results), f, indent=1)


if __name__ == "__main__":
    main()
