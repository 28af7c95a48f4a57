#!/usr/bin/python3
"""Times scikit-learn's isotonic_regression on the bare isotonic problem of
the soft top-k mask with p = 2, on the rows written by sparsetopk_bench_data
(the same float32 data as the C++ benchmarks).

For each row: s = the row sorted descending, w = k ones then zeros,
z = s - l * w, and the solution is the non-increasing least-squares fit of z
(isotonic_regression(z, increasing=False)), the problem the C++ benchmark
`solve_isotonic/pav/p=2/...` solves with sparsetopk::solve_isotonic. Only the
isotonic calls are timed (the sort is not), one call per row, as for ours.

    /usr/bin/python3 bench/sklearn_isotonic.py --data DIR --out results.json
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import sklearn
from sklearn.isotonic import isotonic_regression


def problems(x, k, l):
    s = -np.sort(-x.astype(np.float64), axis=1)
    w = np.zeros(x.shape[1])
    w[:k] = 1.0
    return np.ascontiguousarray(s - l * w)


def time_batch(z, min_time):
    """Wall-clock and CPU seconds per batch (one isotonic_regression call per
    row), like Google Benchmark: repeat until min_time has passed."""
    repeats, wall, cpu = 0, 0.0, 0.0
    while wall < min_time or repeats == 0:
        start, start_cpu = time.perf_counter(), time.process_time()
        for row in z:
            isotonic_regression(row, increasing=False)
        wall += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        repeats += 1
    return wall / repeats, cpu / repeats, repeats


def check(z):
    """The solution is non-increasing and sums like z (a projection onto a cone
    containing the constants keeps the sum)."""
    v = isotonic_regression(z[0], increasing=False)
    assert np.all(np.diff(v) <= 1e-12), "not non-increasing"
    assert abs(v.sum() - z[0].sum()) <= 1e-8 * max(1.0, abs(z[0]).sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="directory written by sparsetopk_bench_data")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--l", type=float, default=0.1, help="regularization strength (the C++ benchmarks use 0.1)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds of timing per shape, at least")
    args = parser.parse_args()

    with open(os.path.join(args.data, "manifest.json")) as f:
        manifest = json.load(f)
    results = []
    for entry in manifest:
        rows, n, k = entry["rows"], entry["n"], entry["k"]
        x = np.fromfile(os.path.join(args.data, entry["file"]), dtype=np.float32).reshape(rows, n)
        z = problems(x, k, args.l)
        check(z)
        seconds, cpu_seconds, repeats = time_batch(z, args.min_time)
        results.append({"rows": rows, "n": n, "k": k, "l": args.l, "seconds_per_call": seconds,
                        "cpu_seconds_per_call": cpu_seconds, "repeats": repeats})
        print(f"sklearn isotonic_regression {rows}x{n} k={k}: {seconds * 1e3:.3f} ms per call ({repeats} repeats)",
              flush=True)
    with open(args.out, "w") as f:
        json.dump({"sklearn_version": sklearn.__version__, "numpy_version": np.__version__,
                   "python": sys.version.split()[0], "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
