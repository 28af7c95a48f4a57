"""The operators of SPEC.md as JAX functions over the FFI calls of :mod:`._ffi`.

Differentiation: each soft operator is a ``jax.custom_jvp``. Its tangent rule
makes the forward call that also returns the state (one RowState per row,
opaque) and applies the core's JVP to the tangent (``_ffi.jacobian_product``,
one custom call): no math here. The rule is linear in the tangent, and JAX
transposes it for reverse mode (grad, vjp, jacrev) into one call of the core's
VJP.

Second derivatives: for p = 2 (and Dykstra, which is p = 2) the operators are
piecewise linear, c_i = 1/l is constant and the state enters the derivatives
only through comparisons, so the state has a zero tangent and second
derivatives are exact (zero almost everywhere). For any other p, c depends on
x and differentiating the rule raises an error naming the operator.
"""

import functools
import math
import operator as _operator
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi

SOLVERS = ("auto", "pav", "threshold", "dykstra")
DEFAULT_NUM_ITER = 10000  # Dykstra iterations (both sets of pairs) when num_iter is not given: the torch ops' default (docs/dykstra.md)


# ---- argument checks: each error names the function, the argument and its value ----

def _fail(name: str, message: str, error=ValueError):
    raise error(f"sparsetopk.jax.{name}: {message}")


def _check_static(name: str, argument: str, value) -> None:
    if isinstance(value, jax.core.Tracer):
        _fail(name, f"{argument} must be a Python number, not a traced array: pass it as a static argument "
                    "(e.g. jax.jit(..., static_argnames=...))", TypeError)


def _check_k(name: str, k, n: int) -> int:
    _check_static(name, "k", k)
    try:
        k = _operator.index(k)
    except TypeError:
        _fail(name, f"k must be an integer, got {k!r}", TypeError)
    if not 0 <= k <= n:
        _fail(name, f"k = {k} is out of range [0, n = {n}]")
    return k


