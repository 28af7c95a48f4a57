"""GPU benchmark: each op against torch.topk on the same CUDA tensor, in the same run.

    python bench/bench_gpu.py [--csv bench.csv] [--markdown bench.md] [--time-budget 40]
                              [--paths generic,cuda_kernel] [--shapes 8192x64:2,...]

The shapes are issue 21's goals (MoE routers: 8192 x 64 with k = 2, 4096 x 256
with k = 8, 256 x 1000 with k = 10; pruning: 16 x 65536 with k = 1024,
1 x 10^6 with k = 10^4, 1 x 10^7 with k = 10^6), float32, along the last dim.
For each shape, torch.topk (values and indices), then on each CUDA path
("generic": the default device-generic ATen implementation; "cuda_kernel":
the opt-in hand-written kernels, UNVERIFIED until tests/python/test_gpu.py has
passed on a GPU, left out where their library is not loaded) the hard mask's
forward and, for the soft mask and magnitude at p = 4/3 and l = 0.1, the
forward with its saved state (as training calls it) and the backward at that
state. Each row also says whether the forward could be captured in a CUDA
graph (torch.cuda.graph after a side-stream warm-up) and replayed.

Timing: CUDA events around batches of calls (a batch lasts at least ~0.2 ms,
so launch-bound calls are not dominated by the events), the median over
batches, after warm-up calls. Inputs rotate through enough copies to exceed
twice the L2 cache, so small shapes are not timed out of the cache. Each
measurement gets a share of --time-budget; once the budget is spent the
remaining rows are written as skipped (the shapes run from small to large).
"""

import argparse
import contextlib
import csv
import math
import statistics
import sys
import time
from typing import Callable, Iterator, List, Optional, Sequence

import torch

import sparsetopk

SHAPES = [((8192, 64), 2), ((4096, 256), 8), ((256, 1000), 10), ((16, 65536), 1024),
          ((1, 1_000_000), 10_000), ((1, 10_000_000), 1_000_000)]
L, P = 0.1, 4.0 / 3.0
COLUMNS = ["shape", "k", "op", "path", "forward_ms", "backward_ms", "topk_ms", "forward_over_topk",
           "backward_over_forward", "cuda_graph"]


class Clock:
    """The time left of the whole run's budget."""

    def __init__(self, budget_s: float):
        self.deadline = time.monotonic() + budget_s

    def left(self) -> float:
        return self.deadline - time.monotonic()


