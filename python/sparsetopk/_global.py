"""One top-k over a list of tensors (and over processes): the global operators.

``soft_topk_mag_global(tensors, k)`` and the others apply a row operator of
SPEC.md to the concatenation of the flattened tensors, with one k, without
concatenating them, and return a list of tensors of the input shapes. With
``group=`` (a ``torch.distributed`` ProcessGroup) each process passes its own
tensors and k counts every entry of every process; the concatenation is then
every process's tensors in rank order (docs/global.md).

The ops (``src/torch/global_kernel.cpp``): ``_soft_topk_{mask,mag}_global_forward``
return the outputs and the solve's state (float64[11], one ``RowState``);
``_soft_topk_{mask,mag}_global_{backward,jvp}`` apply the exact Jacobian at it;
``hard_topk_{mask,mag}_global``. This module registers their fake kernels
(``torch.compile``) and their autograd formulas (``torch.library.register_autograd``),
and defines the public functions (under ``torch.func`` transforms and
forward-mode AD they go through :class:`GlobalSoftTopkFunction`). CPU tensors, float32 or float64, all of one
dtype; another device is refused with an error naming it (meta tensors run
the fake kernels).
"""

import ctypes
from typing import List, Optional, Sequence, Tuple

import torch

from ._library import load_library
from ._ops import L as _L, P as _P

load_library()
_ops = torch.ops.sparsetopk
STATE_SIZE = 11
# Every op of the family (src/torch/global_kernel.cpp), for the tests that check each op is covered.
GLOBAL_OPS = tuple(f"_soft_topk_{form}_global_{what}" for form in ("mask", "mag")
                   for what in ("forward", "backward", "jvp")) + ("hard_topk_mask_global", "hard_topk_mag_global")


def _group_name(group) -> str:
    """The name the C++ kernels resolve the group by ("" for one process)."""
    if group is None:
        return ""
    name = getattr(group, "group_name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"sparsetopk: group must be a torch.distributed ProcessGroup or None, got {group!r}")
    return name


def _tensor_list(op: str, tensors) -> List[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        raise TypeError(f"sparsetopk.{op}: tensors must be a list of tensors, got one tensor "
                        f"(pass [x], or use sparsetopk.{op.replace('_global', '')} for one tensor)")
    result = list(tensors)
    if not result:
        raise ValueError(f"sparsetopk.{op}: tensors is an empty list; pass at least one tensor")
    for i, t in enumerate(result):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"sparsetopk.{op}: tensors[{i}] must be a tensor, got {type(t).__name__}")
        if t.device.type not in ("cpu", "meta"):  # (meta: the fake kernels)
            raise RuntimeError(f"sparsetopk.{op}: tensors[{i}] is on {t.device}; the global operators run on "
                               "the CPU only (move the tensors to the CPU)")
    return result


# ---- fake kernels: the outputs' shapes and dtypes ----

def _forward_fake(x, k, l, p, group=""):
    return [t.new_empty(t.shape) for t in x], x[0].new_empty((STATE_SIZE,), dtype=torch.float64)


def _product_fake(v, x, state, l, p, group=""):
    return [t.new_empty(t.shape) for t in x]


def _hard_fake(x, k, group=""):
    return [t.new_empty(t.shape) for t in x]


for _form in ("mask", "mag"):
    torch.library.register_fake(f"sparsetopk::_soft_topk_{_form}_global_forward")(_forward_fake)
    for _product in ("backward", "jvp"):
        torch.library.register_fake(f"sparsetopk::_soft_topk_{_form}_global_{_product}")(_product_fake)
    torch.library.register_fake(f"sparsetopk::hard_topk_{_form}_global")(_hard_fake)


# ---- autograd: J^T g from the saved state (exact; no second derivatives) ----

def _soft_setup_context(ctx, inputs, output):
    x, k, l, p, group = inputs
    ctx.l, ctx.p, ctx.group = l, p, group
    ctx.save_for_backward(output[1], *x)


def _soft_backward(form: str):
    product = getattr(_ops, f"_soft_topk_{form}_global_backward")

    def backward(ctx, grad_outs, grad_state):
        state, *x = ctx.saved_tensors
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grad_outs, x)]
        return list(product(grads, x, state, ctx.l, ctx.p, ctx.group)), None, None, None, None
    return backward


def _hard_setup_context(ctx, inputs, output):
    x, k, group = inputs
    ctx.k, ctx.group = k, group
    ctx.save_for_backward(*x)


def _hard_mag_backward(ctx, grad_outs):
    # d(x * mask)/dx = mask, the hard mask of |x| (kept zeros included)
    x = ctx.saved_tensors
    kept = _ops.hard_topk_mask_global([t.abs() for t in x], ctx.k, ctx.group)
    grads = [None if g is None else g * m for g, m in zip(grad_outs, kept)]
    return grads, None, None


def _hard_mask_backward(ctx, grad_outs):
    return [None if g is None else torch.zeros_like(g) for g in grad_outs], None, None


for _form in ("mask", "mag"):
    torch.library.register_autograd(f"sparsetopk::_soft_topk_{_form}_global_forward", _soft_backward(_form),
                                    setup_context=_soft_setup_context)
torch.library.register_autograd("sparsetopk::hard_topk_mag_global", _hard_mag_backward,
                                setup_context=_hard_setup_context)
torch.library.register_autograd("sparsetopk::hard_topk_mask_global", _hard_mask_backward,
                                setup_context=_hard_setup_context)


# ---- torch.func and forward-mode AD ----

