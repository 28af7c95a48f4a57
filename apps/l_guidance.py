#!/usr/bin/python3
"""How l trades sparsity for smoothness: measurements with the sparsetopk CLI, and a plot.

Rows x of n i.i.d. N(0, sigma^2) entries, top-k with k = 10 of n = 1000 (defaults):
  (a) soft top-k mask: entries kept beyond k (nnz - k) and fractional entries
      (0 < out < 1) against l / sigma, for sigma = 1 and 100 (the curves coincide);
  (b) soft top-k in magnitude: the same counts (fractional = shrunk:
      0 < |out| < |x|) against the relative band b, with l = b (p = 2) and
      l = b * tau^(2/3) (p = 4/3), tau the k-th largest |x| of the row (as in
      apps/prune_mlp.cpp); again for sigma = 1 and 100;
  (c) smoothness, Figure-1 style: the output of one entry of a fixed row as
      that entry is moved through the k-th largest value of the others;
  (d) smoothness, Lipschitz constant: the largest singular value of the
      Jacobian (from the CLI's exact VJP) times l (mask) or times b (magnitude).
It also checks the shift and scale laws (to the 9 digits the CLI prints), that
no gradient leaves the band, and a rule for choosing l from the data;
it prints every number it plots. Usage (from the repository root, after the build):

    /usr/bin/python3 apps/l_guidance.py [--cli build/bin/sparsetopk] [--out docs/figures/l_guidance.png]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from statistics import NormalDist

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

P_VALUES = ("2", "4/3")
COLORS = {"2": "tab:blue", "4/3": "tab:orange"}
# magnitude: mag(c x, c^e l) = c mag(x, l) (SPEC.md's magnitude problem scales this way), so
# b = l / tau^e is scale free; e = (q - 2) / (q - 1): 0 for p = 2, 2/3 for p = 4/3.
MAG_EXPONENT = {"2": 0.0, "4/3": 2.0 / 3.0}


def mag_l(x, k, b, p):
    """l for the magnitude operator from the relative band b: b * tau^e, tau = k-th largest |x|."""
    tau = np.sort(np.abs(x))[::-1][k - 1]
    return b * tau ** MAG_EXPONENT[p]


def run_mag_b(cli, rows, k, b, p):
    """soft_topk_mag row by row with l = mag_l(row, k, b, p) (one CLI call when l does not depend on the row)."""
    if MAG_EXPONENT[p] == 0.0:
        return run_cli(cli, "mag", rows, k, b, p)
    return np.vstack([run_cli(cli, "mag", [x], k, mag_l(x, k, b, p), p) for x in rows])


def rounded(a):
    """Round to the CLI's output precision (%.9g), so that 'unchanged' can be tested exactly."""
    return np.array([[float(f"{v:.9g}") for v in row] for row in np.atleast_2d(a)])


def run_cli(cli, mode, rows, k, l, p, vjp_rows=None):
    """out (or J^T g for each (x, g) when vjp_rows is given) for every row, one CLI call."""
    lines = []
    for i, row in enumerate(rows):
        lines.append(" ".join(f"{v:.9g}" for v in row))
        if vjp_rows is not None:
            lines.append(" ".join(f"{v:.9g}" for v in vjp_rows[i]))
    args = [cli, mode, "--k", str(k), "--l", repr(float(l)), "--p", p] + (["--vjp"] if vjp_rows is not None else [])
    result = subprocess.run(args, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"l_guidance: {' '.join(args)} failed: {result.stderr.strip()}")
    out = np.array([[float(v) for v in line.split()] for line in result.stdout.splitlines()])
    expected = len(rows)
    if out.shape[0] != expected:
        sys.exit(f"l_guidance: expected {expected} lines from {cli}, got {out.shape[0]}")
    return out


def counts_mask(out, k, x=None, l=None):
    """(mean nnz - k, mean number of fractional entries 0 < out < 1) over rows.

    With x and l, also checks SPEC.md's closed form: the fractional entries of a
    row lie in an interval (tau, tau + l), so their spread is below l."""
    if x is not None:
        for row, o in zip(x, out):
            frac = row[(o > 0) & (o < 1)]
            assert len(frac) == 0 or frac.max() - frac.min() < l * (1 + 1e-9), (l, frac)
    return float(((out > 0).sum(1) - k).mean()), float(((out > 0) & (out < 1)).sum(1).mean())


def counts_mag(out, x, k):
    """(mean nnz - k, mean number of shrunk entries 0 < |out| < |x|) over rows."""
    return float(((out != 0).sum(1) - k).mean()), float(((out != 0) & (out != x)).sum(1).mean())


