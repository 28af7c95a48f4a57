"""sparsetopk.jax: the XLA FFI operators against the core (through the torch ops,
which call the same core), SPEC.md's known values, the Figure 1 curve, both AD
modes against finite differences, the custom calls each mode lowers to, the
state's layout, jit, vmap, dtypes, errors, and the package working without
torch or without JAX.

Skipped when jax is not installed.
"""

import collections
import os
import re
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import sparsetopk  # noqa: E402
import sparsetopk.jax as stj  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
P_ALL = [4.0 / 3.0, 2.0, 1.5, 3.0]
SOFT = {"mask": (stj.soft_topk_mask, sparsetopk.soft_topk_mask),
        "mag": (stj.soft_topk_mag, sparsetopk.soft_topk_mag)}
HARD = {"mask": (stj.hard_topk_mask, sparsetopk.hard_topk_mask),
        "mag": (stj.hard_topk_mag, sparsetopk.hard_topk_mag)}


def core(op, x, k, l=0.1, p=4.0 / 3.0, axis=-1, solver="auto"):
    """The core's result, through the torch CPU op."""
    return SOFT[op][1](torch.from_numpy(np.asarray(x)), k, l, p, axis, solver).numpy()


def rows_of(kind, rng, shape):
    """Random, tied and hostile rows, float64."""
    if kind == "random":
        return rng.standard_normal(shape)
    if kind == "ties":
        return rng.integers(-2, 3, size=shape).astype(np.float64)
    if kind == "scales":
        return rng.standard_normal(shape) * 10.0 ** rng.integers(-8, 9, size=shape[:-1] + (1,))
    if kind == "near":  # entries within a few ulps of each other around the threshold
        base = rng.standard_normal(shape[:-1] + (1,))
        return base + rng.integers(-3, 4, size=shape) * np.spacing(base)
    raise ValueError(kind)


# ---- forward values ----

def test_known_values_of_spec():
    x = jnp.array([-5.0, -2.0, 3.0, 1.0], dtype=jnp.float32)
    np.testing.assert_allclose(stj.soft_topk_mask(x, 2, 0.01), [0, 0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(stj.soft_topk_mag(x, 2, 0.01), [-5, 0, 3, 0], atol=1e-5)
    assert stj.hard_topk_mask(x, 2).tolist() == [0, 0, 1, 1]
    assert stj.hard_topk_mag(x, 2).tolist() == [-5, 0, 3, 0]
    # the reference's names give the same
    np.testing.assert_allclose(stj.sparse_soft_topk_mask_pav(x, k=2, l=1e-2), [0, 0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(stj.sparse_soft_topk_mag_pav(x, k=2, l=1e-2), [-5, 0, 3, 0], atol=1e-5)
    assert stj.soft_topk_mask(x, 2, 0.01).dtype == jnp.float32


@pytest.mark.parametrize("op", ["mask", "mag"])
@pytest.mark.parametrize("p", P_ALL)
@pytest.mark.parametrize("kind", ["random", "ties", "scales", "near"])
def test_forward_is_the_core_bit_for_bit(op, p, kind):
    rng = np.random.default_rng(zlib.crc32(f"{op} {p} {kind}".encode()))  # the same rows in every run
    x = rows_of(kind, rng, (6, 5, 17))
    for k, l, axis in [(3, 0.1, -1), (1, 1.0, 1), (0, 0.5, -1), (17, 0.3, -1), (2, 1e-3, 0)]:
        if k > x.shape[axis]:
            continue
        got = np.asarray(SOFT[op][0](jnp.asarray(x), k, l, p, axis))
        np.testing.assert_array_equal(got, core(op, x, k, l, p, axis), err_msg=f"k={k} l={l} axis={axis}")


@pytest.mark.parametrize("op", ["mask", "mag"])
def test_solvers_float32_and_non_finite_rows(op):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 9))
    x[1, 3] = np.nan
    x[2, 0] = np.inf
    for solver in ["auto", "pav", "threshold"]:
        got = np.asarray(SOFT[op][0](jnp.asarray(x), 3, 0.2, 1.5, solver=solver))
        np.testing.assert_array_equal(got, core(op, x, 3, 0.2, 1.5, -1, solver))
    x32 = x.astype(np.float32)
    got32 = SOFT[op][0](jnp.asarray(x32), 3, 0.2)
    assert got32.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got32), SOFT[op][1](torch.from_numpy(x32), 3, 0.2).numpy())
    assert np.isnan(np.asarray(got32)[1]).all()


