"""The global operators in JAX (SPEC.md, "One top-k over many tensors and many devices"):
one top-k over a list of arrays of any shapes, as the row operator on the concatenation of
the flattened arrays, without concatenating them (docs/jax.md, "Global operators").

The custom calls are the library's ``sparsetopk_*_global*`` targets (src/jax/global_handlers.cpp):
a variadic list of buffers, one per array, into the core's global engine
(include/sparsetopk/global.hpp). They go through a primitive of their own, ``sparsetopk_global``:
its batching rule (jax.vmap) makes one call per batch element (the calls are not row-wise, so
the row operators' rule, leading axes as rows, does not apply), and its transposition maps the
JVP target to the VJP target and back.

One process (``axis_name=None``): one custom call, the core's LocalReduction; bitwise the row
operator on the concatenation. Derivatives: a ``jax.custom_jvp`` whose tangent rule is one call of
the global JVP target, transposed by JAX into the VJP target for reverse mode.

Sharded (``axis_name=`` a mesh axis, inside ``jax.shard_map``): each device passes its shards, k
counts every entry of every device, the concatenation is the devices' arrays in the order of
their index along ``axis_name``. The engine's collectives are JAX ops between custom calls: each
call replays the collectives made so far (a history) and stops at the next one, which it returns
as a request (kind and a payload of REQUEST_WIDTH doubles); a ``jax.lax.while_loop`` reduces it
with ``psum``/``pmax``/``all_gather`` over ``axis_name`` and calls again until the engine
finishes. Derivatives: ``jax.custom_vjp`` (reverse mode), the VJP target by the same loop.
"""

import functools
import operator as _operator
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jax.sharding import NamedSharding, PartitionSpec

from . import _ffi
from ._operators import _check_number as _number
from ._operators import _check_static, _fail

REQUEST_WIDTH = 256  # doubles per collective of a sharded call (kRequestWidth, global_handlers.cpp)
MAX_COLLECTIVES = 64  # collectives one sharded call may make (kMaxCollectives)
SUM, MAX, GATHER = 1, 2, 3  # the kinds of request


# ---- the primitive ----

global_p = Primitive("sparsetopk_global")
global_p.multiple_results = True


def _bind(target: str, results, operands, **attributes):
    results = tuple(jax.core.ShapedArray(tuple(r.shape), np.dtype(r.dtype)) for r in results)
    attributes = tuple(sorted((name, value) for name, value in attributes.items()))
    return global_p.bind(*operands, target=target, results=results, attributes=attributes)


@functools.partial(jax.jit, static_argnames=("target", "results", "attributes"))
def _apply(*operands, target, results, attributes):
    return global_p.bind(*operands, target=target, results=results, attributes=attributes)


def _varying(aval) -> int:
    kind = getattr(aval, "manual_axis_type", None)
    return len(getattr(kind, "varying", ()) or ())


def _abstract_eval(*operands, target, results, attributes):
    """The results, typed like the most varying operand (inside shard_map: varying over the
    axes it varies over) and replicated over any mesh (a global result is not row-sharded)."""
    base = max(operands, key=_varying)
    sharding = getattr(base, "sharding", None)
    out = []
    for r in results:
        if isinstance(sharding, NamedSharding) and not sharding.mesh.empty:
            out.append(base.update(shape=r.shape, dtype=r.dtype, weak_type=False,
                                   sharding=NamedSharding(sharding.mesh, PartitionSpec())))
        else:
            out.append(base.update(shape=r.shape, dtype=r.dtype, weak_type=False))
    return tuple(out)


def _lowering(ctx, *operands, target, results, attributes, platform):
    # GPU platforms: always the host fallback (the CUDA library has no global targets)
    return _ffi.lower_target(ctx, operands, target, attributes, platform, host=platform in _ffi.GPU_PLATFORMS)


def _batching(operands, axes, *, target, results, attributes):
    """One call per element of the vmapped axis (a global call is not row-wise), stacked."""
    size = next(a.shape[axis] for a, axis in zip(operands, axes) if axis is not None)
    outs = []
    for i in range(size):
        sliced = [a if axis is None else jax.lax.index_in_dim(a, i, axis, keepdims=False)
                  for a, axis in zip(operands, axes)]
        outs.append(global_p.bind(*sliced, target=target, results=results, attributes=attributes))
    return [jnp.stack(column) for column in zip(*outs)], [0] * len(results)