def gaussian_constants(n, k):
    """rho*sigma: entries per unit of x/sigma near the k-th largest x, and near the k-th largest |x|."""
    nd = NormalDist()
    z = nd.inv_cdf(1 - k / n)          # k-th largest x is about z sigma
    za = nd.inv_cdf(1 - k / (2 * n))   # k-th largest |x| is about za sigma
    return z, n * nd.pdf(z), za, 2 * n * nd.pdf(za)


def jacobian_norm(cli, mode, x, k, l, p, band):
    """Largest singular value of the Jacobian restricted to the band entries (exact, via --vjp)."""
    idx = np.flatnonzero(band)
    if len(idx) == 0:
        return 0.0
    g = np.zeros((len(idx), len(x)))
    g[np.arange(len(idx)), idx] = 1.0
    cols = run_cli(cli, mode, [x] * len(idx), k, l, p, vjp_rows=g)   # J^T e_i
    return float(np.linalg.norm(cols[:, idx], 2))


def order_stat_gap(s, k, above, below):
    """s sorted descending: s_(k - above) - s_(k + below), ranks 1-based and rounded."""
    top = max(int(round(k - above)), 1)
    bottom = min(int(round(k + below)), len(s))
    return s[top - 1] - s[bottom - 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cli", default="build/bin/sparsetopk")
    parser.add_argument("--out", default="docs/figures/l_guidance.png")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rows", type=int, default=40, help="random rows per point (a), (b)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n, k = args.n, args.k
    rng = np.random.default_rng(args.seed)
    z_rows = rng.standard_normal((args.rows, n))
    sigmas = (1.0, 100.0)
    z, rho, za, rho_abs = gaussian_constants(n, k)
    print(f"n = {n}, k = {k}, {args.rows} rows per point; k-th largest x ~ {z:.3f} sigma, "
          f"{rho:.2f} entries per sigma there; k-th largest |x| ~ {za:.3f} sigma, {rho_abs:.2f} per sigma")

    # (a) mask and (b) magnitude: counts against the scale-free l.
    grid = np.logspace(-3, 1.5, 19)
    mask_counts = {(p, s): [] for p in P_VALUES for s in sigmas}
    mag_counts = {(p, s): [] for p in P_VALUES for s in sigmas}
    for s in sigmas:
        x = rounded(s * z_rows)
        for p in P_VALUES:
            for r in grid:
                mask_counts[(p, s)].append(counts_mask(run_cli(args.cli, "mask", x, k, r * s, p), k, x, r * s))
                mag_counts[(p, s)].append(counts_mag(run_mag_b(args.cli, x, k, r, p), x, k))
    print("\n(a) mask: l/sigma, then nnz - k / fractional for p = 2 and p = 4/3 (sigma = 1 | sigma = 100), "
          f"first-order prediction of the fractional count rho*l = {rho:.2f} l/sigma")
    for i, r in enumerate(grid):
        cells = [f"{mask_counts[(p, s)][i][0]:7.2f}/{mask_counts[(p, s)][i][1]:7.2f}" for p in P_VALUES for s in sigmas]
        print(f"  {r:8.4f}  " + "  ".join(cells) + f"   pred {rho * r:8.2f}")
    print("\n(b) magnitude: b, then nnz - k / shrunk for p = 2 and p = 4/3 (sigma = 1 | sigma = 100); "
          f"first-order prediction of the shrunk count {rho_abs * za:.2f} b (both p)")
    for i, r in enumerate(grid):
        cells = [f"{mag_counts[(p, s)][i][0]:7.2f}/{mag_counts[(p, s)][i][1]:7.2f}" for p in P_VALUES for s in sigmas]
        print(f"  {r:8.4f}  " + "  ".join(cells) + f"   pred {rho_abs * za * r:8.2f}")
    for name, counts in (("mask", mask_counts), ("magnitude", mag_counts)):
        worst = max(abs(a[j] - b[j]) for p in P_VALUES for a, b in zip(counts[(p, 1.0)], counts[(p, 100.0)])
                    for j in (0, 1))
        print(f"  {name}: largest difference between the sigma = 1 and sigma = 100 counts: {worst:g}")

    # Exact scale laws on one row.
    x0 = rounded(z_rows[:1])
    c = 7.0
    for p in P_VALUES:
        a = run_cli(args.cli, "mask", x0, k, 0.3, p)
        b = run_cli(args.cli, "mask", rounded(c * x0), k, 0.3 * c, p)
        e = MAG_EXPONENT[p]
        m1 = run_cli(args.cli, "mag", x0, k, 0.05, p)
        m2 = run_cli(args.cli, "mag", rounded(c * x0), k, 0.05 * c ** e, p) / c
        shifted = run_cli(args.cli, "mask", rounded(x0 + 3.0), k, 0.3, p)
        print(f"shift law, p = {p}: max |mask(x + 3, l) - mask(x, l)| = {np.abs(a - shifted).max():.1e}")
        print(f"scale law, p = {p}: max |mask(cx, c l) - mask(x, l)| = {np.abs(a - b).max():.1e}; "
              f"max |mag(cx, c^{e:.3g} l)/c - mag(x, l)| = {np.abs(m1 - m2).max():.1e}  (c = {c:g})")

    # The rule: l from the gap between order statistics around the k-th value.
    print("\nrule check: l from the data for a target number m of fractional/shrunk entries "
          "(mean [min..max] over rows)")
    rule_rows = rounded(rng.standard_normal((20, n)))
    for kk in (k, 50):
        for m in (2, 4, 10, 20, 50):
            if m > kk:
                continue
            line = f"  k = {kk:3d}, m = {m:3d}:"
            for p in P_VALUES:
                above, below = (m / 2, m / 2) if p == "2" else (m / 4, 3 * m / 4)
                got_mask, got_mag = [], []
                for x in rule_rows:
                    s = np.sort(x)[::-1]
                    out = run_cli(args.cli, "mask", [x], kk, order_stat_gap(s, kk, above, below), p)
                    got_mask.append(int(((out > 0) & (out < 1)).sum()))
                    sa = np.sort(np.abs(x))[::-1]
                    tau = sa[kk - 1]
                    l = order_stat_gap(sa, kk, above, below) / tau ** (1.0 if p == "2" else 1.0 / 3.0)
                    assert abs(mag_l(x, kk, order_stat_gap(sa, kk, above, below) / tau, p) - l) <= 1e-12 * l
                    out = run_cli(args.cli, "mag", [x], kk, l, p)
                    got_mag.append(int(((out != 0) & (out != x)).sum()))
                line += (f"  p = {p}: mask {np.mean(got_mask):5.1f} [{min(got_mask)}..{max(got_mask)}],"
                         f" mag {np.mean(got_mag):5.1f} [{min(got_mag)}..{max(got_mag)}]")
            print(line)

    # (c) one entry moved through the threshold (sigma = 1).
    base = x0[0].copy()
    j = int(np.argmin(base))
    others = np.delete(base, j)
    t_k = np.sort(others)[::-1][k - 1]
    ts = t_k + np.linspace(-1.0, 1.0, 801)
    sweep_rows = np.repeat(base[None, :], len(ts), axis=0)
    sweep_rows[:, j] = ts
    sweep_rows = rounded(sweep_rows)
    sweep_ls = (0.03, 0.1, 0.3, 1.0)
    sweeps = {}
    print(f"\n(c) entry {j} moved through t_k = {t_k:.4f} (the k-th largest of the other entries):")
    for l in sweep_ls:
        for p in P_VALUES:
            ys = run_cli(args.cli, "mask", sweep_rows, k, l, p)[:, j]
            sweeps[(l, p)] = ys
            moving = ts[(ys > 0) & (ys < 1)] - t_k
            slope = np.max(np.diff(ys) / np.diff(ts))
            print(f"  l = {l:5.2f}, p = {p:3s}: 0 < out < 1 for t - t_k in [{moving.min():+.3f}, {moving.max():+.3f}]"
                  f" (width {moving.max() - moving.min():.3f} = {(moving.max() - moving.min()) / l:.2f} l);"
                  f" largest slope {slope:.3f} = {slope * l:.3f} / l")

    # (d) Lipschitz constant: largest singular value of the Jacobian on the band.
    lip_grid = np.logspace(-2, 0.5, 11)
    lip_rows = rounded(rng.standard_normal((3, n)))
    lip = {}
    print("\n(d) l * ||J||_2 (mask, l/sigma on the axis) and b * ||J||_2 (magnitude, b on the axis), "
          "mean [min..max] over 3 rows, sigma = 1:")
    for p in P_VALUES:
        for mode in ("mask", "mag"):
            vals = []
            for r in lip_grid:
                per_row = []
                for x in lip_rows:
                    l = r if mode == "mask" else mag_l(x, k, r, p)
                    out = run_cli(args.cli, mode, [x], k, l, p)[0]
                    band = (out > 0) & (out < 1) if mode == "mask" else (out != 0) & (out != x)
                    per_row.append(r * jacobian_norm(args.cli, mode, x, k, l, p, band))
                    # the gradient never reaches an entry whose output is 0 (nor, for the mask, a saturated one)
                    g = rounded(rng.standard_normal((1, n)))
                    grad = run_cli(args.cli, mode, [x], k, l, p, vjp_rows=g)[0]
                    outside = ~band if mode == "mask" else out == 0
                    assert np.all(grad[outside] == 0), (mode, p, r)
                vals.append(per_row)
            lip[(p, mode)] = np.array(vals)
            print(f"  p = {p:3s} {mode:4s}: " + "  ".join(
                f"{r:.3g}: {np.mean(v):.3f} [{min(v):.3f}..{max(v):.3f}]" for r, v in zip(lip_grid, vals)))

    # The figure.
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.2), dpi=150)
    for ax, counts, title, xlabel, preds in (
        (axes[0, 0], mask_counts, f"(a) soft top-k mask, n = {n}, k = {k}", r"$l / \sigma$",
         {"2": rho, "4/3": rho}),
        (axes[0, 1], mag_counts, f"(b) soft top-k in magnitude, n = {n}, k = {k}",
         r"$b$:  $l = b$ (p = 2),  $l = b\,\tau^{2/3}$ (p = 4/3),  $\tau$ = k-th largest $|x|$",
         {"2": rho_abs * za, "4/3": rho_abs * za}),
    ):
        for p in P_VALUES:
            for s, style in ((1.0, dict(linestyle="-")), (100.0, dict(linestyle="none", marker="o", mfc="none"))):
                extra = dict(markersize=4, **style)
                nnz = [cnt[0] for cnt in counts[(p, s)]]
                frac = [cnt[1] for cnt in counts[(p, s)]]
                ax.plot(grid, frac, color=COLORS[p], label=f"p = {p}, fractional, σ = {s:g}", **extra)
                if s == 1.0:
                    ax.plot(grid, nnz, color=COLORS[p], alpha=0.55, linestyle="--", label=f"p = {p}, nnz - k, σ = 1")
                else:
                    ax.plot(grid, nnz, color=COLORS[p], alpha=0.55, marker="x", linestyle="none", markersize=4)
            if p == "2":
                ax.plot(grid, preds[p] * grid, color="gray", linestyle=":", linewidth=1.2,
                        label=f"{preds[p]:.1f} × {'l/σ' if counts is mask_counts else 'b'} (density × band width)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(0.05, 2 * n)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("entries per row (mean over rows)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5, loc="upper left")

    ax = axes[1, 0]
    shades = dict(zip(sweep_ls, ("#440154", "#31688e", "#35b779", "#e0a800")))
    for l in sweep_ls:
        ax.plot(ts - t_k, sweeps[(l, "2")], color=shades[l], linewidth=1.5, label=f"l = {l:g}σ, p = 2")
        ax.plot(ts - t_k, sweeps[(l, "4/3")], color=shades[l], linewidth=1.5, linestyle="--",
                label=f"l = {l:g}σ, p = 4/3")
    ax.set_xlabel(r"$(x_j - t_k) / \sigma$, $t_k$ = k-th largest of the other entries")
    ax.set_ylabel(r"mask$_j$")
    ax.set_title("(c) one entry moved through the threshold (σ = 1)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.set_xlim(-1, 1)
    ax.legend(fontsize=6.5, ncol=2, loc="upper left")

    ax = axes[1, 1]
    for p in P_VALUES:
        for mode, style in (("mask", "-"), ("mag", "--")):
            v = lip[(p, mode)]
            ax.errorbar(lip_grid, v.mean(1), yerr=[v.mean(1) - v.min(1), v.max(1) - v.mean(1)], color=COLORS[p],
                        linestyle=style, marker="o" if mode == "mask" else "s", markersize=3.5, capsize=2,
                        label=f"{'mask: l' if mode == 'mask' else 'magnitude: b'} × ‖J‖₂, p = {p}")
    ax.set_xscale("log")
    ax.set_xlabel(r"$l / \sigma$ (mask), $b$ (magnitude), σ = 1")
    ax.set_ylabel("(l or b) × largest singular value of J")
    ax.set_title("(d) Lipschitz constant ≈ const / l", fontsize=10)
    ax.set_ylim(0, 4)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, metadata={"Software": None})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
