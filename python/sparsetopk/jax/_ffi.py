"""The XLA FFI custom calls of sparsetopk.jax: loads libsparsetopk_jax.so, registers
its handlers (src/jax/ffi_handlers.cpp) for the CPU platform and calls them.

The targets are the library's: its table of (name, handler), which its
function ``sparsetopk_ffi_targets`` hands over (src/jax/ffi_bindings.hpp), is
registered row by row; no target is listed here.

Every call takes rows along the last axis of ``x`` (float32 or float64) and
treats all leading axes as the batch: one custom call for the whole array, and
under ``jax.vmap`` still one (the vmapped axis becomes one more leading axis).

The state of the derivatives, which :func:`soft_with_state` returns, is opaque:
the raw bytes of one ``RowState`` per row (11 doubles, include/sparsetopk/row_state.hpp)
as uint32 of shape ``x.shape[:-1] + (STATE_WORDS,)``, so that it needs no x64
and is exact whatever x's dtype. :func:`jacobian_product` hands it back to the
core's derivatives (``soft_topk_{mask,mag}_{jvp,vjp}``) through a JAX primitive
of its own, linear in its last operand, with the rules JAX needs: abstract
evaluation, lowering to the custom call, batching, transposition (the JVP's
transpose is the VJP and the reverse) and its own JVP (second derivatives).
The forward calls go through a primitive of the package too, ``sparsetopk_ffi``
(:func:`call`), for one reason: its lowering depends on the platform.

GPU arrays (platforms "cuda" and "rocm"): until the CUDA kernels are verified on
a GPU (:data:`CUDA_KERNELS_VERIFIED`), every call lowered for a GPU runs the
verified CPU target on the host, through ``jax.pure_callback`` (the operands are
copied to the host and the results back), with a warning once per process;
``SPARSETOPK_JAX_CUDA_KERNELS=1`` opts into the UNVERIFIED CUDA targets instead.
Batching and differentiation are rules of the primitives, above the lowering, so
jit, vmap, grad and jvp work the same on every platform (docs/jax.md, "GPU arrays").

Sharding: every call is row-wise, so its lowering marks it batch-partitionable (XLA's
batch partitioner, and a Shardy sharding rule): under jax.jit, a batch sharded across
devices stays sharded and each device's call has its own rows; a sharded top-k axis is
gathered along that axis only (section "sharding" below; docs/jax.md, "Sharding").
"""

import contextlib
import ctypes
import functools
import os
import warnings
from pathlib import Path
from typing import List, Tuple

import jax
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jax.sharding import NamedSharding, PartitionSpec

from .._paths import candidate_paths

try:  # the Shardy rule's builders: JAX's own (jax.experimental.custom_partitioning takes the same strings)
    from jax._src.custom_partitioning_sharding_rule import sdy_sharding_rule_to_mlir, str_to_sdy_sharding_rule
except ImportError:  # a JAX that moved them: no partitioning under Shardy (and test_jax_sharding.py fails)
    sdy_sharding_rule_to_mlir = str_to_sdy_sharding_rule = None

LIBRARY_NAME = "libsparsetopk_jax.so"
CUDA_LIBRARY_NAME = "libsparsetopk_jax_cuda.so"  # UNVERIFIED CUDA handlers, opt-in (docs/jax.md)
CUDA_OPT_IN = "SPARSETOPK_JAX_CUDA_KERNELS"
STATE_WORDS = 22  # uint32 words of one row's state: a RowState, 11 doubles (RowState::size)
TABLE_FUNCTION = "sparsetopk_ffi_targets"  # exported by both libraries (src/jax/ffi_bindings.hpp)
_loaded = False
cuda_registered = False  # whether the CUDA handlers were registered (opt-in)

# The one switch to flip once the CUDA handlers (src/jax/cuda_handlers.cpp) have run and passed the JAX
# suite on a real GPU (scripts/gpu-check.sh): True registers them whenever libsparsetopk_jax_cuda.so is
# found, without the opt-in, and CUDA arrays use them ($SPARSETOPK_JAX_CUDA_KERNELS=0 then keeps the host
# fallback). While False, CUDA arrays run the verified CPU target on the host unless the opt-in is set.
CUDA_KERNELS_VERIFIED = False
GPU_PLATFORMS = ("cuda", "rocm")  # lowered to the host fallback unless CUDA handlers are registered (cuda)


