"""The operators as functions of tensors (thin wrappers of torch.ops.sparsetopk.*).

Every function applies its operator to each slice of ``x`` along ``dim`` (any
shape, any dim, non-contiguous inputs and empty tensors are fine) and returns a
new contiguous tensor of the shape and dtype of ``x``. float32 and float64 are
computed natively, float16 and bfloat16 in float32. CPU tensors run the C++
core; other devices, and ``solver="generic"``, the ATen implementation. Bad
arguments raise RuntimeError (IndexError for ``dim``) with a message naming the
argument and its value.

The functions compose with ``torch.compile``, ``torch.export``, ``torch.func``
(``vmap``, ``grad``, ``vjp``, ``jvp``, ``jacrev``, ``jacfwd``) and forward-mode
AD. In eager mode they call ``torch.ops.sparsetopk.*``, whose autograd is in
C++ (fast, and what LibTorch and TorchScript use); under a ``torch.func``
transform or ``torch.autograd.forward_ad`` the soft operators go through
:class:`sparsetopk._registration.SoftTopkFunction`, which has a JVP and a
vmap rule. First derivatives are exact; second derivatives raise an error that
names the op.

The conventions (``l``, ``p``, the formulas) are those of SPEC.md and of the
reference implementation of Sander et al., "Fast, Differentiable and Sparse
Top-k: a Convex Analysis Perspective" (ICML 2023).
"""

from typing import Optional

import torch

from ._ops import DIM as _DIM, L as _L, OPERATORS, P as _P, SOLVER as _SOLVER, Operator
from ._registration import Route, SoftTopkFunction, TopkLossFunction, TopkSumFunction, needs_python_autograd, route

# The schema defaults of the soft ops (sparsetopk/_ops.py), as the defaults of
# the functions below, and the ops' overloads, looked up once. A call on a small
# input takes a few microseconds in all, of which the lookup through torch.ops,
# OpOverload.__call__ (0.2-0.3 us; eager calls take the C++ function it calls,
# ``_op``, directly) and the conversion of every argument passed are a
# noticeable part: arguments left at their defaults are not passed again.


def _calls(op: Operator):
    """How a function calls its op: (the op's C++ function, its OpOverload, its Operator)."""
    overload = getattr(torch.ops.sparsetopk, op.name).default
    return overload._op, overload, op


_SOFT = {op.name: _calls(op) for op in OPERATORS if op.soft}  # the soft operators of the table, by name


def _soft_topk(ops, x, k, l, p, dim, solver, num_iter):
    """The body of a soft operator's function outside TorchScript (``ops``: its entry of _SOFT)."""
    eager, traced, operator = ops
    how = route(x)
    if how == Route.PYTHON_AUTOGRAD:
        return SoftTopkFunction.apply(x, k, l, p, dim, solver, num_iter, operator)[0]
    op = eager if how == Route.EAGER else traced
    if num_iter is not None:
        return op(x, k, l, p, dim, solver, num_iter)
    if l is _L and p is _P and dim is _DIM and solver is _SOLVER:
        return op(x, k)
    return op(x, k, l, p, dim, solver)


