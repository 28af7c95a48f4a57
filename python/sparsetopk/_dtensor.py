"""DTensor inputs for the row operators (``torch.ops.sparsetopk.*``): sharding rules and a handler.

A row operator works on the slices of ``x`` along ``dim``. How a DTensor ``x``
runs (docs/global.md, "DTensor"):

- ``Shard(d)`` with ``d != dim``: every slice lies whole in one process, so the
  op runs on the local shards and the outputs keep ``x``'s placements (a
  reduced output, topk_sum's value or topk_loss's loss, ``Shard(d)`` of its own
  dims). ``Replicate()`` stays replicated.
- ``Partial()`` is redistributed to ``Replicate()`` first (a row operator is
  not linear).
- ``Shard(dim)``: a slice is spread over the processes of that mesh dimension,
  and each slice is one global top-k over them: the global operators' solve
  (``_soft_topk_{mask,mag}_global_*``, ``hard_topk_*_global``) with the mesh
  dimension's process group, one call per slice (each call makes the
  collectives of docs/global.md, so a tensor of many rows sharded along ``dim``
  costs rows x those rounds). The outputs keep ``x``'s placements; the row
  state (which is then the global solve's state, float64[11] per slice) is
  ``Replicate()`` on that mesh dimension. topk_sum and topk_loss add their
  slices' sums with one all-reduce per call.

Two mechanisms, both registered here when ``torch.distributed`` is available:
``register_sharding`` rules (the placements above for every mesh dimension
that does not shard ``dim``: what DTensor's sharding propagation sees), and
an entry in DTensor's table of custom op handlers, which runs every call of
these ops on a DTensor: it redistributes ``Partial``, sends ``Shard(dim)`` to
the global solve, and runs the rest on the local shards with the placements
the rules state. The global solve is exact (the ``solver`` and ``num_iter``
arguments are not used there) and runs in float32 or float64 (float16 and
bfloat16 slices are computed in float32).
"""

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._dtensor_spec import DTensorSpec, TensorMeta
from torch.distributed.tensor.experimental import register_sharding

from ._ops import OPERATORS

ops = torch.ops.sparsetopk
ROW_STATE_SIZE = 11
_HALF = (torch.float16, torch.bfloat16)


class _Op:
    """How an op's arguments and outputs relate to ``x``.

    ``kind``: soft, forward, product, hard, topk_sum, topk_sum_forward, topk_loss, topk_loss_forward;
    ``form``: mask or mag; ``dim_index``: the position of ``dim``; ``x_index``: that of x (scores);
    ``outputs``: per output, "x" (x's shape), "state" (row state) or "reduced" (dim removed);
    ``inputs``: per tensor argument, its position and the same words ("target": reduced).
    """

    def __init__(self, kind, form, dim_index, x_index, outputs, inputs):
        self.kind, self.form, self.dim_index, self.x_index = kind, form, dim_index, x_index
        self.outputs, self.inputs = outputs, inputs


def _table() -> Dict[Any, _Op]:
    table = {}
    for op in OPERATORS:
        form = "mask" if "mask" in op.name else "mag"
        if not op.soft:
            table[getattr(ops, op.name).default] = _Op("hard", form, 2, 0, ("x",), ((0, "x"),))
            continue
        table[getattr(ops, op.name).default] = _Op("soft", form, 4, 0, ("x",), ((0, "x"),))
        table[getattr(ops, op.forward).default] = _Op("forward", form, 4, 0, ("x", "state"), ((0, "x"),))
        for product, _ in (("backward", None), ("jvp", None)):
            table[getattr(ops, op.product(product)).default] = _Op(
                product, form, 5, 1, ("x",), ((0, "x"), (1, "x"), (2, "state")))
    table[ops.topk_sum.default] = _Op("topk_sum", "mask", 4, 0, ("reduced",), ((0, "x"),))
    table[ops._topk_sum_forward.default] = _Op("topk_sum_forward", "mask", 4, 0, ("reduced", "x", "state"),
                                               ((0, "x"),))
    table[ops.topk_loss.default] = _Op("topk_loss", "mask", 5, 0, ("reduced",), ((0, "x"), (1, "reduced")))
    table[ops._topk_loss_forward.default] = _Op("topk_loss_forward", "mask", 5, 0, ("reduced", "x"),
                                                ((0, "x"), (1, "reduced")))
    return table


OPS = _table()


def _full_args(op_call, args, kwargs) -> List[Any]:
    """Every argument by position, the schema's defaults filled in."""
    full = list(args)
    for argument in op_call._schema.arguments[len(args):]:
        if argument.name in kwargs:
            full.append(kwargs[argument.name])
        else:
            full.append(argument.default_value)
    return full


def _wrap(dim: int, ndim: int) -> int:
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"sparsetopk: dim = {dim} is out of range for x with {ndim} dimension(s) "
                         f"(expected a value in [{-n}, {n - 1}])")
    return dim % n