def _check_number(name: str, argument: str, value, lower: float, relation: str) -> float:
    _check_static(name, argument, value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        _fail(name, f"{argument} must be a number, got {value!r}", TypeError)
    if not (value > lower and math.isfinite(value)):
        _fail(name, f"{argument} must be finite and {relation}, got {value!r}")
    return value


def _check_solver(name: str, solver: str, num_iter: Optional[int], p: float) -> Tuple[str, int]:
    if solver not in SOLVERS:
        _fail(name, f"solver = {solver!r} is not one of " + ", ".join(repr(s) for s in SOLVERS))
    if solver != "dykstra":
        if num_iter is not None:
            _fail(name, f"num_iter = {num_iter!r} is only used by solver = 'dykstra', got solver = {solver!r}")
        return solver, 0
    if p != 2.0:
        _fail(name, f"solver = 'dykstra' needs p = 2, got p = {p!r}")
    if num_iter is None:
        return solver, DEFAULT_NUM_ITER
    _check_static(name, "num_iter", num_iter)
    num_iter = _operator.index(num_iter)
    if num_iter < 1:
        _fail(name, f"num_iter = {num_iter} must be >= 1")
    return solver, num_iter


def _rows(name: str, x, axis) -> Tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
    """x as rows along its last axis in the dtype of computation (float64 for
    float64, else float32), that axis whole on every device that holds a row, and
    the map of a result back to x's layout and dtype."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        _fail(name, f"x must be a floating-point array (float16, bfloat16, float32 or float64), got {x.dtype}",
              TypeError)
    _check_static(name, "axis", axis)
    rank = max(x.ndim, 1)
    try:
        axis = _operator.index(axis)
    except TypeError:
        _fail(name, f"axis must be an integer, got {axis!r}", TypeError)
    if not -rank <= axis < rank:
        _fail(name, f"axis = {axis} is out of range for an array of rank {x.ndim}")
    axis %= rank
    dtype = x.dtype
    compute = jnp.float64 if dtype == jnp.float64 else jnp.float32
    if x.ndim == 0:
        return x.reshape(1).astype(compute), lambda r: r.reshape(()).astype(dtype)
    rows = _ffi.whole_rows(jnp.moveaxis(x, axis, -1))  # the top-k axis whole on each device (docs/jax.md, "Sharding")
    return rows.astype(compute), lambda r: jnp.moveaxis(r, -1, axis).astype(dtype)


# ---- the soft operators ----

@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
def _soft_rows(rows, operator, k, l, p, solver, num_iter):
    return _ffi.soft(rows, operator, k, l, p, solver, num_iter)


def _forward_and_jvp(operator, k, l, p, solver, num_iter, primals, tangents):
    """(out, state, J d_rows): the forward pass with its state, and the tangent."""
    (rows,), (d_rows,) = primals, tangents
    out, state = _soft_state(rows, operator, k, l, p, solver, num_iter)
    return out, state, _ffi.jacobian_product(rows, state, d_rows, operator, "jvp", l, p)


@_soft_rows.defjvp
def _soft_rows_jvp(operator, k, l, p, solver, num_iter, primals, tangents):
    out, _, d_out = _forward_and_jvp(operator, k, l, p, solver, num_iter, primals, tangents)
    return out, d_out


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
def _soft_state(rows, operator, k, l, p, solver, num_iter):
    return _ffi.soft_with_state(rows, operator, k, l, p, solver, num_iter)


@_soft_state.defjvp
def _soft_state_jvp(operator, k, l, p, solver, num_iter, primals, tangents):
    """Reached only by second derivatives (differentiating the tangent rule)."""
    if p != 2.0:
        raise _ffi.second_derivatives_error(operator, p)
    out, state, d_out = _forward_and_jvp(operator, k, l, p, solver, num_iter, primals, tangents)
    # the state is an integer array (the RowStates' bytes): its tangent is float0
    return (out, state), (d_out, np.zeros(state.shape, jax.dtypes.float0))


def _soft(name, operator, x, k, l, p, axis, solver, num_iter):
    rows, restore = _rows(name, x, axis)
    k = _check_k(name, k, rows.shape[-1])
    l = _check_number(name, "l", l, 0.0, "> 0")
    p = _check_number(name, "p", p, 1.0, "> 1")
    solver, num_iter = _check_solver(name, solver, num_iter, p)
    return restore(_soft_rows(rows, operator, k, l, p, solver, num_iter))


def soft_topk_mask(x, k: int, l: float = 0.1, p: float = 4.0 / 3.0, axis: int = -1, *, solver: str = "auto",
                   num_iter: Optional[int] = None) -> jax.Array:
    """Soft top-k mask of SPEC.md along ``axis``: values in [0, 1] summing to ``k``,
    exactly 1 far above the k-th largest entry and exactly 0 below it.

    ``out = argmax_{y in [0,1]^n, sum(y) = k} <y, x> - (l/p) sum_i y_i^p`` on each slice.

    Args:
        x: array of float32, float64 (with ``jax_enable_x64``), float16 or bfloat16
            (these two are computed in float32); any shape.
        k: entries to select, ``0 <= k <= x.shape[axis]``; a Python int (static).
        l: regularization strength, ``l > 0`` (static).
        p: norm of the regularizer, ``p > 1`` (static); 4/3 gives a continuously
            differentiable operator, 2 a piecewise linear one.
        axis: the axis along which to select.
        solver: ``"auto"`` (default), ``"pav"`` or ``"threshold"``: the exact
            solvers of the C++ core, which agree; ``"dykstra"``: ``num_iter``
            iterations of Dykstra's algorithm (p = 2 only, approximate).
        num_iter: Dykstra iterations (each projects onto both sets of pairs);
            only with ``solver="dykstra"``, default 10000 (docs/dykstra.md).

    Returns:
        An array like ``x``. Differentiable (forward and reverse mode, exact
        block Jacobian); second derivatives for p = 2 only.
    """
    return _soft("soft_topk_mask", "mask", x, k, l, p, axis, solver, num_iter)


def soft_topk_mag(x, k: int, l: float = 0.1, p: float = 4.0 / 3.0, axis: int = -1, *, solver: str = "auto",
                  num_iter: Optional[int] = None) -> jax.Array:
    """Soft top-k in magnitude of SPEC.md along ``axis``: entries well inside the
    top k (by ``|x|``) come back unchanged, entries well outside are exactly 0,
    a band around the k-th magnitude is shrunk.

    Arguments and result as :func:`soft_topk_mask`.
    """
    return _soft("soft_topk_mag", "mag", x, k, l, p, axis, solver, num_iter)


# ---- the hard operators ----

@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _hard_rows(rows, operator, k):
    return _ffi.hard(rows, operator, k)


@_hard_rows.defjvp
def _hard_rows_jvp(operator, k, primals, tangents):
    (rows,), (d_rows,) = primals, tangents
    out = _hard_rows(rows, operator, k)
    if operator == "mask":  # piecewise constant
        return out, jnp.zeros_like(d_rows)
    return out, d_rows * _hard_rows(jnp.abs(rows), "mask", k)  # hard_topk_mag = x * hard_topk_mask(|x|)


def _hard(name, operator, x, k, axis):
    rows, restore = _rows(name, x, axis)
    k = _check_k(name, k, rows.shape[-1])
    return restore(_hard_rows(rows, operator, k))


def hard_topk_mask(x, k: int, axis: int = -1) -> jax.Array:
    """1 on the ``k`` largest entries of each slice along ``axis`` (ties: lower
    index first), 0 elsewhere; a slice holding a NaN is NaN. Zero derivative."""
    return _hard("hard_topk_mask", "mask", x, k, axis)


def hard_topk_mag(x, k: int, axis: int = -1) -> jax.Array:
    """``x * hard_topk_mask(|x|, k)``: the ``k`` entries of largest magnitude kept,
    the rest 0. Derivative: 1 on the kept entries, 0 elsewhere."""
    return _hard("hard_topk_mag", "mag", x, k, axis)


# ---- the top-k sum and loss (SPEC.md): one value per slice ----

@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _saved_mask(rows, mask, state, l, p):
    """The soft mask topk_sum computed, as a function of the rows: its derivative
    is the mask's Jacobian at ``state`` (one call of the core's JVP), which makes
    topk_sum's second derivatives exact for every p."""
    return mask


