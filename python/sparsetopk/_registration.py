"""The Python side of ``torch.ops.sparsetopk.*``: fake kernels, vmap rules and autograd.

The C++ library (``src/torch/``) defines the ops, their CPU kernels and the
Autograd kernels of the dispatcher (a ``torch::autograd::Function`` whose state
is plain tensors). This module adds, once per process:

- a fake (meta) kernel for every op (``torch.library.register_fake``), for
  ``torch.compile``, ``torch.export`` and meta tensors. It checks shapes and
  dtypes only, what it needs to compute the outputs' (x's layout and dtype,
  ``dim``, the shapes of x, v and row_state); the C++ kernels check every
  argument (k, l, p, solver, num_iter) when the op runs, eager or compiled;
- a vmap rule for every op (``torch.library.register_vmap``): ``torch.func.vmap``
  makes one call of the op for the whole batch;
- :class:`SoftTopkFunction`, a ``torch.autograd.Function`` over the forward,
  backward and JVP ops, which the functions of :mod:`sparsetopk.functional` use
  under ``torch.func`` transforms and forward-mode AD (C++ autograd functions
  cannot compose with those).

The state a soft forward pass saves (``src/torch/ops.hpp``) is O(rows):
``row_state``, float64 of x's shape with size 11 along ``dim``, each slice's
``sparsetopk::RowState`` (gamma, W_B, unchanged_from, and where the band starts
and ends in sorted order). The backward and JVP ops recompute the band's
Jacobian weights c_i from x, l and p.
"""

import sys
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch.autograd import forward_ad

from ._library import load_library
from ._ops import DIM, L, NUM_ITER, OPERATORS, P, PRODUCTS, SOLVER, Operator

load_library()
ops = torch.ops.sparsetopk
ROW_STATE_SIZE = 11
COMPILE_USES_PYTHON_AUTOGRAD = False
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---- the checks the output shapes and dtypes need (the messages of the C++ kernels, src/torch/checks.hpp) ----

def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_input(op: str, t: torch.Tensor, name: str) -> None:
    torch._check(t.layout == torch.strided,
                 lambda: f"sparsetopk.{op}: {name} must be a dense (strided) tensor, got layout {t.layout}")
    torch._check(t.dtype in FLOAT_DTYPES,
                 lambda: f"sparsetopk.{op}: {name} must be float32, float64, float16 or bfloat16, "
                         f"got {_dtype_name(t.dtype)}")


def _wrap_dim(op: str, t: torch.Tensor, dim: int) -> int:
    ndim = max(t.dim(), 1)
    torch._check_index(-ndim <= dim < ndim,
                       lambda: f"sparsetopk.{op}: dim = {dim} is out of range for x with {t.dim()} dimension(s) "
                               f"(expected a value in [{-ndim}, {ndim - 1}])")
    return dim + ndim if dim < 0 else dim


def _sizes_along(t: torch.Tensor, dim: int, size: int) -> List:
    if t.dim() == 0:
        return [size]
    sizes = list(t.shape)
    sizes[dim] = size
    return sizes


# ---- fake kernels ----

def _soft_fake(op: str):
    def fake(x, k, l=L, p=P, dim=DIM, solver=SOLVER, num_iter=NUM_ITER):
        _check_input(op, x, "x")
        _wrap_dim(op, x, dim)
        return x.new_empty(x.shape)
    return fake


def _soft_forward_fake(op: str):
    def fake(x, k, l, p, dim, solver, num_iter=NUM_ITER):
        _check_input(op, x, "x")
        dim = _wrap_dim(op, x, dim)
        return x.new_empty(x.shape), x.new_empty(_sizes_along(x, dim, ROW_STATE_SIZE), dtype=torch.float64)
    return fake


def _hard_fake(op: str):
    def fake(x, k, dim=DIM):
        _check_input(op, x, "x")
        _wrap_dim(op, x, dim)
        return x.new_empty(x.shape)
    return fake


def _product_fake(op: str, v_name: str):
    def fake(v, x, row_state, l, p, dim):
        _check_input(op, v, v_name)
        dim = _wrap_dim(op, v, dim)
        _check_input(op, x, "x")
        torch._check(x.shape == v.shape,
                     lambda: f"sparsetopk.{op}: x has shape {list(x.shape)} but {v_name} has shape {list(v.shape)}")
        sizes = _sizes_along(v, dim, ROW_STATE_SIZE)
        torch._check(row_state.device == v.device,
                     lambda: f"sparsetopk.{op}: row_state is on {row_state.device} but {v_name} is on {v.device}")
        torch._check(row_state.dtype == torch.float64,
                     lambda: f"sparsetopk.{op}: row_state must be float64, got {_dtype_name(row_state.dtype)}")
        torch._check(list(row_state.shape) == list(sizes),
                     lambda: f"sparsetopk.{op}: row_state has shape {list(row_state.shape)} but {v_name} needs "
                             f"{list(sizes)}")
        return v.new_empty(v.shape)
    return fake