def library_paths():
    """Where libsparsetopk_jax.so is looked for: ``$SPARSETOPK_JAX_LIBRARY`` if set,
    else next to the package, then in a source checkout's build trees."""
    return candidate_paths(LIBRARY_NAME, "SPARSETOPK_JAX_LIBRARY")


class _Target(ctypes.Structure):
    """A row of a library's table: sparsetopk::jax::Target (src/jax/ffi_bindings.hpp)."""

    _fields_ = [("name", ctypes.c_char_p), ("handler", ctypes.c_void_p)]


def library_targets(path: Path) -> List[Tuple[str, int]]:
    """The FFI targets of the library at ``path``: (name, handler address) for every
    row of its table, read through its ``sparsetopk_ffi_targets``."""
    library = ctypes.cdll.LoadLibrary(str(path))
    try:
        table = getattr(library, TABLE_FUNCTION)
    except AttributeError as error:
        raise ImportError(f"sparsetopk.jax: {path} does not export {TABLE_FUNCTION} (a library built from an "
                          "older source?); rebuild it with `cmake --build build`") from error
    table.restype = ctypes.c_size_t
    table.argtypes = [ctypes.POINTER(ctypes.POINTER(_Target))]
    rows = ctypes.POINTER(_Target)()
    count = table(ctypes.byref(rows))
    return [(rows[i].name.decode(), rows[i].handler) for i in range(count)]


def _register(path: Path, platform: str) -> None:
    for name, handler in library_targets(path):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(ctypes.c_void_p(handler)), platform=platform)
        # XLA's batch partitioner (see "sharding" below): a call whose frontend attribute num_batch_dims
        # is N runs, on each device, on that device's part of the N leading axes of every operand
        if hasattr(jax.ffi, "register_ffi_target_as_batch_partitionable"):  # absent from older JAX: no partitioning
            jax.ffi.register_ffi_target_as_batch_partitionable(name)


def register_targets() -> None:
    """Loads the library and registers its FFI targets, once per process."""
    global _loaded
    if _loaded:
        return
    paths = library_paths()
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        looked = ", ".join(str(p) for p in paths)
        raise ImportError(f"sparsetopk.jax: cannot find {LIBRARY_NAME} (looked in: {looked}). Build it with "
                          "`cmake --preset release && cmake --build build` (with jax installed in the "
                          "build's Python) or point SPARSETOPK_JAX_LIBRARY at it.")
    _register(path, "cpu")
    _loaded = True
    opt_in = os.environ.get(CUDA_OPT_IN)
    if opt_in == "1":
        _register_cuda_targets(required=True)
    elif CUDA_KERNELS_VERIFIED and opt_in != "0":
        _register_cuda_targets(required=False)


def _register_cuda_targets(required: bool) -> None:
    """The same targets for the CUDA platform, from the table of libsparsetopk_jax_cuda.so. UNVERIFIED:
    these handlers have never run on a GPU, so they are registered only when
    $SPARSETOPK_JAX_CUDA_KERNELS is 1 (before sparsetopk.jax is imported), or, once
    CUDA_KERNELS_VERIFIED is True, wherever the library is found (``required=False``:
    without it, CUDA arrays keep the host fallback)."""
    global cuda_registered
    paths = candidate_paths(CUDA_LIBRARY_NAME, "SPARSETOPK_JAX_CUDA_LIBRARY")
    path = next((p for p in paths if p.is_file()), None)
    if path is None and not required:
        return
    if path is None:
        looked = ", ".join(str(p) for p in paths)
        raise ImportError(f"sparsetopk.jax: {CUDA_OPT_IN}=1 but {CUDA_LIBRARY_NAME} is not found (looked in: "
                          f"{looked}); it is built where CMake finds nvcc, a CUDA torch and jax")
    _register(path, "CUDA")
    cuda_registered = True


# ---- where a call runs: the lowering of every platform ----

class HostFallbackWarning(UserWarning):
    """Given once per process, when a sparsetopk.jax call is first lowered for a GPU
    platform to the host fallback (the CPU target through jax.pure_callback)."""


_host_platforms = set()  # platforms forced to the host fallback: the test hook host_fallback_on
_warned = False  # whether HostFallbackWarning was given in this process


def runs_on_host(platform: str) -> bool:
    """Whether a call lowered for ``platform`` ("cpu", "cuda", "rocm", ...) runs the CPU
    target on the host through a callback: on a GPU platform without registered GPU
    handlers (ROCm never has them, CUDA has them on opt-in only until they are verified)."""
    if platform in _host_platforms:
        return True
    if platform == "cuda":
        return not cuda_registered
    return platform in GPU_PLATFORMS