def _placement_for(placement, role: str, dim: int):
    """The placement of a tensor of ``role`` when x has ``placement`` (d != dim)."""
    if isinstance(placement, Shard) and role in ("reduced",):
        return Shard(placement.dim - (placement.dim > dim))
    return placement


# ---- the sharding rules (register_sharding): Replicate, or Shard(d) for d != dim ----

def _rule(spec: _Op):
    def rule(*args, **kwargs):
        args = list(args)
        x = args[spec.x_index]
        dim = args[spec.dim_index] if len(args) > spec.dim_index else kwargs.get("dim", -1)
        ndim = x.ndim
        dim = _wrap(dim, ndim)
        tensor_positions = {i for i, _ in spec.inputs if i < len(args)}

        def inputs(placement_of):
            return [placement_of(role) if i in tensor_positions else None
                    for i, role in ((i, dict(spec.inputs).get(i)) for i in range(len(args)))]

        strategies = [([Replicate()] * len(spec.outputs), inputs(lambda role: Replicate()))]
        for d in range(ndim):
            if d == dim:
                continue
            strategies.append(([_placement_for(Shard(d), role, dim) for role in spec.outputs],
                               inputs(lambda role: _placement_for(Shard(d), role, dim))))
        return strategies
    return rule


def _register_rules() -> None:
    for op_call, spec in OPS.items():
        register_sharding(op_call)(_rule(spec))


# ---- the handler: every call of these ops on a DTensor ----

def _as_dtensor(t, mesh) -> DTensor:
    if isinstance(t, DTensor):
        return t
    return DTensor.from_local(t, mesh, [Replicate()] * mesh.ndim, run_check=False)


def _placements(x_placements: Sequence, role: str, dim: int, along: Optional[int]) -> Tuple:
    """The placements of a tensor of ``role`` given x's; ``along``: the mesh dimension sharding ``dim``
    (its row state is replicated there, a reduced output or label too)."""
    result = []
    for i, placement in enumerate(x_placements):
        if i == along:
            result.append(Shard(dim) if role == "x" else Replicate())
        else:
            result.append(_placement_for(placement, role, dim))
    return tuple(result)


def _global_shape(x_shape: Sequence[int], role: str, dim: int) -> List[int]:
    shape = list(x_shape)
    if role == "state":
        if not shape:
            return [ROW_STATE_SIZE]
        shape[dim] = ROW_STATE_SIZE
    elif role == "reduced":
        del shape[dim]
    return shape


def _to_dtensor(local: torch.Tensor, mesh, placements, shape) -> DTensor:
    stride = torch.empty(shape, device="meta").stride() if shape else ()
    meta = TensorMeta(torch.Size(shape), stride, local.dtype)
    return DTensor(local, DTensorSpec(mesh, tuple(placements), tensor_meta=meta), requires_grad=False)


def _handler(op_call, args, kwargs):
    spec = OPS[op_call]
    args = _full_args(op_call, args, kwargs)
    x = args[spec.x_index]
    mesh = next(a for a in args if isinstance(a, DTensor)).device_mesh
    x = _as_dtensor(x, mesh)
    dim = _wrap(args[spec.dim_index], x.ndim)
    # Partial -> Replicate; Shard(dim) kept on the first mesh dimension that has it, Replicate on the others
    placements, along = [], None
    for i, placement in enumerate(x.placements):
        if placement.is_partial():
            placement = Replicate()
        elif x.ndim > 0 and placement.is_shard(dim):
            if along is None:
                along = i
            else:
                placement = Replicate()
        placements.append(placement)
    for i, role in spec.inputs:
        t = x if i == spec.x_index else _as_dtensor(args[i], mesh)
        wanted = _placements(placements, role, dim, along)
        if tuple(t.placements) != wanted:
            t = t.redistribute(mesh, wanted)
        args[i] = t
    x = args[spec.x_index]
    local_args = [a.to_local() if isinstance(a, DTensor) else a for a in args]
    if along is None:
        result = op_call(*local_args)
    else:
        result = _global(spec, local_args, dim, x.shape[dim], mesh, along)
    results = result if isinstance(result, (tuple, list)) else (result,)
    wrapped = tuple(_to_dtensor(r, mesh, _placements(placements, role, dim, along), _global_shape(x.shape, role, dim))
                    for r, role in zip(results, spec.outputs))
    return wrapped if isinstance(result, (tuple, list)) else wrapped[0]


# ---- the slices along a sharded dim: the global operators' solve, one slice at a time ----

def _rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t's slices along dim as rows of a 2-D tensor (a copy when needed)."""
    moved = t.movedim(dim, -1)
    return moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])