# ---- vmap rules: the batch dimension moved to the front, dim shifted past it ----

def _batched(info, in_dims: Sequence[Optional[int]], args: Sequence[Any], primary: int,
             x_shaped: Sequence[int], row_state: Optional[int], dim_index: int) -> Tuple[List[Any], bool]:
    """The arguments of one call over the whole batch.

    Every tensor gets the batch at dim 0 (unbatched ones are expanded);
    ``dim`` is wrapped against the logical rank of ``args[primary]`` and
    shifted past the batch. A logical 0-d input becomes [B, 1] (and dim -1).
    Returns the arguments and whether the logical input was 0-d.
    """
    args = list(args)
    for i, (arg, bdim) in enumerate(zip(args, in_dims)):
        if isinstance(arg, torch.Tensor):
            if bdim is None:
                args[i] = arg.unsqueeze(0).expand(info.batch_size, *arg.shape)
            else:
                args[i] = arg.movedim(bdim, 0)
    logical_rank = args[primary].dim() - 1
    ndim = max(logical_rank, 1)
    dim = args[dim_index]
    if not -ndim <= dim < ndim:
        raise IndexError(f"sparsetopk: dim = {dim} is out of range for x with {logical_rank} dimension(s) "
                         f"(expected a value in [{-ndim}, {ndim - 1}])")
    scalar = logical_rank == 0
    if scalar:
        for i in x_shaped:
            args[i] = args[i].unsqueeze(-1)
        args[dim_index] = -1
    else:
        args[dim_index] = (dim % ndim) + 1
    del row_state  # row_state's own layout already matches: [B, ..., 3]
    return args, scalar


def _vmap_rule(op, primary: int, x_shaped: Sequence[int], dim_index: int, row_state: Optional[int] = None,
               outputs: int = 1, defaults: Sequence[Any] = (), first_default: int = 0):
    """``defaults``: those of the arguments from index ``first_default`` on."""
    def rule(info, in_dims, *args):
        if defaults and len(args) < first_default + len(defaults):  # trailing arguments left at their defaults
            args = (*args, *defaults[len(args) - first_default:])
            in_dims = (*in_dims, *([None] * (len(args) - len(in_dims))))
        call_args, scalar = _batched(info, in_dims, args, primary, x_shaped, row_state, dim_index)
        result = op(*call_args)
        if outputs == 1:
            return (result.squeeze(-1) if scalar else result), 0
        out, state = result
        return (out.squeeze(-1) if scalar else out, state), (0, 0)
    return rule


def _register_op(name: str, fake, x_shaped: Sequence[int], dim_index: int, **rule) -> None:
    torch.library.register_fake(f"sparsetopk::{name}", fake)
    torch.library.register_vmap(f"sparsetopk::{name}", _vmap_rule(getattr(ops, name), 0, x_shaped, dim_index, **rule))


def _register() -> None:
    """The fake kernel and the vmap rule of every op the table implies (sparsetopk/_ops.py)."""
    for op in OPERATORS:
        if not op.soft:  # (x, k, dim)
            _register_op(op.name, _hard_fake(op.name), (0,), 2, defaults=op.defaults, first_default=2)
            continue
        # (x, k, l, p, dim, solver, num_iter), the forward op without defaults but num_iter's
        _register_op(op.name, _soft_fake(op.name), (0,), 4, defaults=op.defaults, first_default=2)
        _register_op(op.forward, _soft_forward_fake(op.name), (0,), 4, outputs=2, defaults=op.defaults[-1:],
                     first_default=6)
        for product, v_name in PRODUCTS:  # (v, x, row_state, l, p, dim)
            _register_op(op.product(product), _product_fake(f"{op.name} {product}", v_name), (0, 1), 5)


# ---- the top-k sum and loss: x (scores) with dim reduced ----

def _sizes_without(t: torch.Tensor, dim: int) -> List:
    return [size for d, size in enumerate(t.shape) if d != dim]


