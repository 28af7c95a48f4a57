"""Interleaved, paired timing of Python callables, for the bench/*.py scripts.

A block runs a fixed number of calls of one function (about ``block_seconds``
long); a round runs one block of every function in a random order; the time per
call of a function is the median over rounds of its block means, and its ratio
to a baseline is the median over rounds of (its block mean / the baseline's
block mean in the same round), so that drift on a noisy machine cancels.
Python's garbage collector is off inside the blocks (as in ``timeit``).
"""

import gc
import random
import statistics
import time
from typing import Callable, Dict, Hashable, List, Optional, Tuple


def block_size(fn: Callable[[], object], block_seconds: float) -> int:
    """Calls per block: about block_seconds of fn, at least 1."""
    for _ in range(3):  # warm up (first-call allocations, lazy initialization)
        fn()
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= block_seconds / 4 or calls >= 1 << 20:
            return max(1, int(calls * block_seconds / max(elapsed, 1e-9)))
        calls *= 4


def run_group(functions: Dict[Hashable, Callable[[], object]], rounds: int, block_seconds: float,
              rng: random.Random, baseline_of: Callable[[Hashable], Hashable],
              samples_out: Optional[Dict[Hashable, List[float]]] = None) -> Dict[Hashable, Tuple[float, float]]:
    """(median us per call, median paired ratio to functions[baseline_of(key)]) of every function.
    ``samples_out``, if given, receives every function's block means (us per call), one per
    round in round order, for other paired ratios (:func:`paired_ratio`)."""
    sizes = {key: block_size(fn, block_seconds) for key, fn in functions.items()}
    samples: Dict[Hashable, List[float]] = {key: [] for key in functions}
    keys = list(functions)
    enabled = gc.isenabled()
    try:
        for _ in range(rounds):
            rng.shuffle(keys)
            gc.collect()
            gc.disable()
            for key in keys:
                fn, calls = functions[key], sizes[key]
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                samples[key].append((time.perf_counter() - start) / calls * 1e6)
            if enabled:
                gc.enable()
    finally:
        if enabled:
            gc.enable()
    if samples_out is not None:
        samples_out.update(samples)
    result = {}
    for key, times in samples.items():
        base = samples[baseline_of(key)]
        result[key] = (statistics.median(times), statistics.median(t / b for t, b in zip(times, base)))
    return result


def paired_ratio(samples: Dict[Hashable, List[float]], key: Hashable, base: Hashable) -> float:
    """The median over rounds of samples[key] / samples[base] in the same round."""
    return statistics.median(t / b for t, b in zip(samples[key], samples[base]))


def format_us(us: float) -> str:
    return f"{us:.1f}" if us < 100 else f"{us:.0f}"


def print_and_save(text: str, output: Optional[str]) -> None:
    """Prints a script's Markdown text and, given a path, also writes it there (with a final newline)."""
    print(text)
    if output:
        with open(output, "w") as f:
            f.write(text + "\n")
