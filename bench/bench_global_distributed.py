"""Time per call of soft_topk_mag_global across 1 to 4 gloo processes, against the row operator.

    PYTHONPATH=python SPARSETOPK_LIBRARY=build/lib/libsparsetopk_torch.so \\
        python bench/bench_global_distributed.py [--ranks 1 2 3 4] [--sizes 1e5 1e6 1e7] [--repeats 7]

For each n (total float32 N(0, 1) entries, split evenly over the ranks), k =
n/10, l = 1e-2, p = 4/3 (the setting of docs/global.md's byte table):
- the row operator ``soft_topk_mag`` on the whole tensor in this process
  (torch's default threads), forward and backward (``torch.autograd.grad``
  with a cotangent of ones);
- ``soft_topk_mag_global(..., group=WORLD)`` in R spawned processes (gloo over
  loopback, one torch thread each), forward and backward, each call between
  barriers; a call's time is the largest over the ranks;
- the median over the repeats (after one warm-up call), the collectives and
  bytes per rank (``sparsetopk._global.traffic``), and the ratios to the row
  operator. Prints a markdown table.
"""

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sparsetopk

K_FRACTION, L, P = 0.1, 1e-2, 4.0 / 3.0


def _data(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def _row_operator(n: int, repeats: int):
    x = _data(n).requires_grad_()
    k = int(n * K_FRACTION)
    forward, backward = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        out = sparsetopk.soft_topk_mag(x, k, l=L, p=P)
        middle = time.perf_counter()
        torch.autograd.grad(out, x, torch.ones_like(out))
        end = time.perf_counter()
        if i:
            forward.append(middle - start)
            backward.append(end - middle)
    return statistics.median(forward), statistics.median(backward)


def _worker(rank, world, port, sizes, repeats, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    from sparsetopk import _global
    results = {}
    for n in sizes:
        full = _data(n)
        cuts = [n * r // world for r in range(world + 1)]
        x = full[cuts[rank]:cuts[rank + 1]].clone().requires_grad_()
        del full
        k = int(n * K_FRACTION)
        forward, backward = [], []
        for i in range(repeats + 1):
            dist.barrier()
            _global.traffic(reset=True)
            start = time.perf_counter()
            (out,) = sparsetopk.soft_topk_mag_global([x], k, l=L, p=P, group=dist.group.WORLD)
            middle = time.perf_counter()
            traffic_forward = _global.traffic(reset=True)
            dist.barrier()
            middle2 = time.perf_counter()
            torch.autograd.grad(out, x, torch.ones_like(out))
            end = time.perf_counter()
            traffic_backward = _global.traffic(reset=True)
            if i:
                forward.append(middle - start)
                backward.append(end - middle2)
        results[n] = (forward, backward, traffic_forward, traffic_backward)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed(world: int, sizes, repeats: int):
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world, _free_port(), sizes, repeats, out_dir), nprocs=world, join=True)
        ranks = [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]
    summary = {}
    for n in sizes:
        # a call takes as long as its slowest rank
        forward = [max(r[n][0][i] for r in ranks) for i in range(repeats)]
        backward = [max(r[n][1][i] for r in ranks) for i in range(repeats)]
        summary[n] = (statistics.median(forward), statistics.median(backward), ranks[0][n][2], ranks[0][n][3])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes]
    print(f"# {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads for the row "
          f"operator; float32, k = n/10, l = {L}, p = 4/3; median of {args.repeats} calls", file=sys.stderr)
    baseline = {n: _row_operator(n, args.repeats) for n in sizes}
    runs = {world: _distributed(world, sizes, args.repeats) for world in args.ranks}
    print("| n | ranks | forward (ms) | backward (ms) | forward / row op | backward / row op "
          "| forward: collectives, bytes per rank | backward: collectives, bytes |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        forward, backward = baseline[n]
        print(f"| {n:.0e} | row op, 1 process | {forward * 1e3:.2f} | {backward * 1e3:.2f} | 1 | 1 | - | - |")
        for world in args.ranks:
            f, b, (fc, fb), (bc, bb) = runs[world][n]
            print(f"| {n:.0e} | {world} | {f * 1e3:.2f} | {b * 1e3:.2f} | {f / forward:.2f} | {b / backward:.2f} "
                  f"| {fc}, {fb} | {bc}, {bb} |")


if __name__ == "__main__":
    main()