def time_ms(call: Callable[[int], object], sets: int, budget_s: float, warmup: int = 2) -> float:
    """Median time of one call, in ms. call(i) runs on input set i % sets."""
    for i in range(warmup):
        call(i)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    call(0)
    end.record()
    end.synchronize()
    once = max(start.elapsed_time(end), 1e-3)  # ms
    inner = max(1, min(sets, math.ceil(0.2 / once)))
    samples = int(budget_s * 1000 / (once * inner))
    samples = max(3, min(samples, 50)) if once < 1000 else 1
    times: List[float] = []
    i = 1
    for _ in range(samples):
        start.record()
        for _ in range(inner):
            call(i)
            i += 1
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def graph_capture(call: Callable[[], object]) -> str:
    """Can call() be captured in a CUDA graph and replayed? "yes", or why not."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # the warm-up torch's docs ask for before a capture
            for _ in range(2):
                call()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call()
        graph.replay()
        torch.cuda.synchronize()
        return "yes"
    except Exception as error:  # noqa: BLE001 (any failure is the answer)
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
        return f"no: {type(error).__name__}"


@contextlib.contextmanager
def cuda_path(path: str):
    """Every op on the opt-in kernels inside, for path "cuda_kernel"."""
    previous = sparsetopk.use_cuda_kernels(True) if path == "cuda_kernel" else None
    try:
        yield
    finally:
        if previous is not None:
            sparsetopk.use_cuda_kernels(previous)


def input_sets(shape, l2_bytes: int) -> int:
    """Copies of (x, g) to rotate through: enough to exceed twice the L2 cache, at most 64."""
    bytes_per_set = 2 * 4 * math.prod(shape)
    return max(1, min(64, math.ceil(2 * l2_bytes / bytes_per_set)))


def rows_for(shape, k, paths: Sequence[str], clock: Clock, share_s: float, l2_bytes: int) -> Iterator[dict]:
    sets = input_sets(shape, l2_bytes)
    torch.manual_seed(0)
    xs = [torch.randn(*shape, device="cuda") for _ in range(sets)]
    gs = [torch.randn(*shape, device="cuda") for _ in range(sets)]
    label = f"{shape[0]}x{shape[1]}"
    topk = time_ms(lambda i: torch.topk(xs[i % sets], k, dim=-1), sets, share_s)
    yield row(label, k, "torch.topk", "ATen", topk, None, topk, graph_capture(lambda: torch.topk(xs[0], k, dim=-1)))
    for path in paths:
        with cuda_path(path):
            for op in ["hard_topk_mask", "soft_topk_mask", "soft_topk_mag"]:
                if clock.left() < 2 * share_s:
                    yield {**row(label, k, op, path, None, None, topk, ""), "cuda_graph": "skipped: time"}
                    continue
                yield measure(op, path, label, k, xs, gs, sets, topk, share_s)
    del xs, gs
    torch.cuda.empty_cache()


def measure(op, path, label, k, xs, gs, sets, topk, share_s) -> dict:
    try:
        if op.startswith("hard"):
            fn = getattr(sparsetopk, op)
            forward = time_ms(lambda i: fn(xs[i % sets], k), sets, share_s)
            return row(label, k, op, path, forward, None, topk, graph_capture(lambda: fn(xs[0], k)))
        forward_op = getattr(torch.ops.sparsetopk, f"_{op}_forward")
        backward_op = getattr(torch.ops.sparsetopk, f"_{op}_backward")
        forward = time_ms(lambda i: forward_op(xs[i % sets], k, L, P, -1, "auto"), sets, share_s / 2)
        states = [forward_op(x, k, L, P, -1, "auto")[1] for x in xs]
        backward = time_ms(lambda i: backward_op(gs[i % sets], xs[i % sets], states[i % sets], L, P, -1),
                           sets, share_s / 2)
        graph = graph_capture(lambda: forward_op(xs[0], k, L, P, -1, "auto"))
        return row(label, k, f"{op} p=4/3", path, forward, backward, topk, graph)
    except Exception as error:  # noqa: BLE001 (a failing op is reported, the others still run)
        torch.cuda.synchronize()
        return {**row(label, k, op, path, None, None, topk, ""), "cuda_graph": f"error: {type(error).__name__}"}


def row(shape, k, op, path, forward, backward, topk, graph) -> dict:
    def ms(value: Optional[float]) -> str:
        return "" if value is None else f"{value:.4f}"

    def ratio(a: Optional[float], b: Optional[float]) -> str:
        return "" if a is None or b is None or b <= 0 else f"{a / b:.2f}"

    return {"shape": shape, "k": k, "op": op, "path": path, "forward_ms": ms(forward), "backward_ms": ms(backward),
            "topk_ms": ms(topk), "forward_over_topk": ratio(forward, topk),
            "backward_over_forward": ratio(backward, forward), "cuda_graph": graph}


def markdown(rows: List[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def parse_shapes(text: str):
    shapes = []
    for item in text.split(","):
        dims, k = item.split(":")
        r, n = dims.split("x")
        shapes.append(((int(r), int(float(n))), int(float(k))))
    return shapes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", help="write the rows here as CSV")
    parser.add_argument("--markdown", "--output", help="write the Markdown table here")
    parser.add_argument("--time-budget", type=float, default=60.0, help="seconds for the whole run (default 60)")
    parser.add_argument("--paths", default="generic,cuda_kernel", help="CUDA paths to time, comma-separated")
    parser.add_argument("--shapes", help="ROWSxN:K,... instead of the goal shapes (e.g. 8192x64:2,1x1e6:1e4)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    clock = Clock(args.time_budget)
    shapes = parse_shapes(args.shapes) if args.shapes else SHAPES
    paths = [p for p in args.paths.split(",") if p != "cuda_kernel" or sparsetopk.cuda_kernels_available()]
    measures = len(shapes) * (1 + 3 * len(paths))
    share_s = max(0.05, 0.6 * args.time_budget / measures)  # the rest: warm-up, captures, allocation
    properties = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(properties, "L2_cache_size", 50 * 2**20)
    rows: List[dict] = []
    csv_file = open(args.csv, "w", newline="") if args.csv else None  # noqa: SIM115 (rows are flushed as measured)
    writer = csv.DictWriter(csv_file, fieldnames=COLUMNS) if csv_file else None
    if writer:
        writer.writeheader()

    def emit(r: dict) -> None:  # a killed run still leaves the rows measured so far
        rows.append(r)
        print(" | ".join(str(r[c]) for c in COLUMNS), file=sys.stderr, flush=True)
        if writer:
            writer.writerow(r)
            csv_file.flush()

    for shape, k in shapes:
        if clock.left() < share_s:
            emit({**row(f"{shape[0]}x{shape[1]}", k, "all", "", None, None, None, ""), "cuda_graph": "skipped: time"})
            continue
        for r in rows_for(shape, k, paths, clock, share_s, l2_bytes):
            emit(r)
    header = (f"GPU: {properties.name}, torch {torch.__version__}, float32, l = {L}, p = 4/3; median ms per call "
              f"(CUDA events around batches, inputs rotated past 2x the L2 of {l2_bytes >> 20} MiB); "
              f"paths: {', '.join(paths)}; {args.time_budget - clock.left():.0f} s")
    text = markdown(rows, header)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if csv_file:
        csv_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
