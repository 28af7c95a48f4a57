"""Peak extra memory of a global operator against the concatenated version.

    PYTHONPATH=python python bench/global_memory.py

The bytes the CPU allocator holds beyond what it held before the call, at
their peak during it (torch.profiler's memory timeline, as
tests/python/test_global.py measures them), for T float32 tensors of 1M
entries each. The global op allocates its outputs (T tensors) and a
float64[11] state; the core's window (std::vector, outside torch's allocator)
is listed apart: 24 bytes per window entry.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
import sparsetopk  # noqa: E402
from test_global import peak_allocated_bytes  # noqa: E402


def main() -> None:
    print("| tensors x entries | inputs (MiB) | global op peak (MiB) | torch.cat version peak (MiB) | window entries |")
    print("|---|---|---|---|---|")
    for count in (4, 16):
        x = [torch.randn(1 << 20) for _ in range(count)]
        total = sum(t.numel() for t in x)
        k = total // 10
        mib = 1 << 20
        global_peak = peak_allocated_bytes(lambda: sparsetopk.soft_topk_mag_global(x, k, l=1e-3))
        cat_peak = peak_allocated_bytes(
            lambda: sparsetopk.soft_topk_mag(torch.cat([t.flatten() for t in x]), k, l=1e-3).split(
                [t.numel() for t in x]))
        # the window: entries the band solve sees (those with 0 < out < |x|, and ties of the bounds: a lower bound)
        out = sparsetopk.soft_topk_mag_global(x, k, l=1e-3)
        window = sum(int(((o != 0) & (o != t)).sum()) for o, t in zip(out, x))
        print(f"| {count} x 2^20 | {total * 4 / mib:.0f} | {global_peak / mib:.2f} | {cat_peak / mib:.2f} | {window} |")


if __name__ == "__main__":
    main()