@pytest.mark.parametrize("op", ["mask", "mag"])
def test_hard_operators_are_the_core(op):
    rng = np.random.default_rng(2)
    x = rows_of("ties", rng, (5, 3, 8))
    for k, axis in [(0, -1), (3, -1), (8, -1), (2, 1)]:
        got = np.asarray(HARD[op][0](jnp.asarray(x), k, axis))
        np.testing.assert_array_equal(got, HARD[op][1](torch.from_numpy(x), k, axis).numpy())


def test_half_precision_is_computed_in_float32():
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 16)))
    for dtype in [jnp.float16, jnp.bfloat16]:
        xh = x.astype(dtype)
        for f in [stj.soft_topk_mask, stj.soft_topk_mag]:
            out = f(xh, 4, 0.5)
            assert out.dtype == dtype
            expected = f(xh.astype(jnp.float32), 4, 0.5).astype(dtype)
            np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))
        g = jax.grad(lambda v: (stj.soft_topk_mask(v, 4, 0.5) * jnp.arange(16.0, dtype=dtype)).sum())(xh)
        assert g.dtype == dtype


def test_empty_and_scalar_inputs():
    for f in [stj.soft_topk_mask, stj.soft_topk_mag]:
        assert f(jnp.zeros((0, 5)), 2).shape == (0, 5)
        assert f(jnp.zeros((3, 0)), 0).shape == (3, 0)
        assert float(f(jnp.array(2.5), 1, 0.1)) == float(SOFT["mask" if f is stj.soft_topk_mask else "mag"][1](
            torch.tensor(2.5, dtype=torch.float64), 1, 0.1))
    assert stj.hard_topk_mask(jnp.zeros((0, 4)), 1).shape == (0, 4)


# ---- Figure 1 of the paper: k = 2, x(s) = (3, 1, -1 + s, s), f(s) = mask_2 + mask_3 ----

def figure1_curve(function, s, **kwargs):
    x = jnp.stack([jnp.full_like(s, 3.0), jnp.ones_like(s), s - 1.0, s], axis=-1)
    y = function(x, 2, **kwargs)
    return y[..., 2] + y[..., 3]


def test_figure1_curve():
    s = jnp.linspace(-3.0, 8.0, 221)
    hard = np.asarray(figure1_curve(stj.hard_topk_mask, s))
    sv = np.asarray(s)
    np.testing.assert_array_equal(hard, np.where(sv <= 1, 0.0, np.where(sv <= 4, 1.0, 2.0)))
    # p = 2, l = 1 by hand (tests/core/test_known_values.cpp): 0, s/2, 1, (s-1)/2, 2
    by_hand = np.piecewise(sv, [sv <= 0, (sv > 0) & (sv <= 2), (sv > 2) & (sv <= 3), (sv > 3) & (sv <= 5), sv > 5],
                           [0.0, lambda t: t / 2, 1.0, lambda t: (t - 1) / 2, 2.0])
    np.testing.assert_allclose(np.asarray(figure1_curve(stj.soft_topk_mask, s, l=1.0, p=2.0)), by_hand, atol=1e-12)
    smooth = np.asarray(figure1_curve(stj.soft_topk_mask, s, l=1.0, p=4.0 / 3.0))
    assert (smooth[sv <= -1.0] == 0).all() and (smooth[sv >= 6.0] == 2).all()  # exactly 0 and 2: sparse
    assert (np.diff(smooth) >= -1e-12).all()
    # p = 4/3 is continuously differentiable: its derivative (reverse mode) has no jumps
    slope = jax.vmap(jax.grad(lambda t: figure1_curve(stj.soft_topk_mask, t, l=1.0, p=4.0 / 3.0)))(s)
    assert np.abs(np.diff(np.asarray(slope))).max() < 0.1
    kinked = jax.vmap(jax.grad(lambda t: figure1_curve(stj.soft_topk_mask, t, l=1.0, p=2.0)))(s)
    assert np.abs(np.diff(np.asarray(kinked))).max() >= 0.49  # p = 2: kinks (slopes 0, 1/2, 0, 1/2, 0)