@contextlib.contextmanager
def host_fallback_on(platform: str):
    """Test hook (tests/python/test_jax_gpu_fallback.py): within the block, calls lowered for
    ``platform`` (e.g. "cpu", where no GPU is) take the GPU platforms' host fallback. The
    compilation caches are cleared on entry and exit, so that nothing compiled with one
    lowering is reused under the other."""
    _host_platforms.add(platform)
    jax.clear_caches()
    try:
        yield
    finally:
        _host_platforms.discard(platform)
        jax.clear_caches()


def _warn_once(target: str, platform: str) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    if platform == "rocm":
        why = "sparsetopk has no ROCm kernels"
    elif CUDA_KERNELS_VERIFIED:
        why = f"{CUDA_LIBRARY_NAME} was not found or {CUDA_OPT_IN}=0 is set"
    else:
        why = (f"sparsetopk's CUDA kernels are UNVERIFIED, never run on a GPU; to use them anyway, set {CUDA_OPT_IN}=1 "
               f"before importing sparsetopk.jax (needs {CUDA_LIBRARY_NAME})")
    warnings.warn(f"sparsetopk.jax: {target} on a {platform} array runs the verified CPU target on the host "
                  "CPU, through jax.pure_callback: every call copies its operands from the device to the host "
                  f"and its results back ({why}). Given once per process; see docs/jax.md, 'GPU arrays'.",
                  HostFallbackWarning, stacklevel=2)


def _on_host(target: str, results: Tuple[jax.ShapeDtypeStruct, ...], attributes: tuple, *arrays):
    """The host side of the fallback: jax.pure_callback hands over the operands on the
    CPU device (and makes it the default device); the CPU target computes the results."""
    return _host_function(target, results, attributes)(*arrays)


@functools.lru_cache(maxsize=None)
def _host_function(target: str, results: Tuple[jax.ShapeDtypeStruct, ...], attributes: tuple):
    """The CPU target as one jitted function per call signature (cheaper per call than an
    eager ffi_call); compiled for the CPU device its operands are on."""
    call = jax.ffi.ffi_call(target, results, vmap_method="broadcast_all")
    return jax.jit(lambda *arrays: call(*arrays, **dict(attributes)))


def lower_target(ctx, operands, target: str, attributes: tuple, platform: str, host: bool = False):
    """The lowering of a call of ``target`` for ``platform``: the custom call itself, or,
    where :func:`runs_on_host` (or ``host``: a target with no GPU handler), a jax.pure_callback
    into the CPU target (the same handler, so the same numbers) with the results of ``ctx.avals_out``."""
    if not (host or runs_on_host(platform)):
        lowering = jax.ffi.ffi_lowering(target, extra_attributes=partitioning_attributes(ctx) or None)
        return lowering(ctx, *operands, **dict(attributes))
    _warn_once(target, platform)
    results = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in ctx.avals_out)
    host = functools.partial(_on_host, target, results, attributes)

    def fallback(*arrays):
        return jax.pure_callback(host, results, *arrays, vmap_method="broadcast_all")

    return mlir.lower_fun(fallback, multiple_results=True)(ctx, *operands)


def _register_lowering(primitive: Primitive, rule) -> None:
    """``rule(ctx, *operands, platform=..., **params)`` for the CPU and GPU platforms by
    name (platform-specific rules take precedence), and as the rule of any other."""
    mlir.register_lowering(primitive, functools.partial(rule, platform=None))
    for platform in ("cpu",) + GPU_PLATFORMS:
        mlir.register_lowering(primitive, functools.partial(rule, platform=platform), platform=platform)


# ---- sharding: the rows stay where they are ----
#
# Every call is row-wise: the leading axes of every operand and result are the rows (all of x's
# leading axes; under vmap one more), and the last axis (x's entries, the state's words) lies within
# a row. So a call partitions along the rows, and each device runs the handler on the rows it holds:
# - the abstract evaluation gives every result the rows' sharding of x (with explicit sharding, the
#   results' type: x's leading axes as x's, the rest replicated);
# - the lowering makes the custom call batch-partitionable: the frontend attribute num_batch_dims,
#   which XLA's batch partitioner (the targets are registered with it) reads, and, under Shardy, a
#   sharding rule "..., ... a -> ... b" whose "..." (the rows) is one factor shared by all operands and
#   results and whose within-row factors need replication;
# - an operand sharded along its last axis (the top-k axis) is gathered along that axis only (by the
#   partitioner; with explicit sharding by whole_rows, where the operators make their rows): the rows
#   stay sharded.
# The host fallback of GPU arrays (a jax.pure_callback) has no such rule: XLA runs it on one device.
# A top-k axis solved where it lies, sharded, is the global operators' axis_name= inside shard_map
# (_global.py): the thresholds' sums cross the devices, not x.