def _transpose(cotangents, *operands, target, results, attributes):
    """The JVP and VJP targets are linear in their tangents (the last `parts` operands), and
    each other's transposes (the Jacobian of a global soft operator applied either way)."""
    assert target.endswith("_jvp") or target.endswith("_vjp"), target
    parts = dict(attributes)["parts"]
    linear = operands[-parts:]
    assert all(ad.is_undefined_primal(v) for v in linear)
    assert not any(ad.is_undefined_primal(a) for a in operands[:-parts])
    cotangents = [jnp.zeros(v.aval.shape, v.aval.dtype) if type(c) is ad.Zero else c
                  for c, v in zip(cotangents, linear)]
    other = target[:-3] + ("vjp" if target.endswith("_jvp") else "jvp")
    fixed = operands[:-parts]
    out = global_p.bind(*fixed, *cotangents, target=other, results=results, attributes=attributes)
    return [None] * len(fixed) + list(out)


def _jvp(primals, tangents, *, target, results, attributes):
    """Second derivatives are not implemented; the products are linear in their tangents."""
    parts = dict(attributes)["parts"]
    if not (target.endswith("_jvp") or target.endswith("_vjp")) or any(
            type(t) is not ad.Zero for t in tangents[:-parts]):
        raise NotImplementedError("sparsetopk.jax: second derivatives of the global operators are not implemented")
    params = dict(target=target, results=results, attributes=attributes)
    out = global_p.bind(*primals, **params)
    d_linear = [jnp.zeros(p.shape, p.dtype) if type(t) is ad.Zero else t
                for t, p in zip(tangents[-parts:], primals[-parts:])]
    return out, global_p.bind(*primals[:-parts], *d_linear, **params)


global_p.def_impl(_apply)
global_p.def_abstract_eval(_abstract_eval)
_ffi._register_lowering(global_p, _lowering)
batching.primitive_batchers[global_p] = _batching
ad.primitive_transposes[global_p] = _transpose
ad.primitive_jvps[global_p] = _jvp


# ---- the calls: one process, and sharded ----

def _state_shape():
    return jax.ShapeDtypeStruct((_ffi.STATE_WORDS,), np.uint32)


def _call(target, before, flat, after, results, axis_name, k=0, l=1.0, p=2.0):
    """The custom call ``target`` on (before..., flat..., after...) with ``results``: one call
    without ``axis_name``; with it, the loop of calls and collectives of a sharded call."""
    attributes = dict(parts=np.int64(len(flat)), k=np.int64(k), l=np.float64(l), p=np.float64(p))
    operands = tuple(before) + tuple(flat) + tuple(after)
    if axis_name is None:
        return _bind(target, results, operands, ranks=np.int64(0), **attributes)
    ranks = jax.lax.axis_size(axis_name)
    rank = jax.lax.axis_index(axis_name).astype(jnp.int32)
    attributes["ranks"] = np.int64(ranks)
    results = tuple(results) + (jax.ShapeDtypeStruct((), np.int32), jax.ShapeDtypeStruct((REQUEST_WIDTH,), np.float64))
    # a zero varying over every manual axis the operands and the rank vary over (inside shard_map a
    # while_loop's carry keeps its type, and the calls' results vary like their operands): the sum
    # of an empty slice of each operand, exactly 0 whatever the operand holds
    zero = rank.astype(jnp.float64) * 0
    for operand in operands:
        zero = zero + jnp.sum(operand.reshape(-1)[:0]).astype(jnp.float64)
    history = jnp.zeros((MAX_COLLECTIVES, ranks * REQUEST_WIDTH), jnp.float64) + zero

    def step(history, count):
        return _bind(target, results, (rank, history, count) + operands, **attributes)

    def agreed(outs):
        # the request's kind, the same on every device (as the engine's requests are), as a value
        # of the axis: the branch of the switch below, which makes the one collective it names
        return jax.lax.pmax(outs[-2], axis_name)

    padding = (ranks - 1) * REQUEST_WIDTH

    def pad(values):
        return jnp.concatenate([values, jnp.zeros((padding,), jnp.float64)])

    # each branch's row + zero: typed alike (varying like the operands), whatever JAX types a collective's result
    branches = [
        lambda request: pad(jax.lax.psum(request, axis_name)) + zero,  # SUM (index 0: kind - 1)
        lambda request: pad(jax.lax.pmax(request, axis_name)) + zero,  # MAX
        lambda request: jax.lax.all_gather(request, axis_name).reshape(-1) + zero,  # GATHER
    ]

    def body(carry):
        history, count, outs, kind = carry
        row = jax.lax.switch(kind - 1, branches, outs[-1])
        history = jax.lax.dynamic_update_slice(history, row[None, :], (count, jnp.zeros((), jnp.int32)))
        outs = step(history, count + 1)
        return history, count + 1, outs, agreed(outs)

    count = zero.astype(jnp.int32)
    outs = step(history, count)
    _, _, outs, _ = jax.lax.while_loop(lambda carry: carry[3] != 0, body, (history, count, outs, agreed(outs)))
    return outs[:-2]


