"""Memory of a soft forward plus backward pass: what autograd saves, and the peak.

    .venv/bin/python bench/memory_state.py

For soft_topk_mag on a float32 1 x 10^7 input and on a bfloat16 4096 x 4096
input (docs/performance.md, "Memory of the backward state"), each case in a
fresh process:
- saved: the bytes of every tensor autograd saves for the backward, counted
  through torch.autograd.graph.saved_tensors_hooks (x itself included: it is
  saved by reference, as the input the caller holds anyway);
- peak: the growth of the process's peak resident memory (ru_maxrss) over a
  forward and a backward pass, beyond the inputs and the cotangent already
  allocated and touched (x, g); it includes the output and the gradient.
Both are also given as multiples of the bytes of x.
"""

import json
import resource
import subprocess
import sys

CASES = (("float32", 1, 10_000_000, 100_000), ("bfloat16", 4096, 4096, 410))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(dtype_name: str, rows: int, n: int, k: int) -> dict:
    import torch
    import sparsetopk

    torch.set_num_threads(1)
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    warm = torch.randn(4, 64, generator=gen).requires_grad_(True)  # loads the library and its first allocations
    sparsetopk.soft_topk_mag(warm, 8).sum().backward()
    x = torch.randn(rows, n, generator=gen, dtype=dtype).requires_grad_(True)
    g = torch.randn(rows, n, generator=gen, dtype=dtype)
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().nbytes() if t.numel() else 0)
        return t

    base = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sparsetopk.soft_topk_mag(x, k, 0.1, 4.0 / 3.0)
    out.backward(g)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    x_bytes = x.numel() * x.element_size()
    return {"dtype": dtype_name, "shape": f"{rows} x {n}", "k": k, "x_bytes": x_bytes, "saved_bytes": sum(saved),
            "saved_tensors": len(saved), "peak_growth_bytes": peak - max(base, peak_before),
            "peak_before_exceeded_rss": peak_before > base}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[4]) // 100 or 1)))
        return
    print(f"{'input':>24} {'saved':>12} {'saved/x':>8} {'peak growth':>12} {'peak/x':>7}")
    for dtype_name, rows, n, _ in CASES:
        line = subprocess.run([sys.executable, __file__, "--one", dtype_name, str(rows), str(n)], check=True,
                              capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(line)
        note = " (peak before the call was above the resident memory: growth understated)" \
            if r["peak_before_exceeded_rss"] else ""
        print(f"{dtype_name + ' ' + r['shape']:>24} {r['saved_bytes'] / 2**20:>9.1f} MiB {r['saved_bytes'] / r['x_bytes']:>7.2f}x "
              f"{r['peak_growth_bytes'] / 2**20:>9.1f} MiB {r['peak_growth_bytes'] / r['x_bytes']:>6.2f}x{note}")


if __name__ == "__main__":
    main()
