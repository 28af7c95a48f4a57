"""GPU benchmark: each op against torch.topk on the same CUDA tensor, timed with CUDA events.

    python bench/bench_gpu.py [--output results.md] [--repeats 50] [--paths generic,cuda_kernel]

For each shape of issue 12 (MoE routers: 8192 x 64 with k = 2, 4096 x 256 with
k = 8; pruning: 16 x 65536 with k = 1024, 1 x 10^7 with k = 10^6), float32,
select along the last dim: the median time of torch.topk (values), of the hard
ops, of the soft forward (with the state for the backward, as training runs
it), and of the backward alone; ratios are to torch.topk on the same tensor in
the same run. Also a memory-bound elementwise pass (x * 2) over the batch, the
floor for one iteration of an iterative method. Each op is timed on each CUDA
path: "generic" (the default, device-generic ATen implementation) and
"cuda_kernel" (the opt-in hand-written kernels, UNVERIFIED until
tests/python/test_gpu.py has passed on a GPU; skipped where their library is
not loaded). A call slower than 50 ms is timed 3 times instead of --repeats.
Prints a Markdown table.
"""

import argparse
import contextlib
import statistics
import sys
from typing import Callable, List

import torch

import sparsetopk
from interleaved import print_and_save  # bench/interleaved.py

SHAPES = [((8192, 64), 2), ((4096, 256), 8), ((16, 65536), 1024), ((1, 10_000_000), 1_000_000)]


def cuda_time_ms(fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    """Median over `repeats` of one call, in ms, between CUDA events on the current stream."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    if start.elapsed_time(end) > 50.0:  # slow: a few calls say enough
        repeats, warmup = 3, 0
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times: List[float] = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@contextlib.contextmanager
def cuda_path(path: str):
    """Every op on the opt-in kernels inside, for path "cuda_kernel"."""
    previous = sparsetopk.use_cuda_kernels(True) if path == "cuda_kernel" else None
    try:
        yield
    finally:
        if previous is not None:
            sparsetopk.use_cuda_kernels(previous)


def rows_for(shape, k, repeats, paths):
    torch.manual_seed(0)
    x = torch.randn(*shape, device="cuda")
    g = torch.randn_like(x)
    topk = cuda_time_ms(lambda: torch.topk(x, k, dim=-1), repeats)
    elementwise = cuda_time_ms(lambda: x * 2.0, repeats)
    results = [("torch.topk (values)", topk), ("x * 2 (memory-bound pass)", elementwise)]
    for path in paths:
        with cuda_path(path):
            results.extend((f"[{path}] {what}", ms) for what, ms in op_times(x, g, k, repeats))
    return topk, results


def op_times(x, g, k, repeats):
    results = [("hard_topk_mask", cuda_time_ms(lambda: sparsetopk.hard_topk_mask(x, k), repeats))]
    for name in ["soft_topk_mask", "soft_topk_mag"]:
        forward_op = getattr(torch.ops.sparsetopk, f"_{name}_forward")
        for p in [4.0 / 3.0, 2.0]:
            label = f"{name} p={'4/3' if p != 2.0 else '2'}"
            results.append((f"{label} forward", cuda_time_ms(lambda: getattr(sparsetopk, name)(x, k, 0.1, p), repeats)))
            results.append((f"{label} forward + state",
                            cuda_time_ms(lambda: forward_op(x, k, 0.1, p, -1, "auto"), repeats)))
            _, row_state = forward_op(x, k, 0.1, p, -1, "auto")
            if name == "soft_topk_mask":
                backward = lambda: torch.ops.sparsetopk._soft_topk_mask_backward(g, x, row_state, 0.1, p, -1)  # noqa: E731
            else:
                backward = lambda: torch.ops.sparsetopk._soft_topk_mag_backward(g, x, row_state, 0.1, p, -1)  # noqa: E731
            results.append((f"{label} backward", cuda_time_ms(backward, repeats)))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="also write the Markdown table here")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--paths", default="generic,cuda_kernel", help="CUDA paths to time, comma-separated")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    paths = [p for p in args.paths.split(",") if p != "cuda_kernel" or sparsetopk.cuda_kernels_available()]
    lines = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, float32, "
             f"median of {args.repeats} calls timed with CUDA events", "",
             "| shape | k | what | time | vs torch.topk |", "|---|---|---|---|---|"]
    for shape, k in SHAPES:
        topk, results = rows_for(shape, k, args.repeats, paths)
        for what, ms in results:
            lines.append(f"| {shape[0]} x {shape[1]} | {k} | {what} | {ms * 1000:.1f} us | {ms / topk:.2f} |")
        torch.cuda.empty_cache()
    text = "\n".join(lines)
    print_and_save(text, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
