"""The soft operators against SPEC.md's definition solved in 80-digit arithmetic.

`exact_soft_topk` below is SPEC.md's recipe run with mpmath (which torch
brings, through sympy): sort, Pool Adjacent Violators on the isotonic problem,
each block's value found by bisection of its first-order condition to far
below a double's resolution, then the output formula. It shares no code with
the library. Both exact solvers (pav, threshold) must agree with it to 1e-9 of
the row's largest output on

- random rows of a few entries (p = 4/3, 2, 1.5, 3, 5; mask and magnitude);
- rows whose keys lie anywhere from 1e-150 to 1e150, with l from 1e-3 to 1e3
  times them (p = 4/3 and 2, whose closed forms work in scaled units);
- near-ties: entries tied at s with others one to three ulps above, and l such
  that the magnitude block's offsets u_i are about an ulp of gamma
  (l s^(p-2) ~ 1e-18..1e-13), or the mask's threshold within l ~ 1e-17..1e-13 s
  of the ties. There the outputs depend on digits a double gamma does not hold,
  and the threshold solver once kept such an entry unchanged that belongs to the
  block (docs/robustness.md).
"""

import math
import random
from typing import List, Sequence, Tuple

import mpmath
import pytest
import torch

import sparsetopk

DIGITS = 80  # at least; more where l or the keys are far from 1 (exact_soft_topk)
SOLVERS = ("pav", "threshold")
Case = Tuple[str, int, float, float, List[float]]  # (form, k, l, p, x)


def _power(u, a):
    """SPEC.md's sign-preserving pow(u, a)."""
    return mpmath.sign(u) * abs(u) ** a