_batch_partitioning = True  # off inside the test hook batch_partitioning_off


@contextlib.contextmanager
def batch_partitioning_off():
    """Test hook (tests/python/test_jax_sharding.py): within the block, calls are lowered without
    the partitioning rules (no num_batch_dims, no sharding rule), as a plain custom call, which XLA
    replicates: every device gathers every operand. The compilation caches are cleared on entry and
    exit, so that nothing compiled one way is reused the other."""
    global _batch_partitioning
    _batch_partitioning = False
    jax.clear_caches()
    try:
        yield
    finally:
        _batch_partitioning = True
        jax.clear_caches()


def _mesh_spec(aval):
    """``aval``'s mesh axes, one entry per axis, or None where its sharding names no mesh (automatic
    sharding outside a mesh's type: XLA's propagation and partitioner decide)."""
    sharding = getattr(aval, "sharding", None)
    if aval.ndim == 0 or not isinstance(sharding, NamedSharding) or sharding.mesh.empty:
        return None
    return tuple(sharding.spec) + (None,) * (aval.ndim - len(sharding.spec))


def whole_rows(x: jax.Array) -> jax.Array:
    """``x`` with its last axis (the top-k axis) whole on every device that holds its rows: where
    explicit sharding splits that axis across devices, resharded, which gathers that axis only;
    otherwise ``x`` itself (under automatic sharding the partitioner makes the same gather).
    (The global operators with axis_name= inside shard_map solve a sharded axis where it lies.)"""
    spec = _mesh_spec(jax.typeof(x))
    if spec is None or spec[-1] is None:
        return x
    return jax.sharding.reshard(x, NamedSharding(jax.typeof(x).sharding.mesh, PartitionSpec(*spec[:-1], None)))


def result_aval(result: jax.core.ShapedArray, x) -> jax.core.ShapedArray:
    """``result`` sharded as the rows of ``x``: its leading axes (x's rows) as x's, its own axes
    replicated; ``result`` itself where x's sharding names no mesh."""
    spec = _mesh_spec(x)
    if spec is None:
        return result
    rows = spec[:-1]
    spec = PartitionSpec(*rows, *(None,) * (result.ndim - len(rows)))
    # x's type otherwise (manual axes under shard_map, memory space): its update keeps what it does not set
    return x.update(shape=result.shape, dtype=result.dtype, weak_type=False,
                    sharding=NamedSharding(x.sharding.mesh, spec))


def partitioning_attributes(ctx) -> dict:
    """The custom call's partitioning rules, as attributes of the op: the number of row axes (x's
    leading axes; every operand and result has them first) and, under Shardy, the sharding rule.
    None with a single row (a 1-d x: nothing to partition), inside batch_partitioning_off, and for
    operands whose rows differ (an error of the caller, which the handler reports)."""
    rows = ctx.avals_in[0].ndim - 1
    if not _batch_partitioning or rows < 1:
        return {}
    batch = ctx.avals_in[0].shape[:rows]
    if any(a.ndim < rows or a.shape[:rows] != batch for a in (*ctx.avals_in, *ctx.avals_out)):
        return {}  # operands of unlike rows: the handler rejects them, naming the buffer
    attributes = {"mhlo.frontend_attributes": mlir.ir_attribute({"num_batch_dims": str(rows)})}
    if jax.config.jax_use_shardy_partitioner:
        if str_to_sdy_sharding_rule is None:
            return {}  # without the rule Shardy replicates the call anyway; say nothing it would misread
        attributes["sdy.sharding_rule"] = _sharding_rule(ctx, rows)
    return attributes


def _sharding_rule(ctx, rows: int):
    """The Shardy rule of a row-wise call: "..." the rows, one letter per axis within a row (distinct
    letters: x's entries and the output's are not the same axis to the solver), all replicated."""
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    within = []

    def mapping(aval) -> str:
        own = [next(letters) for _ in range(aval.ndim - rows)]
        within.extend(own)
        return " ".join(["..."] + own)

    rule = ", ".join(map(mapping, ctx.avals_in)) + " -> " + ", ".join(map(mapping, ctx.avals_out))
    rule = str_to_sdy_sharding_rule(rule, need_replication_factors=tuple(within))
    types = [[mlir.aval_to_ir_type(ctx.module_context, a) for a in avals] for avals in (ctx.avals_in, ctx.avals_out)]
    return sdy_sharding_rule_to_mlir(rule, *types)