# ---- derivatives ----

def finite_difference_jacobian(f, x, eps=1e-6):
    columns = []
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = eps
        e = e.reshape(x.shape)
        columns.append((np.asarray(f(x + e)) - np.asarray(f(x - e))).ravel() / (2 * eps))
    return np.stack(columns, axis=1)


def smooth_row(rng, n):
    """Distinct entries, spaced so that +-1e-6 changes no block."""
    return rng.permutation(n).astype(np.float64) * 0.37 + rng.uniform(-0.1, 0.1, n)


@pytest.mark.parametrize("op", ["mask", "mag"])
@pytest.mark.parametrize("p", P_ALL)
def test_every_autodiff_mode_matches_finite_differences(op, p):
    rng = np.random.default_rng(int(p * 100) + len(op))
    x = jnp.asarray(smooth_row(rng, 7) * (1 if op == "mask" else rng.choice([-1, 1], 7)))
    f = lambda v: SOFT[op][0](v, 3, 0.8, p)  # noqa: E731
    expected = finite_difference_jacobian(f, np.asarray(x))
    assert np.abs(expected).max() > 0.05  # the band is not empty: the test can fail
    for name, jac in [("jacfwd", jax.jacfwd(f)), ("jacrev", jax.jacrev(f)),
                      ("jit(jacfwd)", jax.jit(jax.jacfwd(f))), ("jit(jacrev)", jax.jit(jax.jacrev(f)))]:
        np.testing.assert_allclose(np.asarray(jac(x)), expected, atol=1e-6, err_msg=name)
    v = jnp.asarray(rng.standard_normal(7))
    _, tangent = jax.jvp(f, (x,), (v,))
    np.testing.assert_allclose(np.asarray(tangent), expected @ np.asarray(v), atol=1e-6)
    _, pullback = jax.vjp(f, x)
    np.testing.assert_allclose(np.asarray(pullback(v)[0]), expected.T @ np.asarray(v), atol=1e-6)
    grad = jax.jit(jax.grad(lambda u: jnp.dot(f(u), v)))(x)
    np.testing.assert_allclose(np.asarray(grad), expected.T @ np.asarray(v), atol=1e-6)


@pytest.mark.parametrize("op", ["mask", "mag"])
@pytest.mark.parametrize("p", P_ALL)
def test_vjp_is_the_core_vjp_on_hostile_rows(op, p):
    rng = np.random.default_rng(int(p * 10) + 7 * len(op))
    for kind in ["random", "ties", "scales", "near"]:
        x = rows_of(kind, rng, (5, 12))
        g = rng.standard_normal((5, 12))
        xt = torch.from_numpy(x).requires_grad_()
        SOFT[op][1](xt, 4, 0.3, p).backward(torch.from_numpy(g))
        _, pullback = jax.vjp(lambda v: SOFT[op][0](v, 4, 0.3, p), jnp.asarray(x))
        got = np.asarray(pullback(jnp.asarray(g))[0])
        scale = 1 + np.abs(xt.grad.numpy()).max()
        np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-9, atol=1e-9 * scale, err_msg=kind)