def _topk_sum_fake(x, k, l=L, p=P, dim=DIM):
    _check_input("topk_sum", x, "x")
    return x.new_empty(_sizes_without(x, _wrap_dim("topk_sum", x, dim)))


def _topk_sum_forward_fake(x, k, l, p, dim):
    value = _topk_sum_fake(x, k, l, p, dim)
    row_state = x.new_empty(_sizes_along(x, _wrap_dim("topk_sum", x, dim), ROW_STATE_SIZE), dtype=torch.float64)
    return value, x.new_empty(x.shape), row_state


def _topk_loss_fake(scores, target, k, l=L, p=P, dim=DIM):
    op = "topk_loss"
    _check_input(op, scores, "scores")
    torch._check(scores.dim() >= 1,
                 lambda: f"sparsetopk.{op}: scores must have at least one dimension (the classes), got a 0-d tensor")
    dim = _wrap_dim(op, scores, dim)
    torch._check(target.dtype == torch.int64,
                 lambda: f"sparsetopk.{op}: target must be int64 (class indices), got {_dtype_name(target.dtype)}")
    sizes = _sizes_without(scores, dim)
    torch._check(list(target.shape) == sizes,
                 lambda: f"sparsetopk.{op}: target has shape {list(target.shape)} but scores of shape "
                         f"{list(scores.shape)} needs one label per slice along dim = {dim}: {sizes}")
    return scores.new_empty(target.shape)


def _topk_loss_forward_fake(scores, target, k, l, p, dim):
    return _topk_loss_fake(scores, target, k, l, p, dim), scores.new_empty(scores.shape)


def _reduction_vmap_rule(op, tensors: int, dim_index: int, outputs: int, defaults: Sequence[Any] = ()):
    """The vmap rule of an op whose first ``tensors`` arguments are batched
    (x or scores, then target) and whose slice along ``dim`` reduces to one value:
    the batch moves to dim 0 of each, ``dim`` past it. A logical 0-d x (topk_sum)
    becomes [B, 1]; the mask it gives back is squeezed again."""
    def rule(info, in_dims, *args):
        first_default = dim_index + 1 - len(defaults)
        if defaults and len(args) < dim_index + 1:
            args = (*args, *defaults[len(args) - first_default:])
        args = list(args)
        for i in range(tensors):
            bdim = in_dims[i] if i < len(in_dims) else None
            args[i] = args[i].unsqueeze(0).expand(info.batch_size, *args[i].shape) if bdim is None \
                else args[i].movedim(bdim, 0)
        logical_rank = args[0].dim() - 1
        scalar = logical_rank == 0
        if scalar and tensors > 1:
            raise RuntimeError("sparsetopk.topk_loss: scores must have at least one dimension (the classes), "
                               "got a 0-d tensor")
        ndim = max(logical_rank, 1)
        dim = args[dim_index]
        if not -ndim <= dim < ndim:
            raise IndexError(f"sparsetopk: dim = {dim} is out of range for x with {logical_rank} dimension(s) "
                             f"(expected a value in [{-ndim}, {ndim - 1}])")
        if scalar:
            args[0], args[dim_index] = args[0].unsqueeze(-1), -1
        else:
            args[dim_index] = dim % ndim + 1
        result = op(*args)
        if outputs == 1:
            return result, 0
        result = list(result)
        if scalar:
            result[1] = result[1].squeeze(-1)  # topk_sum's mask
        return tuple(result), (0,) * outputs
    return rule


def _register_reductions() -> None:
    """topk_sum and topk_loss: (x, k, l, p, dim) and (scores, target, k, l, p, dim)."""
    for name, fake, tensors, dim_index, outputs, defaults in (
            ("topk_sum", _topk_sum_fake, 1, 4, 1, (L, P, DIM)),
            ("_topk_sum_forward", _topk_sum_forward_fake, 1, 4, 3, ()),
            ("topk_loss", _topk_loss_fake, 2, 5, 1, (L, P, DIM)),
            ("_topk_loss_forward", _topk_loss_forward_fake, 2, 5, 2, ())):
        torch.library.register_fake(f"sparsetopk::{name}", fake)
        torch.library.register_vmap(f"sparsetopk::{name}",
                                    _reduction_vmap_rule(getattr(ops, name), tensors, dim_index, outputs, defaults))


# torch.library.register_vmap is new in torch 2.5. On torch 2.4 the ops get no
# vmap rules: torch.func.vmap then runs them through functorch's fallback (one
# call per batch element, with a performance warning), not one call per batch.
HAS_VMAP_RULES = hasattr(torch.library, "register_vmap")


