"""The XLA FFI custom calls of sparsetopk.jax: loads libsparsetopk_jax.so, registers
its handlers (src/jax/ffi_handlers.cpp) for the CPU platform and calls them.

Every call takes rows along the last axis of ``x`` (float32 or float64) and
treats all leading axes as the batch: one custom call for the whole array, and
under ``jax.vmap`` still one (``vmap_method="broadcast_all"``: the vmapped axis
is one more leading axis).
"""

import ctypes
import os
from typing import Tuple

import jax
import numpy as np

from .._library import candidate_paths

LIBRARY_NAME = "libsparsetopk_jax.so"
CUDA_LIBRARY_NAME = "libsparsetopk_jax_cuda.so"  # UNVERIFIED CUDA handlers, opt-in (docs/jax.md)
CUDA_OPT_IN = "SPARSETOPK_JAX_CUDA_KERNELS"
_TARGETS = (
    "sparsetopk_soft_topk_mask",
    "sparsetopk_soft_topk_mag",
    "sparsetopk_soft_topk_mask_with_state",
    "sparsetopk_soft_topk_mag_with_state",
    "sparsetopk_hard_topk_mask",
    "sparsetopk_hard_topk_mag",
)
_loaded = False
cuda_registered = False  # whether the CUDA handlers were registered (opt-in)


def library_paths():
    """Where libsparsetopk_jax.so is looked for: ``$SPARSETOPK_JAX_LIBRARY`` if set,
    else next to the package, then in a source checkout's build trees."""
    return candidate_paths(LIBRARY_NAME, "SPARSETOPK_JAX_LIBRARY")


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
    library = ctypes.cdll.LoadLibrary(str(path))
    for target in _TARGETS:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform="cpu")
    _loaded = True
    if os.environ.get(CUDA_OPT_IN) == "1":
        _register_cuda_targets()


def _register_cuda_targets() -> None:
    """The same targets for the CUDA platform, from libsparsetopk_jax_cuda.so. UNVERIFIED:
    these handlers have never run on a GPU, so they are registered only when
    $SPARSETOPK_JAX_CUDA_KERNELS is 1 (before sparsetopk.jax is imported)."""
    global cuda_registered
    paths = candidate_paths(CUDA_LIBRARY_NAME, "SPARSETOPK_JAX_CUDA_LIBRARY")
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        looked = ", ".join(str(p) for p in paths)
        raise ImportError(f"sparsetopk.jax: {CUDA_OPT_IN}=1 but {CUDA_LIBRARY_NAME} is not found (looked in: "
                          f"{looked}); it is built where CMake finds nvcc, a CUDA torch and jax")
    library = ctypes.cdll.LoadLibrary(str(path))
    for target in _TARGETS:
        handler = getattr(library, "sparsetopk_cuda_" + target[len("sparsetopk_"):])
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="CUDA")
    cuda_registered = True


def soft(x: jax.Array, operator: str, k: int, l: float, p: float, solver: str, num_iter: int) -> jax.Array:
    """The soft operator (``operator``: "mask" or "mag") on the rows of x."""
    call = jax.ffi.ffi_call(f"sparsetopk_soft_topk_{operator}", jax.ShapeDtypeStruct(x.shape, x.dtype),
                            vmap_method="broadcast_all")
    return call(x, **_soft_attributes(k, l, p, solver, num_iter))


def soft_with_state(x: jax.Array, operator: str, k: int, l: float, p: float, solver: str,
                    num_iter: int) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """``(out, c, row_state)``: the soft operator and the state of its derivatives, in
    x's dtype (the dense layout of the core's ActiveBlocks, see ffi_handlers.cpp)."""
    shapes = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(x.shape, x.dtype),
              jax.ShapeDtypeStruct(x.shape[:-1] + (3,), x.dtype))
    call = jax.ffi.ffi_call(f"sparsetopk_soft_topk_{operator}_with_state", shapes, vmap_method="broadcast_all")
    return tuple(call(x, **_soft_attributes(k, l, p, solver, num_iter)))


def hard(x: jax.Array, operator: str, k: int) -> jax.Array:
    """The hard operator on the rows of x."""
    call = jax.ffi.ffi_call(f"sparsetopk_hard_topk_{operator}", jax.ShapeDtypeStruct(x.shape, x.dtype),
                            vmap_method="broadcast_all")
    return call(x, k=np.int64(k))


def _soft_attributes(k: int, l: float, p: float, solver: str, num_iter: int) -> dict:
    return dict(k=np.int64(k), l=np.float64(l), p=np.float64(p), solver=solver, num_iter=np.int64(num_iter))