# ---- arguments ----

# (the argument checks are the row operators' own: _operators.py)


def _replicated(a):
    """``a`` replicated where explicit sharding splits it (a reshard, whose transpose
    shards the cotangent back); otherwise ``a`` (automatic sharding: the partitioner
    gathers the operands of a call without a partitioning rule)."""
    spec = _ffi._mesh_spec(jax.typeof(a))
    if spec is None or all(s is None for s in spec):
        return a
    return jax.sharding.reshard(a, NamedSharding(jax.typeof(a).sharding.mesh, PartitionSpec()))


def _flatten(name, arrays, k, axis_name):
    """The leaves of ``arrays`` flattened to 1-d in the dtype of computation (float64 where
    every leaf is float64, else float32), k checked, and the map of the outputs back."""
    leaves, tree = jax.tree_util.tree_flatten(arrays)
    if not leaves:
        _fail(name, "arrays must hold at least one array")
    leaves = [jnp.asarray(a) for a in leaves]
    for i, a in enumerate(leaves):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            _fail(name, f"arrays[{i}] must be a floating-point array, got {a.dtype}", TypeError)
    compute = jnp.float64 if all(a.dtype == jnp.float64 for a in leaves) else jnp.float32
    flat = tuple(a.reshape(-1).astype(compute) for a in leaves)
    if axis_name is None:  # explicit sharding: whole on every device (one call solves all of it)
        flat = tuple(_replicated(a) for a in flat)
    _check_static(name, "k", k)
    try:
        k = _operator.index(k)
    except TypeError:
        _fail(name, f"k must be an integer, got {k!r}", TypeError)
    n = sum(a.size for a in leaves)
    if axis_name is None and not 0 <= k <= n:
        _fail(name, f"k = {k} is out of range [0, n = {n}] (n: the entries of every array)")
    if axis_name is not None:
        if k < 0:
            _fail(name, f"k = {k} must be >= 0")
        if not jax.config.jax_enable_x64:
            _fail(name, "axis_name= needs jax_enable_x64 (the collectives carry float64 sums and counts): "
                        "jax.config.update('jax_enable_x64', True)", RuntimeError)

    def restore(outs):
        return jax.tree_util.tree_unflatten(tree, [o.reshape(a.shape).astype(a.dtype) for o, a in zip(outs, leaves)])

    return flat, k, restore


# ---- the soft operators ----

def _forward(flat, operator, k, l, p, axis_name):
    results = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in flat) + (_state_shape(),)
    outs = _call(f"sparsetopk_soft_topk_{operator}_global", (), flat, (), results, axis_name, k, l, p)
    return tuple(outs[:-1]), outs[-1]


def _product(state, flat, v, operator, product, l, p, axis_name):
    results = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in flat)
    return tuple(_call(f"sparsetopk_soft_topk_{operator}_global_{product}", (state,), flat, v, results,
                       axis_name, l=l, p=p))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def _soft_local(flat, operator, k, l, p):
    return _forward(flat, operator, k, l, p, None)[0]