def _register_for_this_torch() -> None:
    if HAS_VMAP_RULES:
        _register()
        _register_reductions()
        return
    torch.library.register_vmap = lambda *args, **kwargs: None  # for _register only: no vmap rules
    try:
        _register()
        _register_reductions()
    finally:
        del torch.library.register_vmap


_register_for_this_torch()


# ---- the autograd.Functions of the torch.func path ----

class DerivativeProduct(torch.autograd.Function):
    """``apply(operator, product, *args)`` calls the derivative op ``operator.product(product)``
    (an :class:`~sparsetopk._ops.Operator`; ``product``: "backward" or "jvp");
    differentiating its result again raises an error naming the op, in both AD modes.

    (The ops' C++ Autograd kernels do the same outside torch.func; this class
    is what composes with its transforms.)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(operator: Operator, product: str, *args):
        return getattr(ops, operator.product(product))(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        operator, product = inputs[:2]
        ctx.label = f"{operator.name} {product}"

    @staticmethod
    def _refuse(ctx):
        raise RuntimeError(f"sparsetopk.{ctx.label}: second derivatives are not implemented (the soft operators "
                           "are differentiable once)")

    @staticmethod
    def backward(ctx, *grads):
        DerivativeProduct._refuse(ctx)

    @staticmethod
    def jvp(ctx, *tangents):
        DerivativeProduct._refuse(ctx)


class SoftTopkFunction(torch.autograd.Function):
    """A soft operator with its exact VJP and JVP as ops; used under torch.func and forward AD.

    ``apply(x, k, l, p, dim, solver, num_iter, operator)`` (``operator``: a soft
    :class:`~sparsetopk._ops.Operator`) returns ``(out, row_state)``; only ``out``
    is differentiable. ``generate_vmap_rule``: under ``vmap`` the
    forward, backward and JVP ops run once for the batch, through their vmap
    rules.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, k, l, p, dim, solver, num_iter, operator: Operator):
        return getattr(ops, operator.forward)(x, k, l, p, dim, solver, num_iter)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, l, p, dim, _, _, operator = inputs
        _, row_state = output
        ctx.mark_non_differentiable(row_state)
        ctx.save_for_backward(x, row_state)
        ctx.save_for_forward(x, row_state)
        ctx.arguments = (l, p, dim)
        ctx.operator = operator

    @staticmethod
    def backward(ctx, grad_out, grad_row_state):
        x, row_state = ctx.saved_tensors
        grad_x = DerivativeProduct.apply(ctx.operator, "backward", grad_out, x, row_state, *ctx.arguments)
        return grad_x, None, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *unused_tangents):
        x, row_state = ctx.saved_tensors
        out_tangent = DerivativeProduct.apply(ctx.operator, "jvp", x_tangent, x, row_state, *ctx.arguments)
        return out_tangent, None


MASK = next(op for op in OPERATORS if op.name == "soft_topk_mask")