def _block_value(keys: Sequence, weight: int, q, l, mask: bool):
    """gamma solving the block's first-order condition (SPEC.md, "Reduction"), by bisection."""
    def residual(g):  # decreasing in g
        total = sum(_power((s - g) / l, q - 1) for s in keys)
        return total - (weight if mask else g * weight)
    # the bracket of SPEC.md's block equation: F(lo) >= 0 >= F(hi), as narrow as the keys and l make it
    if mask:  # every term is W / n at min(keys) - l (W/n)^(p-1): a little below it (rounding)
        shift = l * (mpmath.mpf(weight) / len(keys)) ** (1 / (q - 1))
        lo, hi = min(keys) - shift * (1 + mpmath.mpf(10) ** -20), max(keys)
    else:
        lo, hi = mpmath.mpf(0), max(keys)
    assert residual(lo) >= 0 >= residual(hi)
    for _ in range(int(3.4 * mpmath.mp.dps) + 20):  # to below the working precision
        mid = (lo + hi) / 2
        if residual(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def exact_soft_topk(x: Sequence[float], k: int, l: float, p: float, mask: bool) -> List:
    """soft_topk_mask (mask) or soft_topk_mag of one row, SPEC.md steps 1-5, in mpmath.

    The working precision grows where u_i = s_i - v_i is tiny against the keys
    s, which the digits of v_i must resolve: u ~ l against s for the mask,
    u ~ l s^(p-1) for the magnitude.
    """
    scale = max(max(abs(v) for v in x), 1e-300)
    relative_u = math.log10(l) - math.log10(scale) if mask else math.log10(l) + (p - 2) * math.log10(scale)
    digits = DIGITS + min(max(0, int(-relative_u)), 320)
    with mpmath.workdps(digits):
        p_, l_ = mpmath.mpf(p), mpmath.mpf(l)
        q = p_ / (p_ - 1)
        values = [mpmath.mpf(v) for v in x]
        key = (lambda v: v) if mask else abs
        order = sorted(range(len(x)), key=lambda i: (-key(values[i]), i))
        s = [key(values[i]) for i in order]
        blocks = []  # [keys, weight, value]
        for j, s_j in enumerate(s):
            w = 1 if j < k else 0
            blocks.append([[s_j], w, _block_value([s_j], w, q, l_, mask)])
            while len(blocks) > 1 and blocks[-2][2] < blocks[-1][2]:  # pool violators
                keys, weight, _ = blocks.pop()
                blocks[-1][0] += keys
                blocks[-1][1] += weight
                blocks[-1][2] = _block_value(blocks[-1][0], blocks[-1][1], q, l_, mask)
        v = [value for keys, _, value in blocks for _ in keys]
        out = [mpmath.mpf(0)] * len(x)
        for j, i in enumerate(order):
            if mask:
                out[i] = max(_power((s[j] - v[j]) / l_, q - 1), 0)
            else:
                u = max(s[j] - v[j], 0)
                out[i] = mpmath.sign(values[i]) * (_power(u / l_, q - 1) + u)
        return out


def test_exact_reference_reproduces_spec_known_values():
    """The reference itself: SPEC.md's published values, and p = 2's closed form."""
    x = [-5.0, -2.0, 3.0, 1.0]
    assert [float(v) for v in exact_soft_topk(x, 2, 0.01, 4.0 / 3.0, mask=False)] == pytest.approx(
        [-5.0, 0.0, 3.0, 0.0], abs=1e-12)
    assert [float(v) for v in exact_soft_topk(x, 2, 0.01, 4.0 / 3.0, mask=True)] == pytest.approx(
        [0.0, 0.0, 1.0, 1.0], abs=1e-12)
    # p = 2, k = 1, l = 1: x = (1, 0.5) pools into one block; the mask is (0.75, 0.25)
    assert [float(v) for v in exact_soft_topk([1.0, 0.5], 1, 1.0, 2.0, mask=True)] == pytest.approx(
        [0.75, 0.25], abs=1e-15)


def _gaussian_cases(seed: int, count: int, max_n: int, decades: float, l_decades: Tuple[float, float],
                    ps: Sequence[float]) -> List[Case]:
    """Rows of a few normal keys times 10^U(-decades, decades), l = that scale times 10^U(l_decades)."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        n = rng.randint(2, max_n)
        scale = 10.0 ** rng.uniform(-decades, decades)
        x = [rng.gauss(0.0, 1.0) * scale for _ in range(n)]
        cases.append((rng.choice(("mask", "mag")), rng.randint(1, n - 1), scale * 10.0 ** rng.uniform(*l_decades),
                      rng.choice(ps), x))
    return cases


def _near_tie_cases(seed: int, count: int, form: str) -> List[Case]:
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        p = rng.choice((3.0, 2.5, 5.0, 1.5, 4.0))
        s = 10.0 ** rng.uniform(-30, 30)
        x = [s] * rng.randint(2, 12)
        for _ in range(rng.randint(1, 3)):  # one to three entries a few ulps above the tie
            v = s
            for _ in range(rng.randint(1, 3)):
                v = math.nextafter(v, math.inf)
            x.append(v)
        x += [s * rng.uniform(0.0, 0.9) for _ in range(rng.randint(0, 4))]
        rng.shuffle(x)
        if form == "mag":
            x = [v if rng.random() < 0.5 else -v for v in x]
            l = 10.0 ** rng.uniform(-18, -13) / s ** (p - 2)  # u_i ~ l gamma^(p-1): about an ulp of gamma
        else:
            x = [v if rng.random() < 0.8 else -v for v in x]
            l = s * 10.0 ** rng.uniform(-17, -13)
        if 1e-300 < l < 1e300:
            cases.append((form, rng.randint(1, len(x) - 1), l, p, x))
    return cases


CASES = {
    "random": _gaussian_cases(1, 24, 10, 3.0, (-2.0, 1.0), (4.0 / 3.0, 2.0, 1.5, 3.0, 5.0)),
    # keys 1e-150 to 1e150, l 1e-3 to 1e3 times them: the closed forms' scaled units
    "extreme_scales": _gaussian_cases(4, 24, 8, 150.0, (-3.0, 3.0), (4.0 / 3.0, 2.0)),
    "near_tie_mag": _near_tie_cases(21, 40, "mag"),  # (a seed where the old threshold solver failed 4 rows)
    "near_tie_mask": _near_tie_cases(3, 24, "mask"),
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_soft_topk_matches_the_exact_reference(family):
    failures = []
    for form, k, l, p, x in CASES[family]:
        mask = form == "mask"
        expected = [float(v) for v in exact_soft_topk(x, k, l, p, mask)]
        scale = 1.0 if mask else max(max(abs(v) for v in expected), 1e-300)
        op = sparsetopk.soft_topk_mask if mask else sparsetopk.soft_topk_mag
        for solver in SOLVERS:
            out = op(torch.tensor([x], dtype=torch.float64), k, l=l, p=p, solver=solver)[0].tolist()
            error = max(abs(a - b) for a, b in zip(out, expected)) / scale
            if not error <= 1e-9:
                failures.append(f"{form} solver={solver} k={k} l={l!r} p={p!r} x={x!r}: error {error:.3g}")
    assert not failures, "\n".join(failures)