@pytest.mark.parametrize("op", ["mask", "mag"])
@pytest.mark.parametrize("p", [4.0 / 3.0, 2.0])
def test_float32_derivatives_match_float64(op, p):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 32))
    v = rng.standard_normal((8, 32))
    f = lambda u: SOFT[op][0](u, 5, 0.05, p)  # noqa: E731
    for dtype in [jnp.float64, jnp.float32]:
        _, tangent = jax.jvp(f, (jnp.asarray(x, dtype),), (jnp.asarray(v, dtype),))
        _, pullback = jax.vjp(f, jnp.asarray(x, dtype))
        cotangent = pullback(jnp.asarray(v, dtype))[0]
        grad = jax.jit(jax.grad(lambda u: jnp.sum(f(u) * jnp.asarray(v, dtype))))(jnp.asarray(x, dtype))
        assert tangent.dtype == cotangent.dtype == grad.dtype == dtype
        if dtype == jnp.float64:
            t64, c64 = np.asarray(tangent), np.asarray(cotangent)
            continue
        np.testing.assert_allclose(np.asarray(tangent), t64, rtol=2e-3, atol=2e-3 * np.abs(t64).max())
        np.testing.assert_allclose(np.asarray(cotangent), c64, rtol=2e-3, atol=2e-3 * np.abs(c64).max())
        np.testing.assert_array_equal(np.asarray(grad), np.asarray(cotangent))