@_soft_local.defjvp
def _soft_local_jvp(operator, k, l, p, primals, tangents):
    (flat,), (d_flat,) = primals, tangents
    outs, state = _forward(flat, operator, k, l, p, None)
    d_flat = tuple(jnp.zeros(x.shape, x.dtype) if type(d) is ad.Zero else d for d, x in zip(d_flat, flat))
    return outs, _product(state, flat, d_flat, operator, "jvp", l, p, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _soft_sharded(flat, operator, k, l, p, axis_name):
    return _forward(flat, operator, k, l, p, axis_name)[0]


def _soft_sharded_fwd(flat, operator, k, l, p, axis_name):
    outs, state = _forward(flat, operator, k, l, p, axis_name)
    return outs, (flat, state)


def _soft_sharded_bwd(operator, k, l, p, axis_name, saved, g):
    flat, state = saved
    g = tuple(jnp.zeros(x.shape, x.dtype) if gi is None else gi.astype(x.dtype) for gi, x in zip(g, flat))
    return (_product(state, flat, g, operator, "vjp", l, p, axis_name),)


_soft_sharded.defvjp(_soft_sharded_fwd, _soft_sharded_bwd)


def _soft(name, operator, arrays, k, l, p, axis_name):
    flat, k, restore = _flatten(name, arrays, k, axis_name)
    l = _number(name, "l", l, 0.0, "> 0")
    p = _number(name, "p", p, 1.0, "> 1")
    if axis_name is None:
        return restore(_soft_local(flat, operator, k, l, p))
    return restore(_soft_sharded(flat, operator, k, l, p, axis_name))


def soft_topk_mag_global(arrays, k: int, l: float = 0.1, p: float = 4.0 / 3.0, *, axis_name=None):
    """``soft_topk_mag`` of the concatenation of the flattened ``arrays`` (a list, or any
    pytree, of arrays of any shapes), with one ``k``, returned in the arrays' shapes and
    dtypes (the same pytree). Nothing is concatenated.

    Args:
        arrays: a non-empty pytree of floating-point arrays; computed in float64 where every
            array is float64, else in float32.
        k: entries kept over all the arrays (static); with ``axis_name``, over every device.
        l, p: as :func:`sparsetopk.jax.soft_topk_mag` (static).
        axis_name: None (one device: bitwise the row operator on the concatenation), or a
            mesh axis name inside ``jax.shard_map``: each device passes its own arrays
            (shards), the concatenation is every device's arrays in the order of its index
            along that axis, and the engine's sums cross the devices by ``psum``/``pmax``/
            ``all_gather`` of at most 256 doubles each (needs ``jax_enable_x64``).

    Differentiable: forward and reverse mode without ``axis_name``, reverse mode (grad,
    vjp) with it; exact first derivatives. Works under ``jax.jit``.
    """
    return _soft("soft_topk_mag_global", "mag", arrays, k, l, p, axis_name)


def soft_topk_mask_global(arrays, k: int, l: float = 0.1, p: float = 4.0 / 3.0, *, axis_name=None):
    """``soft_topk_mask`` of the concatenation of the flattened ``arrays``; as
    :func:`soft_topk_mag_global`."""
    return _soft("soft_topk_mask_global", "mask", arrays, k, l, p, axis_name)


# ---- the hard operators ----

def _hard_call(flat, operator, k, axis_name):
    results = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in flat)
    return tuple(_call(f"sparsetopk_hard_topk_{operator}_global", (), flat, (), results, axis_name, k))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _hard(flat, operator, k, axis_name):
    return _hard_call(flat, operator, k, axis_name)


@_hard.defjvp
def _hard_jvp(operator, k, axis_name, primals, tangents):
    (flat,), (d_flat,) = primals, tangents
    outs = _hard_call(flat, operator, k, axis_name)
    if operator == "mask":
        return outs, tuple(jnp.zeros(x.shape, x.dtype) for x in flat)
    kept = _hard_call(tuple(jnp.abs(x) for x in flat), "mask", k, axis_name)  # mag = x * mask(|x|)
    d_flat = tuple(jnp.zeros(x.shape, x.dtype) if type(d) is ad.Zero else d for d, x in zip(d_flat, flat))
    return outs, tuple(d * m for d, m in zip(d_flat, kept))


def hard_topk_mag_global(arrays, k: int, *, axis_name=None):
    """``hard_topk_mag`` of the concatenation of the flattened ``arrays``: the k entries of
    largest magnitude over all of them kept (ties: the lower position in the concatenation
    first), the rest 0. ``axis_name`` as :func:`soft_topk_mag_global`."""
    flat, k, restore = _flatten("hard_topk_mag_global", arrays, k, axis_name)
    return restore(_hard(flat, "mag", k, axis_name))


def hard_topk_mask_global(arrays, k: int, *, axis_name=None):
    """``hard_topk_mask`` of the concatenation of the flattened ``arrays``: 1 on the k
    largest entries over all of them, 0 elsewhere. Zero derivative."""
    flat, k, restore = _flatten("hard_topk_mask_global", arrays, k, axis_name)
    return restore(_hard(flat, "mask", k, axis_name))