# ---- the forward calls: one primitive for every target ----

ffi_p = Primitive("sparsetopk_ffi")
ffi_p.multiple_results = True


def call(target: str, results: Tuple[jax.ShapeDtypeStruct, ...], *operands, **attributes) -> tuple:
    """The custom call ``target`` on ``operands`` with ``attributes`` (the handler's), returning
    arrays of ``results``; all leading axes are rows (one call under vmap too)."""
    results = tuple(jax.core.ShapedArray(r.shape, r.dtype) for r in results)
    return tuple(ffi_p.bind(*operands, target=target, results=results, attributes=tuple(sorted(attributes.items()))))


@functools.partial(jax.jit, static_argnames=("target", "results", "attributes"))
def _apply_call(*operands, target, results, attributes):
    """Outside of jit: the primitive compiled alone, once per parameters and shapes."""
    return ffi_p.bind(*operands, target=target, results=results, attributes=attributes)


def _call_abstract_eval(*operands, target, results, attributes):
    return tuple(result_aval(r, operands[0]) for r in results)


def _call_lowering(ctx, *operands, target, results, attributes, platform):
    return lower_target(ctx, operands, target, attributes, platform)


def _call_batching(operands, axes, *, target, results, attributes):
    """As ffi_call's vmap_method="broadcast_all": the vmapped axis becomes the first of
    every operand (broadcast where absent) and of every result."""
    size = next(a.shape[axis] for a, axis in zip(operands, axes) if axis is not None)
    operands = [batching.bdim_at_front(a, axis, size) for a, axis in zip(operands, axes)]
    results = tuple(jax.core.ShapedArray((size,) + r.shape, r.dtype) for r in results)
    return ffi_p.bind(*operands, target=target, results=results, attributes=attributes), (0,) * len(results)


ffi_p.def_impl(_apply_call)
ffi_p.def_abstract_eval(_call_abstract_eval)
_register_lowering(ffi_p, _call_lowering)
batching.primitive_batchers[ffi_p] = _call_batching


def soft(x: jax.Array, operator: str, k: int, l: float, p: float, solver: str, num_iter: int) -> jax.Array:
    """The soft operator (``operator``: "mask" or "mag") on the rows of x."""
    return call(f"sparsetopk_soft_topk_{operator}", (jax.ShapeDtypeStruct(x.shape, x.dtype),), x,
                **_soft_attributes(k, l, p, solver, num_iter))[0]


def soft_with_state(x: jax.Array, operator: str, k: int, l: float, p: float, solver: str,
                    num_iter: int) -> Tuple[jax.Array, jax.Array]:
    """``(out, state)``: the soft operator and the state of its derivatives, uint32 of
    shape ``x.shape[:-1] + (STATE_WORDS,)`` (opaque: the rows' RowStates)."""
    shapes = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(x.shape[:-1] + (STATE_WORDS,), np.uint32))
    return call(f"sparsetopk_soft_topk_{operator}_with_state", shapes, x, **_soft_attributes(k, l, p, solver, num_iter))


def hard(x: jax.Array, operator: str, k: int) -> jax.Array:
    """The hard operator on the rows of x."""
    return call(f"sparsetopk_hard_topk_{operator}", (jax.ShapeDtypeStruct(x.shape, x.dtype),), x, k=np.int64(k))[0]


def _soft_attributes(k: int, l: float, p: float, solver: str, num_iter: int) -> dict:
    return dict(k=np.int64(k), l=np.float64(l), p=np.float64(p), solver=solver, num_iter=np.int64(num_iter))


# ---- the derivatives: a primitive over the core's JVP and VJP ----

def second_derivatives_error(operator: str, p: float) -> NotImplementedError:
    return NotImplementedError(f"sparsetopk.jax.soft_topk_{operator}: second derivatives (e.g. jax.hessian) are "
                               f"available for p = 2 only, where the operator is piecewise linear; got p = {p!r}")


jacobian_product_p = Primitive("sparsetopk_jacobian_product")