def soft_topk_mask(x: torch.Tensor, k: int, l: float = _L, p: float = _P, dim: int = _DIM,
                   solver: str = _SOLVER, num_iter: Optional[int] = None) -> torch.Tensor:
    """Soft top-k mask: a sparse, differentiable relaxation of the hard mask.

    ``out = argmax_{y in [0,1]^n, sum(y) = k} <y, x> - (l/p) sum_i y_i^p`` on each
    slice: values in [0, 1] summing to ``k``, exactly 1 on entries far above the
    k-th largest, exactly 0 on entries below it; tends to the hard mask as
    ``l -> 0``.

    Args:
        x: input tensor (float32, float64, float16 or bfloat16), on any device.
        k: number of entries to select, ``0 <= k <= x.size(dim)``.
        l: regularization strength, ``l > 0``; the width of the soft band.
        p: norm of the regularizer, ``p > 1``. ``4/3`` (default) gives a
            continuously differentiable operator, ``2`` a piecewise linear one.
        dim: the dimension along which to select.
        solver: ``"auto"`` (default: ``"threshold"`` on the CPU, ``"generic"``
            elsewhere), ``"pav"`` (sort then Pool Adjacent Violators, CPU),
            ``"threshold"`` (selection, then PAV on the few straddling entries,
            CPU), ``"generic"`` (the ATen implementation, any device): all exact,
            the same result. ``"dykstra"``: Dykstra's alternating projections,
            ``p = 2`` only, approximate (any device; see docs/dykstra.md).
        num_iter: the iterations of ``"dykstra"`` (``None``: its default,
            10000); the other solvers take none.

    Returns:
        A tensor like ``x``. Differentiable in ``x`` (first derivatives, exact:
        the closed-form block Jacobian); double backward raises.

    Example:
        >>> soft_topk_mask(torch.tensor([-5., -2., 3., 1.]), k=2, l=0.01)
        tensor([0., 0., 1., 1.])
    """
    if not torch.jit.is_scripting():  # (TorchScript takes the C++ autograd kernel)
        return _soft_topk(_SOFT["soft_topk_mask"], x, k, l, p, dim, solver, num_iter)
    return torch.ops.sparsetopk.soft_topk_mask(x, k, l, p, dim, solver, num_iter)


def soft_topk_mag(x: torch.Tensor, k: int, l: float = _L, p: float = _P, dim: int = _DIM,
                  solver: str = _SOLVER, num_iter: Optional[int] = None) -> torch.Tensor:
    """Soft top-k in magnitude: keeps the ``k`` largest ``|x_i|``, sparsely and differentiably.

    Entries well inside the top k (by magnitude) come back unchanged, entries
    well outside are exactly 0, and only a band of width about ``l`` around the
    k-th magnitude is shrunk toward 0. Tends to ``hard_topk_mag`` as ``l -> 0``.

    Args:
        x: input tensor (float32, float64, float16 or bfloat16), on any device.
        k: number of entries to keep, ``0 <= k <= x.size(dim)``.
        l: regularization strength, ``l > 0``.
        p: norm of the regularizer, ``p > 1`` (default 4/3).
        dim: the dimension along which to select.
        solver, num_iter: see :func:`soft_topk_mask`.

    Returns:
        A tensor like ``x``. Differentiable in ``x`` (first derivatives only).

    Example:
        >>> soft_topk_mag(torch.tensor([-5., -2., 3., 1.]), k=2, l=0.01)
        tensor([-5.,  0.,  3.,  0.])
    """
    if not torch.jit.is_scripting():  # (TorchScript takes the C++ autograd kernel)
        return _soft_topk(_SOFT["soft_topk_mag"], x, k, l, p, dim, solver, num_iter)
    return torch.ops.sparsetopk.soft_topk_mag(x, k, l, p, dim, solver, num_iter)