def _along(g: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """A value per slice (x with dim reduced) broadcast back along dim."""
    return g if x.dim() == 0 else g.unsqueeze(dim % x.dim())


def _reduce(t: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """The sum of t (x's shape) along dim."""
    return t if x.dim() == 0 else t.sum(dim)


class TopkSumFunction(torch.autograd.Function):
    """``apply(x, k, l, p, dim)`` returns ``(value, mask, row_state)`` of topk_sum;
    used under torch.func and forward AD. Only the value is differentiable: d value
    / dx = mask (SPEC.md), which the backward takes from the mask's own
    autograd.Function, so that its derivative (topk_sum's Hessian, the mask's
    Jacobian) is exact under torch.func's nested transforms too."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, k, l, p, dim):
        return ops._topk_sum_forward(x, k, l, p, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.k, l, p, dim = inputs
        _, mask, row_state = output
        ctx.mark_non_differentiable(mask, row_state)
        ctx.save_for_backward(x, mask, row_state)
        ctx.save_for_forward(x, mask, row_state)
        ctx.arguments = (l, p, dim)

    @staticmethod
    def backward(ctx, grad_value, grad_mask, grad_row_state):
        x, mask, row_state = ctx.saved_tensors
        dim = ctx.arguments[2]
        # The mask as a function of x (its derivative, the Hessian of topk_sum, through the mask's own
        # autograd.Function): recomputed, as torch.func's nested levels need a function of x here.
        mask = SoftTopkFunction.apply(x, ctx.k, *ctx.arguments, "auto", None, MASK)[0] \
            if torch.is_grad_enabled() else mask
        return _along(grad_value, x, dim) * mask, None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *unused_tangents):
        x, mask, row_state = ctx.saved_tensors
        return _reduce(mask * x_tangent, x, ctx.arguments[2]), None, None


class TopkLossFunction(torch.autograd.Function):
    """``apply(scores, target, k, l, p, dim)`` returns ``(loss, grad)`` of topk_loss;
    used under torch.func and forward AD. Differentiable once: d loss / d scores = grad."""

    generate_vmap_rule = True

    @staticmethod
    def forward(scores, target, k, l, p, dim):
        return ops._topk_loss_forward(scores, target, k, l, p, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        scores, _, _, _, _, dim = inputs
        _, grad = output
        ctx.mark_non_differentiable(grad)
        ctx.save_for_backward(scores, grad)
        ctx.save_for_forward(scores, grad)
        ctx.dim = dim

    @staticmethod
    def backward(ctx, grad_loss, grad_grad):
        scores, grad = ctx.saved_tensors
        return OnceDifferentiable.apply("topk_loss", _along(grad_loss, scores, ctx.dim) * grad), None, None, None, \
            None, None

    @staticmethod
    def jvp(ctx, scores_tangent, *unused_tangents):
        scores, grad = ctx.saved_tensors
        return OnceDifferentiable.apply("topk_loss", _reduce(grad * scores_tangent, scores, ctx.dim)), None


class OnceDifferentiable(torch.autograd.Function):
    """``apply(label, t)``: t, whose derivative raises an error naming ``label``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(label, t):
        return t.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.label = inputs[0]

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(f"sparsetopk.{ctx.label}: second derivatives are not implemented")

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(f"sparsetopk.{ctx.label}: second derivatives are not implemented")


class Route:
    """How a call of an operator on ``x`` runs (:func:`route`)."""

    EAGER = 0  # the op's C++ function directly (OpOverload._op, what OpOverload.__call__ calls)
    PYTHON_AUTOGRAD = 1  # SoftTopkFunction: a torch.func transform or forward-mode AD is on x
    TRACED = 2  # torch.compile / torch.export: the OpOverload, which they trace


# (where a torch lacks the first, every call checks x itself, as before)
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)
_is_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def route(x: torch.Tensor) -> int:
    """The :class:`Route` of a call on ``x``. In eager mode outside ``torch.func``
    (the common case) this costs about 0.1 us, which matters on small inputs; the
    functorch check runs only while a transform is active."""
    if torch.compiler.is_compiling():
        return Route.PYTHON_AUTOGRAD if COMPILE_USES_PYTHON_AUTOGRAD else Route.TRACED
    if forward_ad._current_level >= 0 or (_transforms_active() and _is_functorch_wrapped(x)):
        return Route.PYTHON_AUTOGRAD
    return Route.EAGER


def needs_python_autograd(x: torch.Tensor) -> bool:
    """Whether ``x`` is under a torch.func transform or forward-mode AD, where the
    C++ autograd kernel of the dispatcher cannot run and :class:`SoftTopkFunction` must."""
    return route(x) == Route.PYTHON_AUTOGRAD

# The global operators' fake kernels and autograd formulas (their own module:
# a list of tensors is a signature of its own), registered with the others.
from . import _global  # noqa: E402,F401


# DTensor inputs: the row operators' sharding rules and their handler (docs/global.md, "DTensor").
# Importing torch.distributed.tensor takes seconds, so they are registered when it is imported:
# now if it already is, else right after whoever imports it first (a one-shot import hook).
class _AfterDTensorImport:
    """A ``sys.meta_path`` finder that registers sparsetopk._dtensor once torch.distributed.tensor is loaded."""

    NAME = "torch.distributed.tensor"

    def find_spec(self, name, path=None, target=None):
        if name != self.NAME:
            return None
        _remove_hook()
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            from . import _dtensor  # noqa: F401

        spec.loader.exec_module = exec_then_register
        return spec


_DTENSOR_HOOK = _AfterDTensorImport()


def _remove_hook() -> None:
    if _DTENSOR_HOOK in sys.meta_path:
        sys.meta_path.remove(_DTENSOR_HOOK)


if torch.distributed.is_available():
    if _AfterDTensorImport.NAME in sys.modules:
        from . import _dtensor  # noqa: E402,F401
    else:
        sys.meta_path.insert(0, _DTENSOR_HOOK)