@pytest.mark.parametrize("op", ["mask", "mag"])
def test_hard_derivatives(op):
    x = jnp.array([0.5, -3.0, 2.0, 1.0])
    jac = jax.jacrev(lambda v: HARD[op][0](v, 2))(x)
    expected = np.zeros((4, 4)) if op == "mask" else np.diag([0.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(jac), expected)


@pytest.mark.parametrize("op", ["mask", "mag"])
def test_second_derivatives_exact_for_p2_and_an_error_otherwise(op):
    x = jnp.asarray(smooth_row(np.random.default_rng(9), 6))
    w = jnp.arange(6.0)
    loss = lambda p: lambda v: jnp.dot(SOFT[op][0](v, 2, 1.5, p) ** 2, w)  # noqa: E731
    hessian = np.asarray(jax.hessian(loss(2.0))(x))
    grad = jax.grad(loss(2.0))
    expected = finite_difference_jacobian(grad, np.asarray(x))
    assert np.abs(expected).max() > 0.1  # the square makes the p = 2 Hessian non-zero
    np.testing.assert_allclose(hessian, expected, atol=1e-6)
    for name, mode in [("rev-rev", jax.jacrev(jax.jacrev(loss(2.0)))), ("fwd-fwd", jax.jacfwd(jax.jacfwd(loss(2.0)))),
                       ("jit(hessian)", jax.jit(jax.hessian(loss(2.0))))]:
        np.testing.assert_allclose(np.asarray(mode(x)), hessian, atol=1e-12, err_msg=name)
    with pytest.raises(NotImplementedError, match=f"soft_topk_{op}: second derivatives .* p = 2 only"):
        jax.hessian(loss(4.0 / 3.0))(x)
    with pytest.raises(NotImplementedError, match=f"soft_topk_{op}"):
        jax.jacfwd(jax.grad(loss(1.5)))(x)
    with pytest.raises(NotImplementedError, match=f"soft_topk_{op}"):
        jax.jacrev(jax.jacrev(loss(3.0)))(x)


# ---- transformations ----

CUSTOM_CALL_PRIMITIVES = ("sparsetopk_ffi", "sparsetopk_jacobian_product")  # _ffi.call and _ffi.jacobian_product


def ffi_calls(jaxpr) -> int:
    """The custom calls in a jaxpr: the forward calls and the derivatives' primitive."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name in CUSTOM_CALL_PRIMITIVES
        for sub in jax.core.subjaxprs(eqn.params) if hasattr(jax.core, "subjaxprs") else []:
            count += ffi_calls(sub)
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                count += ffi_calls(inner)
    return count


def custom_calls(function, *args) -> collections.Counter:
    """The custom call targets of function lowered by jax.jit, with their counts."""
    return collections.Counter(re.findall(r"custom_call @(\w+)", jax.jit(function).lower(*args).as_text()))


@pytest.mark.parametrize("op", ["mask", "mag"])
def test_vmap_is_one_call_and_matches_the_loop(op):
    rng = np.random.default_rng(11)
    xs = jnp.asarray(rng.standard_normal((6, 4, 10)))
    f = lambda v: SOFT[op][0](v, 3, 0.4, 1.5)  # noqa: E731
    batched = jax.vmap(f)
    assert ffi_calls(jax.make_jaxpr(batched)(xs).jaxpr) == 1
    np.testing.assert_array_equal(np.asarray(batched(xs)), np.stack([np.asarray(f(x)) for x in xs]))
    # vmap over a non-leading axis, and of the gradient: the forward and the VJP, one call each
    np.testing.assert_array_equal(np.asarray(jax.vmap(f, in_axes=1, out_axes=1)(xs)), np.asarray(f(xs)))
    g = jax.vmap(jax.grad(lambda v: jnp.sum(f(v) * jnp.arange(10.0))))(xs)
    assert ffi_calls(jax.make_jaxpr(jax.vmap(jax.grad(lambda v: jnp.sum(f(v)))))(xs).jaxpr) == 2
    np.testing.assert_allclose(np.asarray(g[2]), np.asarray(jax.grad(lambda v: jnp.sum(f(v) * jnp.arange(10.0)))(xs[2])),
                               atol=1e-12)


@pytest.mark.parametrize("op", ["mask", "mag"])
@pytest.mark.parametrize("p, solver", [(4.0 / 3.0, "auto"), (2.0, "auto"), (3.0, "pav"), (2.0, "dykstra")])
def test_reverse_mode_is_one_vjp_call(op, p, solver):
    """grad and vjp lower to the forward with state and exactly one call of the core's
    VJP; jvp to the forward with state and one call of its JVP; the primal alone to
    the forward without state."""
    x = jnp.asarray(np.random.default_rng(15).standard_normal((3, 4, 16)), jnp.float32)
    g = jnp.ones_like(x)
    f = lambda u: SOFT[op][0](u, 4, 0.2, p, solver=solver)  # noqa: E731
    name = f"sparsetopk_soft_topk_{op}"
    reverse = {f"{name}_with_state": 1, f"{name}_vjp": 1}
    assert custom_calls(jax.grad(lambda u: jnp.vdot(f(u), g)), x) == reverse
    assert custom_calls(lambda u, w: jax.vjp(f, u)[1](w), x, g) == reverse
    assert custom_calls(jax.vmap(jax.grad(lambda u: jnp.vdot(f(u), g[0]))), x) == reverse
    assert custom_calls(lambda u, w: jax.jvp(f, (u,), (w,)), x, g) == {f"{name}_with_state": 1, f"{name}_jvp": 1}
    assert custom_calls(f, x) == {name: 1}


def test_jit_with_static_arguments():
    x = jnp.asarray(np.random.default_rng(12).standard_normal((3, 8)))
    f = jax.jit(stj.soft_topk_mask, static_argnames=("k", "l", "p", "axis"))
    np.testing.assert_array_equal(np.asarray(f(x, k=2, l=0.3, p=1.5, axis=0)),
                                  np.asarray(stj.soft_topk_mask(x, 2, 0.3, 1.5, 0)))
    with pytest.raises(TypeError, match="l must be a Python number, not a traced array"):
        jax.jit(stj.soft_topk_mask, static_argnames=("k",))(x, k=2, l=0.3)


# ---- Dykstra ----

@pytest.mark.parametrize("op", ["mask", "mag"])
def test_dykstra_converges_to_the_exact_p2_solution(op):
    x = jnp.asarray(np.random.default_rng(13).standard_normal((4, 64)))
    exact = SOFT[op][0](x, 8, 0.3, 2.0)
    coarse = SOFT[op][0](x, 8, 0.3, 2.0, solver="dykstra", num_iter=2)
    fine = SOFT[op][0](x, 8, 0.3, 2.0, solver="dykstra", num_iter=5000)
    assert np.abs(np.asarray(fine - exact)).max() < 1e-6
    assert np.abs(np.asarray(coarse - exact)).max() > 10 * np.abs(np.asarray(fine - exact)).max()
    # the reference's names count alternate steps: num_iter = 2 m is m iterations
    alias = stj.sparse_soft_topk_mask_dykstra if op == "mask" else stj.sparse_soft_topk_mag_dykstra
    np.testing.assert_array_equal(np.asarray(alias(x, 8, 0.3, num_iter=10)),
                                  np.asarray(SOFT[op][0](x, 8, 0.3, 2.0, solver="dykstra", num_iter=5)))
    # differentiated with the exact block Jacobian at the solution: converged, it is the exact one
    v = jnp.asarray(np.random.default_rng(14).standard_normal((4, 64)))
    _, t_exact = jax.jvp(lambda u: SOFT[op][0](u, 8, 0.3, 2.0), (x,), (v,))
    _, t_fine = jax.jvp(lambda u: SOFT[op][0](u, 8, 0.3, 2.0, solver="dykstra", num_iter=5000), (x,), (v,))
    np.testing.assert_allclose(np.asarray(t_fine), np.asarray(t_exact), atol=1e-8)
    _, pull_exact = jax.vjp(lambda u: SOFT[op][0](u, 8, 0.3, 2.0), x)
    _, pull_fine = jax.vjp(lambda u: SOFT[op][0](u, 8, 0.3, 2.0, solver="dykstra", num_iter=5000), x)
    np.testing.assert_allclose(np.asarray(pull_fine(v)[0]), np.asarray(pull_exact(v)[0]), atol=1e-8)


# ---- the state: the rows' RowStates as raw bytes ----

def test_state_is_the_row_states_bytes():
    """uint32 [..., 22]: per row the 11 doubles (gamma, W_B, unchanged_from, band
    first key/index, band last key/index, the near entries' offsets) of
    include/sparsetopk/row_state.hpp."""
    x = jnp.asarray([[3.0, 1.0, 0.5, 1.5], [3.0, np.nan, 0.5, 1.5]], jnp.float32)
    for solver, num_iter in [("auto", 0), ("dykstra", 1000)]:
        out, state = stj._ffi.soft_with_state(x, "mask", 2, 1.0, 2.0, solver, num_iter)
        assert state.dtype == jnp.uint32 and state.shape == (2, 22)
        rows = np.asarray(state).view(np.float64)  # p = 2, l = 1 by hand: tau = 0.75, band {1.5, 1.0}
        np.testing.assert_allclose(np.asarray(out[0]), [1.0, 0.25, 0.0, 0.75], atol=1e-6)
        np.testing.assert_allclose(rows[0, [0, 1, 3, 4, 5, 6]], [0.75, 1.0, 1.5, 3.0, 1.0, 1.0], atol=1e-6)
        assert np.isinf(rows[0, 7]) and np.isinf(rows[0, 9])  # no entry within rounding of tau
        assert np.isnan(rows[1, 0])  # a row holding NaN


def test_derivatives_without_x64_are_float32():
    """The state needs no 64-bit arrays: float32 derivatives with x64 off."""
    out = run_isolated("torch", """
        import jax, jax.numpy as jnp, numpy as np
        import sparsetopk.jax as stj
        assert not jax.config.jax_enable_x64
        x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 9)), jnp.float32)
        for f in [stj.soft_topk_mask, stj.soft_topk_mag]:
            g = jax.grad(lambda u: (f(u, 3, 0.3) * jnp.arange(9.0)).sum())(x)
            _, t = jax.jvp(lambda u: f(u, 3, 0.3), (x,), (x,))
            print(g.dtype, t.dtype, bool(jnp.isfinite(g).all() & (jnp.abs(g).max() > 0)))
    """)
    assert out.split("\n")[:2] == ["float32 float32 True"] * 2


@pytest.mark.parametrize("make_state, v_shape, message", [
    (lambda x, s: s.astype(jnp.int32), (3, 8), r"sparsetopk_soft_topk_mask_vjp: state must be uint32"),
    (lambda x, s: s[:, :7], (3, 8), r"state must have shape \[3, 22\] .* got \[3, 7\]"),
    (lambda x, s: s[:2], (3, 8), r"state must have shape \[3, 22\] .* got \[2, 22\]"),
    (lambda x, s: s, (3, 7), r"v must have the shape of x, \[3, 8\], got \[3, 7\]"),
])
def test_derivative_handlers_check_their_buffers(make_state, v_shape, message):
    x = jnp.asarray(np.random.default_rng(16).standard_normal((3, 8)))
    _, state = stj._ffi.soft_with_state(x, "mask", 2, 0.5, 4.0 / 3.0, "auto", 0)
    with pytest.raises(Exception, match=message):
        jax.block_until_ready(stj._ffi.jacobian_product(x, make_state(x, state), jnp.ones(v_shape), "mask", "vjp",
                                                        0.5, 4.0 / 3.0))


# ---- errors name the argument and its value ----

@pytest.mark.parametrize("call, error, message", [
    (lambda x: stj.soft_topk_mask(x, 5), ValueError, r"soft_topk_mask: k = 5 is out of range \[0, n = 4\]"),
    (lambda x: stj.soft_topk_mag(x, -1), ValueError, r"soft_topk_mag: k = -1 is out of range"),
    (lambda x: stj.hard_topk_mask(x, 9), ValueError, r"hard_topk_mask: k = 9 is out of range"),
    (lambda x: stj.soft_topk_mask(x, 1.5), TypeError, r"k must be an integer, got 1.5"),
    (lambda x: stj.soft_topk_mask(x, 2, l=0.0), ValueError, r"l must be finite and > 0, got 0.0"),
    (lambda x: stj.soft_topk_mask(x, 2, l=float("inf")), ValueError, r"l must be finite and > 0, got inf"),
    (lambda x: stj.soft_topk_mag(x, 2, p=1.0), ValueError, r"p must be finite and > 1, got 1.0"),
    (lambda x: stj.soft_topk_mag(x, 2, p="a"), TypeError, r"p must be a number, got 'a'"),
    (lambda x: stj.soft_topk_mask(x, 2, axis=2), ValueError, r"axis = 2 is out of range for an array of rank 1"),
    (lambda x: stj.soft_topk_mask(x.astype(jnp.int32), 2), TypeError, r"x must be a floating-point array .* int32"),
    (lambda x: stj.soft_topk_mask(x, 2, solver="fast"), ValueError, r"solver = 'fast' is not one of"),
    (lambda x: stj.soft_topk_mask(x, 2, solver="dykstra"), ValueError, r"solver = 'dykstra' needs p = 2, got p"),
    (lambda x: stj.soft_topk_mask(x, 2, p=2.0, solver="dykstra", num_iter=0), ValueError, r"num_iter = 0 must be"),
    (lambda x: stj.soft_topk_mask(x, 2, num_iter=10), ValueError, r"num_iter = 10 is only used by solver"),
])
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(jnp.array([1.0, 2.0, 3.0, 4.0]))


def test_docstrings_run_and_every_public_name_is_documented():
    import doctest

    assert doctest.testmod(stj, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
    for name in stj.__all__:
        assert getattr(stj, name).__doc__, name


# ---- each framework without the other ----

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {blocked!r} or name.startswith({blocked!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
sys.meta_path.insert(0, Block())
"""