def jacobian_product(x: jax.Array, state: jax.Array, v: jax.Array, operator: str, product: str, l: float,
                     p: float) -> jax.Array:
    """``J v`` (``product="jvp"``) or ``J^T v`` (``"vjp"``) of the soft operator at the
    forward pass on the rows x that returned ``state``, with its l and p (2 for Dykstra).
    One custom call, ``sparsetopk_soft_topk_{operator}_{product}``; linear in v."""
    return jacobian_product_p.bind(x, state, v, operator=operator, product=product, l=float(l), p=float(p))


@functools.partial(jax.jit, static_argnames=("operator", "product", "l", "p"))
def _apply(x, state, v, *, operator, product, l, p):
    """Outside of jit (eager jax.jvp, jax.vjp): the primitive compiled alone, once per parameters."""
    return jacobian_product_p.bind(x, state, v, operator=operator, product=product, l=l, p=p)


def _abstract_eval(x, state, v, *, operator, product, l, p):
    return result_aval(jax.core.ShapedArray(v.shape, v.dtype), x)


def _lowering(ctx, x, state, v, *, operator, product, l, p, platform):
    attributes = (("l", np.float64(l)), ("p", np.float64(p)))
    return lower_target(ctx, (x, state, v), f"sparsetopk_soft_topk_{operator}_{product}", attributes, platform)


def _batching(arguments, axes, **params):
    """Rows are the leading axes: the vmapped axis becomes the first (an operand
    without it, such as x under jax.jacrev, is broadcast)."""
    size = next(a.shape[axis] for a, axis in zip(arguments, axes) if axis is not None)
    x, state, v = (batching.bdim_at_front(a, axis, size) for a, axis in zip(arguments, axes))
    return jacobian_product_p.bind(x, state, v, **params), 0


def _transpose(cotangent, x, state, v, *, operator, product, l, p):
    """Linear in v only: (J v)^T is J^T applied to the cotangent, and the reverse."""
    assert ad.is_undefined_primal(v) and not ad.is_undefined_primal(x) and not ad.is_undefined_primal(state)
    if type(cotangent) is ad.Zero:
        return None, None, None
    other = "vjp" if product == "jvp" else "jvp"
    return None, None, jacobian_product(x, state, cotangent, operator, other, l, p)


def _jvp(primals, tangents, *, operator, product, l, p):
    """Second derivatives. In v the product is linear. In x: for p = 2 the band's c_i = 1/l
    are constant and x enters through comparisons only, so the derivative is zero (almost
    everywhere, exactly); for other p the c_i depend on x, which raises (never a silent zero)."""
    (x, state, v), (d_x, _, d_v) = primals, tangents
    if type(d_x) is not ad.Zero and p != 2.0:
        raise second_derivatives_error(operator, p)
    params = dict(operator=operator, product=product, l=l, p=p)
    out = jacobian_product_p.bind(x, state, v, **params)
    d_out = d_v if type(d_v) is ad.Zero else jacobian_product_p.bind(x, state, d_v, **params)
    return out, d_out


jacobian_product_p.def_impl(_apply)
jacobian_product_p.def_abstract_eval(_abstract_eval)
_register_lowering(jacobian_product_p, _lowering)
batching.primitive_batchers[jacobian_product_p] = _batching
ad.primitive_transposes[jacobian_product_p] = _transpose
ad.primitive_jvps[jacobian_product_p] = _jvp


# ---- the top-k sum and loss: one value per row ----

def topk_sum(x: jax.Array, k: int, l: float, p: float) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """``(value, mask, state)`` on the rows of x: topk_sum, its gradient (the soft mask)
    and the mask's state (for its Jacobian, the Hessian of topk_sum)."""
    shapes = (jax.ShapeDtypeStruct(x.shape[:-1], x.dtype), jax.ShapeDtypeStruct(x.shape, x.dtype),
              jax.ShapeDtypeStruct(x.shape[:-1] + (STATE_WORDS,), np.uint32))
    return call("sparsetopk_topk_sum", shapes, x, k=np.int64(k), l=np.float64(l), p=np.float64(p))


def topk_loss(x: jax.Array, target: jax.Array, k: int, l: float, p: float) -> Tuple[jax.Array, jax.Array]:
    """``(loss, grad)`` on the rows of x with one label per row (int32 or int64)."""
    shapes = (jax.ShapeDtypeStruct(x.shape[:-1], x.dtype), jax.ShapeDtypeStruct(x.shape, x.dtype))
    return call("sparsetopk_topk_loss", shapes, x, target, k=np.int64(k), l=np.float64(l), p=np.float64(p))