def _unrows(rows: torch.Tensor, like: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    shape = list(like.movedim(dim, -1).shape[:-1]) + [size]
    return rows.reshape(shape).movedim(-1, dim)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in _HALF else t.dtype


def _global(spec: _Op, a: List[Any], dim: int, n: int, mesh, along: int):
    group = mesh.get_group(along)
    name = group.group_name
    x = a[spec.x_index]
    if x.dim() == 0:
        raise AssertionError("a 0-d tensor has no sharded dim")
    dtype = _compute_dtype(x)
    rows = _rows(x, dim).to(dtype)
    kind, form = spec.kind, spec.form
    if kind in ("soft", "forward"):
        k, l, p = a[1], a[2], a[3]
        forward = getattr(ops, f"_soft_topk_{form}_global_forward")
        outs, states = [], []
        for row in rows:
            (out,), state = forward([row], k, l, p, name)
            outs.append(out)
            states.append(state)
        out = _unrows(_stack(outs, rows), x, dim, x.shape[dim]).to(x.dtype)
        if kind == "soft":
            return out
        state = _unrows(torch.stack(states) if states else rows.new_empty((0, ROW_STATE_SIZE), dtype=torch.float64),
                        x, dim, ROW_STATE_SIZE)
        return out, state
    if kind in ("backward", "jvp"):
        v, l, p = a[0], a[3], a[4]
        product = getattr(ops, f"_soft_topk_{form}_global_{kind}")
        v_rows, state_rows = _rows(v, dim).to(dtype), _rows(a[2], dim)
        outs = [product([vr], [xr], sr.contiguous(), l, p, name)[0] for vr, xr, sr in zip(v_rows, rows, state_rows)]
        return _unrows(_stack(outs, rows), x, dim, x.shape[dim]).to(v.dtype)
    if kind == "hard":
        hard = getattr(ops, f"hard_topk_{form}_global")
        outs = [hard([row], a[1], name)[0] for row in rows]
        return _unrows(_stack(outs, rows), x, dim, x.shape[dim]).to(x.dtype)
    if kind in ("topk_sum", "topk_sum_forward"):
        k, l, p = a[1], a[2], a[3]
        forward = ops._soft_topk_mask_global_forward
        masks, states = [], []
        for row in rows:
            (mask,), state = forward([row], k, l, p, name)
            masks.append(mask)
            states.append(state)
        mask_rows = _stack(masks, rows)
        values = (mask_rows * rows).sum(-1, dtype=torch.float64) - (l / p) * mask_rows.double().pow(p).sum(-1)
        dist.all_reduce(values, group=group)
        value = values.to(x.dtype).reshape(x.movedim(dim, -1).shape[:-1])
        if kind == "topk_sum":
            return value
        state = _unrows(torch.stack(states) if states else rows.new_empty((0, ROW_STATE_SIZE), dtype=torch.float64),
                        x, dim, ROW_STATE_SIZE)
        return value, _unrows(mask_rows, x, dim, x.shape[dim]).to(x.dtype), state
    if kind in ("topk_loss", "topk_loss_forward"):
        return _topk_loss(a, rows, x, dim, n, mesh, along, name, group, kind == "topk_loss")
    raise AssertionError(kind)


def _stack(outs: List[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    return torch.stack(outs) if outs else rows.new_empty(rows.shape)


def _topk_loss(a, rows, x, dim, n, mesh, along, name, group, loss_only):
    """topk_sum(x, k) - x_t - topk_sum(x without t, k - 1) + l/p per slice (SPEC.md), its gradient
    m - e_t - pad_t(m'): two global solves per slice (the second over this rank's part with
    the label's entry left out where this rank holds it) and one all-reduce for every slice's sums."""
    target, k, l, p = a[1], a[2], a[3], a[4]
    labels = target.reshape(-1).tolist()
    chunk = -(-n // mesh.size(along))
    first = min(chunk * mesh.get_local_rank(along), n)
    local_n = rows.shape[1]
    forward = ops._soft_topk_mask_global_forward
    sums, grads = [], []
    for row, t in zip(rows, labels):
        if not 0 <= t < n:
            raise IndexError(f"sparsetopk.topk_loss: target {t} is out of range for {n} classes")
        (m,), _ = forward([row], k, l, p, name)
        j = t - first
        mine = 0 <= j < local_n
        parts = [row[:j], row[j + 1:]] if mine else [row]
        rest, _ = forward(parts, k - 1, l, p, name)
        m_rest = torch.cat([rest[0], row.new_zeros(1), rest[1]]) if mine else rest[0]
        value = (m * row).sum(dtype=torch.float64) - (l / p) * m.double().pow(p).sum()
        value = value - ((m_rest * row).sum(dtype=torch.float64) - (l / p) * m_rest.double().pow(p).sum())
        if mine:
            value = value - row[j].double()
        sums.append(value)
        grad = m - m_rest
        if mine:
            grad[j] -= 1
        grads.append(grad)
    values = torch.stack(sums) if sums else torch.zeros(0, dtype=torch.float64)
    dist.all_reduce(values, group=group)
    loss = (values + l / p).to(x.dtype).reshape(target.shape)
    if loss_only:
        return loss
    return loss, _unrows(_stack(grads, rows), x, dim, x.shape[dim]).to(x.dtype)


def _register_handler() -> None:
    for op_call in OPS:
        DTensor._op_dispatcher._custom_op_handlers[op_call] = _handler


_register_rules()
_register_handler()
