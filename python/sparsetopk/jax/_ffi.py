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
"""

import ctypes
import functools
import os
from pathlib import Path
from typing import List, Tuple

import jax
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from .._paths import candidate_paths

LIBRARY_NAME = "libsparsetopk_jax.so"
CUDA_LIBRARY_NAME = "libsparsetopk_jax_cuda.so"  # UNVERIFIED CUDA handlers, opt-in (docs/jax.md)
CUDA_OPT_IN = "SPARSETOPK_JAX_CUDA_KERNELS"
STATE_WORDS = 22  # uint32 words of one row's state: a RowState, 11 doubles (RowState::size)
TABLE_FUNCTION = "sparsetopk_ffi_targets"  # exported by both libraries (src/jax/ffi_bindings.hpp)
_loaded = False
cuda_registered = False  # whether the CUDA handlers were registered (opt-in)


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
    if os.environ.get(CUDA_OPT_IN) == "1":
        _register_cuda_targets()


def _register_cuda_targets() -> None:
    """The same targets for the CUDA platform, from the table of libsparsetopk_jax_cuda.so. UNVERIFIED:
    these handlers have never run on a GPU, so they are registered only when
    $SPARSETOPK_JAX_CUDA_KERNELS is 1 (before sparsetopk.jax is imported)."""
    global cuda_registered
    paths = candidate_paths(CUDA_LIBRARY_NAME, "SPARSETOPK_JAX_CUDA_LIBRARY")
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        looked = ", ".join(str(p) for p in paths)
        raise ImportError(f"sparsetopk.jax: {CUDA_OPT_IN}=1 but {CUDA_LIBRARY_NAME} is not found (looked in: "
                          f"{looked}); it is built where CMake finds nvcc, a CUDA torch and jax")
    _register(path, "CUDA")
    cuda_registered = True


# ---- the forward calls ----

def soft(x: jax.Array, operator: str, k: int, l: float, p: float, solver: str, num_iter: int) -> jax.Array:
    """The soft operator (``operator``: "mask" or "mag") on the rows of x."""
    call = jax.ffi.ffi_call(f"sparsetopk_soft_topk_{operator}", jax.ShapeDtypeStruct(x.shape, x.dtype),
                            vmap_method="broadcast_all")
    return call(x, **_soft_attributes(k, l, p, solver, num_iter))


def soft_with_state(x: jax.Array, operator: str, k: int, l: float, p: float, solver: str,
                    num_iter: int) -> Tuple[jax.Array, jax.Array]:
    """``(out, state)``: the soft operator and the state of its derivatives, uint32 of
    shape ``x.shape[:-1] + (STATE_WORDS,)`` (opaque: the rows' RowStates)."""
    shapes = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(x.shape[:-1] + (STATE_WORDS,), np.uint32))
    call = jax.ffi.ffi_call(f"sparsetopk_soft_topk_{operator}_with_state", shapes, vmap_method="broadcast_all")
    return tuple(call(x, **_soft_attributes(k, l, p, solver, num_iter)))


def hard(x: jax.Array, operator: str, k: int) -> jax.Array:
    """The hard operator on the rows of x."""
    call = jax.ffi.ffi_call(f"sparsetopk_hard_topk_{operator}", jax.ShapeDtypeStruct(x.shape, x.dtype),
                            vmap_method="broadcast_all")
    return call(x, k=np.int64(k))


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
    return jax.core.ShapedArray(v.shape, v.dtype)


def _lowering(ctx, x, state, v, *, operator, product, l, p):
    call = jax.ffi.ffi_lowering(f"sparsetopk_soft_topk_{operator}_{product}")
    return call(ctx, x, state, v, l=np.float64(l), p=np.float64(p))


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
mlir.register_lowering(jacobian_product_p, _lowering)
batching.primitive_batchers[jacobian_product_p] = _batching
ad.primitive_transposes[jacobian_product_p] = _transpose
ad.primitive_jvps[jacobian_product_p] = _jvp


# ---- the top-k sum and loss: one value per row ----

def topk_sum(x: jax.Array, k: int, l: float, p: float) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """``(value, mask, state)`` on the rows of x: topk_sum, its gradient (the soft mask)
    and the mask's state (for its Jacobian, the Hessian of topk_sum)."""
    shapes = (jax.ShapeDtypeStruct(x.shape[:-1], x.dtype), jax.ShapeDtypeStruct(x.shape, x.dtype),
              jax.ShapeDtypeStruct(x.shape[:-1] + (STATE_WORDS,), np.uint32))
    call = jax.ffi.ffi_call("sparsetopk_topk_sum", shapes, vmap_method="broadcast_all")
    return tuple(call(x, k=np.int64(k), l=np.float64(l), p=np.float64(p)))


def topk_loss(x: jax.Array, target: jax.Array, k: int, l: float, p: float) -> Tuple[jax.Array, jax.Array]:
    """``(loss, grad)`` on the rows of x with one label per row (int32 or int64)."""
    shapes = (jax.ShapeDtypeStruct(x.shape[:-1], x.dtype), jax.ShapeDtypeStruct(x.shape, x.dtype))
    call = jax.ffi.ffi_call("sparsetopk_topk_loss", shapes, vmap_method="broadcast_all")
    return tuple(call(x, target, k=np.int64(k), l=np.float64(l), p=np.float64(p)))