def hard_topk_mask(x: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    """Hard top-k mask: 1 on the ``k`` largest entries of each slice, 0 elsewhere.

    Ties are broken by the lower index first, so every slice has exactly ``k``
    ones (a slice holding a NaN comes back all NaN). Piecewise constant: the
    result never requires grad.

    Example:
        >>> hard_topk_mask(torch.tensor([-5., -2., 3., 1.]), k=2)
        tensor([0., 0., 1., 1.])
    """
    return torch.ops.sparsetopk.hard_topk_mask(x, k, dim)


def hard_topk_mag(x: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    """Hard top-k in magnitude: ``x_i`` on the ``k`` largest ``|x_i|`` of each slice, 0 elsewhere.

    Equal to ``x * hard_topk_mask(x.abs(), k, dim)``; its gradient is that mask.

    Example:
        >>> hard_topk_mag(torch.tensor([-5., -2., 3., 1.]), k=2)
        tensor([-5.,  0.,  3.,  0.])
    """
    if not torch.jit.is_scripting():  # (TorchScript takes the C++ autograd kernel)
        if needs_python_autograd(x):  # x * mask: differentiable by every transform
            return x * torch.ops.sparsetopk.hard_topk_mask(x.abs(), k, dim)
    return torch.ops.sparsetopk.hard_topk_mag(x, k, dim)


_TOPK_SUM = torch.ops.sparsetopk.topk_sum.default
_TOPK_LOSS = torch.ops.sparsetopk.topk_loss.default
REDUCTIONS = ("mean", "sum", "none")


def topk_sum(x: torch.Tensor, k: int, l: float = _L, p: float = _P, dim: int = _DIM) -> torch.Tensor:
    """Smoothed sum of the ``k`` largest entries of each slice (SPEC.md, "Smoothed top-k sum").

    ``topk_sum(x, k) = max_{y in [0,1]^n, sum(y) = k} <y, x> - (l/p) sum_i y_i^p
    = <m, x> - (l/p) sum_i m_i^p`` with ``m = soft_topk_mask(x, k, l, p, dim)``:
    between ``hard_sum_k(x) - (l/p) k`` and ``hard_sum_k(x)``, the sum of the
    ``k`` largest entries, which it tends to as ``l -> 0``.

    Args:
        x: input tensor (float32, float64, float16 or bfloat16), on the CPU.
        k: number of entries, ``0 <= k <= x.size(dim)``.
        l: regularization strength, ``l > 0``.
        p: norm of the regularizer, ``p > 1`` (default 4/3).
        dim: the dimension to reduce.

    Returns:
        ``x`` with ``dim`` reduced. Its gradient is the soft mask ``m``, and its
        second derivative (the mask's Jacobian) is exact too.

    Example:
        >>> topk_sum(torch.tensor([-5., -2., 3., 1.]), k=2, l=0.01)
        tensor(3.9850)
    """
    if not torch.jit.is_scripting():
        how = route(x)
        if how == Route.PYTHON_AUTOGRAD:
            return TopkSumFunction.apply(x, k, l, p, dim)[0]
        return (_TOPK_SUM._op if how == Route.EAGER else _TOPK_SUM)(x, k, l, p, dim)
    return torch.ops.sparsetopk.topk_sum(x, k, l, p, dim)


def topk_loss(scores: torch.Tensor, target: torch.Tensor, k: int, l: float = _L, p: float = _P, dim: int = _DIM,
              reduction: str = "mean") -> torch.Tensor:
    """Top-k loss (SPEC.md, "Top-k loss"): 0 where the label is safely among the ``k`` best scores.

    Per slice ``x`` of ``scores`` along ``dim`` with label ``t``:
    ``topk_sum(x, k) - x_t - topk_sum(x without t, k - 1) + l/p``, which is >= 0,
    and 0 exactly when ``soft_topk_mask(x, k)_t = 1``. Its gradient,
    ``soft_topk_mask(x, k) - e_t - soft_topk_mask(x without t, k - 1)`` (0 at t),
    is sparse: only the label and the scores near the k-th rank get one. For
    ``k = 1, p = 2`` it is the sparsemax loss with temperature ``l``.

    Args:
        scores: scores (logits) over the classes along ``dim``, float, on the CPU.
        target: int64 class indices, the shape of ``scores`` without ``dim``, each
            in ``[0, scores.size(dim))``.
        k: ``1 <= k <= scores.size(dim)``.
        l, p: as in :func:`topk_sum`.
        dim: the classes' dimension.
        reduction: ``"mean"`` (default) or ``"sum"`` over the slices, or ``"none"``.

    Returns:
        The mean or sum of the losses (0-d), or one loss per slice (``target``'s shape).
        Differentiable in ``scores`` (first derivatives).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"sparsetopk.topk_loss: reduction = {reduction!r} is not one of 'mean', 'sum', 'none'")
    if not torch.jit.is_scripting():
        how = route(scores)
        if how == Route.PYTHON_AUTOGRAD:
            losses = TopkLossFunction.apply(scores, target, k, l, p, dim)[0]
        else:
            losses = (_TOPK_LOSS._op if how == Route.EAGER else _TOPK_LOSS)(scores, target, k, l, p, dim)
    else:
        losses = torch.ops.sparsetopk.topk_loss(scores, target, k, l, p, dim)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses
