"""Dumps every operator's outputs and first derivatives on a fixed set of
random, tied and hostile inputs, on the CPU, to an .npz file; or compares two
such dumps.

    python tests/bitwise/dump_outputs.py dump OUT.npz
    python tests/bitwise/dump_outputs.py compare BEFORE.npz AFTER.npz

``scripts/check-bitwise.sh REF`` builds REF (default: origin/main's first
parent) beside the checkout, dumps with both builds and compares: outputs must
be bitwise identical; derivatives are reported by their largest change (in
units of the larger of the two values' float64 spacing, and absolute).

The cases are generated from fixed seeds, so both dumps see the same inputs.
Operators: soft_topk_mask and soft_topk_mag (solvers auto, pav, threshold and
generic; dykstra for p = 2), hard_topk_mask and hard_topk_mag, through the
torch ops (float32 and float64), and the JAX operators (float32 and float64)
where sparsetopk.jax loads. Derivatives: the VJP of a fixed random cotangent
and the JVP of a fixed random tangent.
"""

import math
import sys
import zlib
from typing import Dict, Iterator, Tuple

import numpy as np

P_VALUES = (4.0 / 3.0, 2.0, 1.5, 3.0)


def _rows(name: str, seed: int, shape: Tuple[int, int]) -> np.ndarray:
    g = np.random.default_rng(seed)
    rows, n = shape
    if name == "normal":
        return g.standard_normal(shape)
    if name == "ties":  # few distinct values: ties at and around the k-th
        return g.integers(-3, 4, size=shape).astype(np.float64)
    if name == "equal":  # every entry of a row equal
        return np.repeat(g.standard_normal((rows, 1)), n, axis=1)
    if name == "near_ties":  # clusters a few ulps apart
        base = np.repeat(g.standard_normal((rows, 1)), n, axis=1)
        return base + g.integers(-4, 5, size=shape) * np.spacing(np.abs(base))
    if name == "scales":  # magnitudes from 1e-300 to 1e300 in one row
        return g.choice([-1.0, 1.0], size=shape) * 10.0 ** g.uniform(-300, 300, size=shape)
    if name == "tiny":  # subnormals, zeros of both signs and tiny normals
        x = g.standard_normal(shape) * 1e-310
        x[:, ::5] = 0.0
        x[:, 1::7] = -0.0
        return x
    if name == "wide_l":  # entries far apart against l (separated rows)
        return g.standard_normal(shape) * 1e4
    if name == "non_finite":
        x = g.standard_normal(shape)
        x[0, 1] = np.nan
        if rows > 1:
            x[1, 0] = np.inf
        if rows > 2:
            x[2, -1] = -np.inf
        return x
    raise ValueError(name)


def cases() -> Iterator[Tuple[str, np.ndarray, int, float, float]]:
    """(label, x, k, l, p) for every case, in a fixed order."""
    families = ("normal", "ties", "equal", "near_ties", "scales", "tiny", "wide_l", "non_finite")
    shapes = ((16, 9), (4, 257))
    seed = 0
    for family in families:
        for shape in shapes:
            seed += 1
            x = _rows(family, seed, shape)
            n = shape[1]
            for k in sorted({0, 1, 2, n // 2, n - 1, n}):
                for l in (1e-3, 0.1, 10.0):
                    for p in P_VALUES:
                        yield f"{family}/{shape[0]}x{n}/k{k}/l{l:g}/p{p:.4g}", x, k, l, p
    # large rows: the threaded paths (many rows, and one row split across threads)
    g = np.random.default_rng(1234)
    yield "normal/512x512/k64/l0.1/p1.333", g.standard_normal((512, 512)), 64, 0.1, 4.0 / 3.0
    yield "normal/1x300000/k3000/l0.01/p1.333", g.standard_normal((1, 300000)), 3000, 0.01, 4.0 / 3.0
    yield "normal/1x300000/k3000/l0.01/p3", g.standard_normal((1, 300000)), 3000, 0.01, 3.0


def _torch_results(results: Dict[str, np.ndarray]) -> None:
    import torch
    import sparsetopk

    torch.manual_seed(0)
    for label, x64, k, l, p in cases():
        g = np.random.default_rng(zlib.crc32(label.encode()))
        for dtype in (torch.float64, torch.float32):
            x = torch.tensor(x64, dtype=dtype)
            cotangent = torch.tensor(g.standard_normal(x64.shape), dtype=dtype)
            tangent = torch.tensor(g.standard_normal(x64.shape), dtype=dtype)
            tag = f"torch/{str(dtype)[6:]}/{label}"
            results[f"{tag}/hard_topk_mask"] = sparsetopk.hard_topk_mask(x, k).numpy()
            results[f"{tag}/hard_topk_mag"] = sparsetopk.hard_topk_mag(x, k).numpy()
            solvers = ["auto", "pav", "generic"] + (["dykstra"] if p == 2.0 else [])
            if x.numel() > 100000:
                solvers = ["auto", "pav"]
            for name in ("soft_topk_mask", "soft_topk_mag"):
                op = getattr(sparsetopk, name)
                for solver in solvers:
                    num_iter = 50 if solver == "dykstra" else None
                    key = f"{tag}/{name}/{solver}"
                    leaf = x.clone().requires_grad_(True)
                    out = op(leaf, k, l, p, -1, solver, num_iter)
                    results[f"{key}/out"] = out.detach().numpy()
                    (grad,) = torch.autograd.grad(out, leaf, cotangent, allow_unused=True)
                    results[f"{key}/vjp"] = (torch.zeros_like(x) if grad is None else grad).numpy()
                    _, jvp = torch.func.jvp(lambda t: op(t, k, l, p, -1, solver, num_iter), (x,), (tangent,))
                    results[f"{key}/jvp"] = jvp.numpy()


def _jax_results(results: Dict[str, np.ndarray]) -> None:
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        import sparsetopk.jax as sj
        sj.soft_topk_mask(jnp.zeros((1, 2)), 1)
    except Exception as error:  # noqa: BLE001  (no JAX build: torch only)
        print(f"JAX skipped: {error}", file=sys.stderr)
        return
    for label, x64, k, l, p in cases():
        if x64.size > 100000:
            continue
        g = np.random.default_rng(zlib.crc32(label.encode()))
        for dtype in (jnp.float64, jnp.float32):
            x = jnp.asarray(x64, dtype=dtype)
            cotangent = jnp.asarray(g.standard_normal(x64.shape), dtype=dtype)
            tag = f"jax/{jnp.dtype(dtype).name}/{label}"
            results[f"{tag}/hard_topk_mask"] = np.asarray(sj.hard_topk_mask(x, k))
            for name in ("soft_topk_mask", "soft_topk_mag"):
                op = getattr(sj, name)
                out, pullback = jax.vjp(lambda t: op(t, k, l=l, p=p), x)
                results[f"{tag}/{name}/out"] = np.asarray(out)
                results[f"{tag}/{name}/vjp"] = np.asarray(pullback(cotangent)[0])


def dump(path: str) -> None:
    results: Dict[str, np.ndarray] = {}
    _torch_results(results)
    _jax_results(results)
    np.savez_compressed(path, **results)
    print(f"{len(results)} arrays written to {path}")


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in units of the float64 spacing of the larger of |a|, |b| (0 where both are equal or both NaN)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
    spacing = np.spacing(np.maximum(np.abs(a64), np.abs(b64)).astype(a.dtype)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ulps = np.abs(a64 - b64) / spacing
    return np.where(same, 0.0, np.where(np.isnan(ulps), np.inf, ulps))


def compare(before_path: str, after_path: str) -> int:
    before, after = np.load(before_path), np.load(after_path)
    missing = sorted(set(before.files) ^ set(after.files))
    if missing:
        print(f"{len(missing)} arrays are in one dump only, e.g. {missing[:3]}")
    outputs_differ, worst = [], {}
    for key in sorted(set(before.files) & set(after.files)):
        a, b = before[key], after[key]
        if key.endswith("/vjp") or key.endswith("/jvp"):
            ulps = _ulps(a, b)
            kind = key.rsplit("/", 1)[1]
            entry = worst.setdefault(kind, (0.0, 0.0, "", 0))
            changed = int(np.count_nonzero(ulps))
            largest = float(ulps.max()) if ulps.size else 0.0
            moved = ulps > 0  # (equal values, infinities and NaNs included, did not move)
            absolute = float(np.abs(a.astype(np.float64) - b.astype(np.float64))[moved].max()) if moved.any() else 0.0
            if math.isnan(absolute):
                absolute = math.inf  # a NaN on one side only
            worst[kind] = (max(entry[0], largest), max(entry[1], absolute),
                           key if largest > entry[0] else entry[2], entry[3] + changed)
        elif a.tobytes() != b.tobytes():
            outputs_differ.append(key)
    outputs = [k for k in before.files if not (k.endswith("/vjp") or k.endswith("/jvp"))]
    print(f"outputs: {len(outputs) - len(outputs_differ)} of {len(outputs)} arrays bitwise identical")
    for key in outputs_differ[:20]:
        print(f"  DIFFERS: {key}")
    for kind, (largest, absolute, key, changed) in sorted(worst.items()):
        print(f"{kind}: {changed} entries changed; largest change {largest:.3g} ulps (at {key or '-'}), "
              f"largest absolute change {absolute:.3g}")
    return 1 if outputs_differ or missing else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "dump":
        dump(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