class GlobalSoftTopkFunction(torch.autograd.Function):
    """A global soft operator with its exact VJP and JVP ops; used under
    ``torch.func`` transforms (``grad``, ``vjp``, ``jvp``) and forward-mode AD,
    where the ops' registered autograd cannot run. ``apply(form, k, l, p,
    group, *x)`` returns the outputs and then the state (not differentiable).
    No vmap rule: ``vmap`` over a global operator is not supported."""

    @staticmethod
    def forward(form, k, l, p, group, *x):
        out, state = getattr(_ops, f"_soft_topk_{form}_global_forward")(list(x), k, l, p, group)
        return (*out, state)

    @staticmethod
    def setup_context(ctx, inputs, output):
        form, _, l, p, group, *x = inputs
        state = output[-1]
        ctx.mark_non_differentiable(state)
        ctx.save_for_backward(state, *x)
        ctx.save_for_forward(state, *x)
        ctx.arguments = (form, l, p, group)

    @staticmethod
    def _product(ctx, what, vectors):
        state, *x = ctx.saved_tensors
        form, l, p, group = ctx.arguments
        v = [torch.zeros_like(t) if vi is None else vi for vi, t in zip(vectors, x)]
        return list(getattr(_ops, f"_soft_topk_{form}_global_{what}")(v, x, state, l, p, group))

    @staticmethod
    def backward(ctx, *grads):
        return (None,) * 5 + tuple(GlobalSoftTopkFunction._product(ctx, "backward", grads[:-1]))

    @staticmethod
    def jvp(ctx, *tangents):
        return (*GlobalSoftTopkFunction._product(ctx, "jvp", tangents[5:]), None)


# ---- the public functions ----

def _soft(form: str, op: str, tensors, k: int, l: float, p: float, group) -> List[torch.Tensor]:
    from ._registration import needs_python_autograd

    x = _tensor_list(op, tensors)
    name = _group_name(group)
    if any(needs_python_autograd(t) for t in x):
        return list(GlobalSoftTopkFunction.apply(form, k, l, p, name, *x)[:-1])
    forward = getattr(_ops, f"_soft_topk_{form}_global_forward")
    out, _state = forward(x, k, l, p, name)
    return list(out)


def soft_topk_mask_global(tensors: Sequence[torch.Tensor], k: int, l: float = _L, p: float = _P,
                          group: Optional[object] = None) -> List[torch.Tensor]:
    """Soft top-k mask of the concatenation of ``tensors`` (flattened), with one k.

    Returns one tensor per input, of its shape: values in [0, 1] summing to k
    over every tensor (and every process of ``group``). Equal to
    ``soft_topk_mask(torch.cat([t.flatten() for t in tensors]), k, l, p)`` split
    back into the shapes, bitwise in one process, without the concatenation.
    Differentiable (exact first derivatives) with respect to every tensor.
    """
    return _soft("mask", "soft_topk_mask_global", tensors, k, l, p, group)


def soft_topk_mag_global(tensors: Sequence[torch.Tensor], k: int, l: float = _L, p: float = _P,
                         group: Optional[object] = None) -> List[torch.Tensor]:
    """Soft top-k in magnitude of the concatenation of ``tensors``, with one k.

    Entries well inside the global top k come back unchanged, entries well
    outside are 0, and a band around the k-th largest ``|x|`` of all tensors
    is shrunk (SPEC.md). The same contract as :func:`soft_topk_mask_global`.

    Example:
        >>> import torch, sparsetopk
        >>> a, b = torch.tensor([[0.9, -0.1], [0.3, 2.0]]), torch.tensor([-1.5, 0.05, 0.6])
        >>> sparsetopk.soft_topk_mag_global([a, b], k=3, l=0.5)
        [tensor([[0.8929, 0.0000],
                [0.0000, 2.0000]]), tensor([-1.5000,  0.0000,  0.1031])]
    """
    return _soft("mag", "soft_topk_mag_global", tensors, k, l, p, group)


def hard_topk_mask_global(tensors: Sequence[torch.Tensor], k: int, group: Optional[object] = None) -> List[torch.Tensor]:
    """1 where an entry is among the k largest of every tensor (ties: the earlier position), else 0."""
    return list(_ops.hard_topk_mask_global(_tensor_list("hard_topk_mask_global", tensors), k, _group_name(group)))


def hard_topk_mag_global(tensors: Sequence[torch.Tensor], k: int, group: Optional[object] = None) -> List[torch.Tensor]:
    """x where |x| is among the k largest magnitudes of every tensor (ties: the earlier position), else 0.

    Its gradient is the incoming gradient on the kept entries, 0 elsewhere.
    """
    return list(_ops.hard_topk_mag_global(_tensor_list("hard_topk_mag_global", tensors), k, _group_name(group)))


# ---- what the collectives sent (tests, benchmarks) ----

def _traffic_functions():
    from ._library import LIBRARY_NAME
    path = next(p for p in torch.ops.loaded_libraries if p.endswith(LIBRARY_NAME))
    library = ctypes.CDLL(path)  # the library torch.ops loaded: the same handle
    return library.sparsetopk_global_traffic, library.sparsetopk_global_traffic_reset


def traffic(reset: bool = False) -> Tuple[int, int]:
    """(collectives, bytes) this process contributed to the global operators' collectives
    since the last reset: all-reduces and all-gathers of float64 payloads, counted as the
    payload this rank passes in (a ring all-reduce moves about twice that over the wire)."""
    read, clear = _traffic_functions()
    collectives, sent = ctypes.c_int64(), ctypes.c_int64()
    read(ctypes.byref(collectives), ctypes.byref(sent))
    if reset:
        clear()
    return collectives.value, sent.value