@_saved_mask.defjvp
def _saved_mask_jvp(l, p, primals, tangents):
    rows, mask, state = primals
    return mask, _ffi.jacobian_product(rows, state, tangents[0], "mask", "jvp", l, p)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _topk_sum_rows(rows, k, l, p):
    return _ffi.topk_sum(rows, k, l, p)[0]


@_topk_sum_rows.defjvp
def _topk_sum_rows_jvp(k, l, p, primals, tangents):
    (rows,), (d_rows,) = primals, tangents
    value, mask, state = _ffi.topk_sum(jax.lax.stop_gradient(rows), k, l, p)
    mask = _saved_mask(rows, mask, state, l, p)
    return value, jnp.sum(mask * d_rows, axis=-1)


@jax.custom_jvp
def _once(value, rows):
    """``value``, a derivative of the rows' loss: differentiating it again raises."""
    return value


@_once.defjvp
def _once_jvp(primals, tangents):
    raise NotImplementedError("sparsetopk.jax.topk_loss: second derivatives are not implemented")


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _topk_loss_rows(rows, target, k, l, p):
    return _ffi.topk_loss(rows, target, k, l, p)[0]


@_topk_loss_rows.defjvp
def _topk_loss_rows_jvp(k, l, p, primals, tangents):
    (rows, target), (d_rows, _) = primals, tangents
    loss, grad = _ffi.topk_loss(jax.lax.stop_gradient(rows), target, k, l, p)
    return loss, jnp.sum(_once(grad, rows) * d_rows, axis=-1)


def topk_sum(x, k: int, l: float = 0.1, p: float = 4.0 / 3.0, axis: int = -1) -> jax.Array:
    """Smoothed sum of the ``k`` largest entries of each slice along ``axis`` (SPEC.md):
    ``<m, x> - (l/p) sum_i m_i^p`` with ``m = soft_topk_mask(x, k, l, p, axis)``,
    between the hard top-k sum minus ``(l/p) k`` and the hard top-k sum.

    Returns ``x`` with ``axis`` reduced, in x's dtype. Its gradient is the mask
    and its Hessian the mask's Jacobian (exact, every p); jit, vmap, jvp, grad
    and jax.hessian work.
    """
    name = "topk_sum"
    rows, _ = _rows(name, x, axis)
    k = _check_k(name, k, rows.shape[-1])
    l = _check_number(name, "l", l, 0.0, "> 0")
    p = _check_number(name, "p", p, 1.0, "> 1")
    return _topk_sum_rows(rows, k, l, p).astype(jnp.asarray(x).dtype)


def topk_loss(scores, target, k: int, l: float = 0.1, p: float = 4.0 / 3.0, axis: int = -1) -> jax.Array:
    """Top-k loss of SPEC.md, one per slice of ``scores`` along ``axis`` (the classes),
    with ``target`` the label of each (an integer array of the other axes):
    ``topk_sum(x, k) - x_t - topk_sum(x without t, k - 1) + l/p``, >= 0, and 0
    exactly where ``soft_topk_mask(x, k)_t = 1``.

    Returns an array of ``target``'s shape in scores' dtype. Differentiable once
    in ``scores`` (jit, vmap, jvp, grad).
    """
    name = "topk_loss"
    scores = jnp.asarray(scores)
    if scores.ndim == 0:
        _fail(name, "scores must have at least one axis (the classes), got a 0-d array")
    rows, _ = _rows(name, scores, axis)
    target = jnp.asarray(target)
    if not jnp.issubdtype(target.dtype, jnp.integer):
        _fail(name, f"target must be an integer array (class indices), got {target.dtype}", TypeError)
    if target.shape != rows.shape[:-1]:
        _fail(name, f"target has shape {target.shape} but scores of shape {scores.shape} needs one label per "
                    f"slice along axis {axis}: {rows.shape[:-1]}")
    n = rows.shape[-1]
    k = _check_k(name, k, n)
    if k < 1:
        _fail(name, f"k = {k} is out of range [1, n = {n}]")
    l = _check_number(name, "l", l, 0.0, "> 0")
    p = _check_number(name, "p", p, 1.0, "> 1")
    if target.dtype not in (jnp.int32, jnp.int64):
        target = target.astype(jnp.int32)
    return _topk_loss_rows(rows, target, k, l, p).astype(scores.dtype)