def run_isolated(blocked: str, body: str) -> str:
    script = BLOCKER.format(blocked=blocked) + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            cwd=str(REPO), timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cuda_handlers_register_on_opt_in_only():
    """The UNVERIFIED CUDA handlers (never run: no GPU here) load and register for
    the CUDA platform on opt-in only; the CPU targets work either way."""
    cuda_library = REPO / "build" / "lib" / "libsparsetopk_jax_cuda.so"
    if not cuda_library.is_file():
        pytest.skip("libsparsetopk_jax_cuda.so is not built (no nvcc or no CUDA torch at configure time)")
    body = """
        import jax.numpy as jnp
        import sparsetopk.jax as stj
        print(stj._ffi.cuda_registered, stj.soft_topk_mask(jnp.array([-5., -2., 3., 1.]), 2, 0.01).tolist())
    """
    assert "False [0.0, 0.0, 1.0, 1.0]" in run_isolated("torch", body)
    os.environ["SPARSETOPK_JAX_CUDA_KERNELS"] = "1"
    try:
        assert "True [0.0, 0.0, 1.0, 1.0]" in run_isolated("torch", body)
    finally:
        del os.environ["SPARSETOPK_JAX_CUDA_KERNELS"]


def test_the_registered_targets_are_the_rows_of_the_librarys_table():
    """_ffi.py registers what libsparsetopk_jax.so's table holds (ffi_handlers.cpp): per
    operator its forward, forward with state, and for the soft ones the JVP and VJP;
    each row a handler of its own; the top-k sum and loss; the global operators (global_handlers.cpp).
    The CUDA library's table (where built) has the same names but the top-k sum and loss and the
    global operators."""
    path = next(p for p in stj._ffi.library_paths() if p.is_file())
    rows = stj._ffi.library_targets(path)
    names = [name for name, _ in rows]
    expected = [f"sparsetopk_soft_topk_{op}{suffix}" for op in ("mask", "mag")
                for suffix in ("", "_with_state", "_jvp", "_vjp")]
    expected += ["sparsetopk_hard_topk_mask", "sparsetopk_hard_topk_mag"]
    losses = ["sparsetopk_topk_sum", "sparsetopk_topk_loss"]  # CPU only so far (docs/losses.md)
    global_ops = [f"sparsetopk_soft_topk_{op}_global{suffix}" for op in ("mask", "mag")
                  for suffix in ("", "_jvp", "_vjp")]
    global_ops += ["sparsetopk_hard_topk_mask_global", "sparsetopk_hard_topk_mag_global"]  # CPU only (docs/jax.md)
    assert sorted(names) == sorted(expected + losses + global_ops)
    handlers = [handler for _, handler in rows]
    assert all(handlers) and len(set(handlers)) == len(handlers)
    cuda_library = REPO / "build" / "lib" / "libsparsetopk_jax_cuda.so"
    if cuda_library.is_file():
        assert sorted(name for name, _ in stj._ffi.library_targets(cuda_library)) == sorted(expected)


def test_a_missing_or_foreign_library_is_a_clear_import_error():
    body = """
        import os
        os.environ["SPARSETOPK_JAX_LIBRARY"] = {library!r}
        try:
            import sparsetopk.jax
        except ImportError as e:
            print("ImportError:", e)
    """
    out = run_isolated("torch", body.format(library="/nonexistent/libsparsetopk_jax.so"))
    assert "ImportError: sparsetopk.jax: cannot find libsparsetopk_jax.so (looked in: " \
           "/nonexistent/libsparsetopk_jax.so)" in out, out
    import _ctypes  # a loadable shared library that is not ours

    out = run_isolated("torch", body.format(library=_ctypes.__file__))
    assert f"ImportError: sparsetopk.jax: {_ctypes.__file__} does not export sparsetopk_ffi_targets" in out, out


def test_jax_part_works_without_torch():
    out = run_isolated("torch", """
        import sys, jax.numpy as jnp
        import sparsetopk.jax as stj
        print(stj.soft_topk_mask(jnp.array([-5., -2., 3., 1.]), 2, 0.01).tolist(), "torch" in sys.modules)
        print("torch-side modules:", sorted(m for m in sys.modules if m in ("sparsetopk._library",
              "sparsetopk._registration", "sparsetopk.functional", "sparsetopk.nn")))
        try:
            import sparsetopk
            sparsetopk.soft_topk_mask
        except ImportError as e:
            print("ImportError:", e)
    """)
    assert "[0.0, 0.0, 1.0, 1.0] False" in out
    assert "torch-side modules: []" in out
    assert "ImportError: sparsetopk.soft_topk_mask is part of the PyTorch API, which needs torch" in out


def test_torch_part_works_without_jax():
    out = run_isolated("jax", """
        import sys, torch, sparsetopk
        print(sparsetopk.soft_topk_mask(torch.tensor([-5., -2., 3., 1.]), 2, 0.01).tolist(), "jax" in sys.modules)
        try:
            import sparsetopk.jax
        except ImportError as e:
            print("ImportError:", type(e).__name__)
    """)
    assert "[0.0, 0.0, 1.0, 1.0] False" in out
    assert "ImportError: ModuleNotFoundError" in out
