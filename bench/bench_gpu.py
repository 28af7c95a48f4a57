"""GPU benchmark: each op against torch.topk on the same CUDA tensor, timed with CUDA events.

    python bench/bench_gpu.py [--output results.md] [--repeats 50]

For each shape of issue 12 (MoE routers: 8192 x 64 with k = 2, 4096 x 256 with
k = 8; pruning: 16 x 65536 with k = 1024, 1 x 10^7 with k = 10^6), float32,
select along the last dim: the median time of torch.topk (values), of the hard
ops, of the soft forward (with the state for the backward, as training runs
it), and of the backward alone; ratios are to torch.topk on the same tensor in
the same run. Also a memory-bound elementwise pass (x * 2) over the batch, the
floor for one iteration of an iterative method. Prints a Markdown table.
"""

import argparse
import statistics
import sys
from typing import Callable, List

import torch

import sparsetopk

SHAPES = [((8192, 64), 2), ((4096, 256), 8), ((16, 65536), 1024), ((1, 10_000_000), 1_000_000)]


def cuda_time_ms(fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    """Median over `repeats` of one call, in ms, between CUDA events on the current stream."""
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


def rows_for(shape, k, repeats):
    torch.manual_seed(0)
    x = torch.randn(*shape, device="cuda")
    g = torch.randn_like(x)
    topk = cuda_time_ms(lambda: torch.topk(x, k, dim=-1), repeats)
    elementwise = cuda_time_ms(lambda: x * 2.0, repeats)
    results = [("torch.topk (values)", topk), ("x * 2 (memory-bound pass)", elementwise)]
    results.append(("hard_topk_mask", cuda_time_ms(lambda: sparsetopk.hard_topk_mask(x, k), repeats)))
    for name in ["soft_topk_mask", "soft_topk_mag"]:
        forward_op = getattr(torch.ops.sparsetopk, f"_{name}_forward")
        for p in [4.0 / 3.0, 2.0]:
            label = f"{name} p={'4/3' if p != 2.0 else '2'}"
            results.append((f"{label} forward", cuda_time_ms(lambda: getattr(sparsetopk, name)(x, k, 0.1, p), repeats)))
            results.append((f"{label} forward + state",
                            cuda_time_ms(lambda: forward_op(x, k, 0.1, p, -1, "auto"), repeats)))
            _, c, row_state = forward_op(x, k, 0.1, p, -1, "auto")
            if name == "soft_topk_mask":
                backward = lambda: torch.ops.sparsetopk._soft_topk_mask_backward(g, c, row_state, -1)  # noqa: E731
            else:
                backward = lambda: torch.ops.sparsetopk._soft_topk_mag_backward(g, x, c, row_state, -1)  # noqa: E731
            results.append((f"{label} backward", cuda_time_ms(backward, repeats)))
    return topk, results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="also write the Markdown table here")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    lines = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, float32, "
             f"median of {args.repeats} calls timed with CUDA events", "",
             "| shape | k | what | time | vs torch.topk |", "|---|---|---|---|---|"]
    for shape, k in SHAPES:
        topk, results = rows_for(shape, k, args.repeats)
        for what, ms in results:
            lines.append(f"| {shape[0]} x {shape[1]} | {k} | {what} | {ms * 1000:.1f} us | {ms / topk:.2f} |")
        torch.cuda.empty_cache()
    text = "\n".join(lines)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
