"""sparsetopk for JAX: the exact C++ core as XLA FFI custom calls.

Functions: :func:`soft_topk_mask`, :func:`soft_topk_mag` ``(x, k, l=0.1,
p=4/3, axis=-1)``, :func:`hard_topk_mask`, :func:`hard_topk_mag` ``(x, k,
axis=-1)``, the top-k sum and loss :func:`topk_sum` ``(x, k, l, p, axis)`` and
:func:`topk_loss` ``(scores, target, k, l, p, axis)``, the global operators
:func:`soft_topk_mag_global`, :func:`soft_topk_mask_global` ``(arrays, k, l=0.1, p=4/3, *,
axis_name=None)``, :func:`hard_topk_mag_global`, :func:`hard_topk_mask_global` ``(arrays, k, *,
axis_name=None)`` (one top-k over a list of arrays; with ``axis_name`` inside ``jax.shard_map``,
over every device's shards), and the names of the paper's JAX reference implementation:
:func:`sparse_soft_topk_mask_pav`, :func:`sparse_soft_topk_mag_pav`,
:func:`sparse_soft_topk_mask_dykstra`, :func:`sparse_soft_topk_mag_dykstra`
(``hard_topk_mask``/``hard_topk_mag`` are shared).

Each function is one custom call for the whole array (all leading axes), also
under ``jax.vmap``; it works under ``jax.jit`` with ``k``, ``l``, ``p`` and
``axis`` static, and with ``jax.jvp``/``grad``/``vjp``/``jacfwd``/``jacrev``.
Under ``jax.jit``, an input sharded along its batch (the axes other than
``axis``) stays sharded: each device runs the call on its own rows; a sharded
top-k ``axis`` is gathered along that axis only (docs/jax.md, "Sharding").
float32, float64 (``jax_enable_x64``); float16 and bfloat16 in float32. The
verified target is the CPU: on a GPU array (CUDA, ROCm) each call runs the CPU
target on the host, with copies both ways, and the first one gives a
:class:`HostFallbackWarning`; ``SPARSETOPK_JAX_CUDA_KERNELS=1`` opts into the
UNVERIFIED CUDA kernels instead. This module does not import torch. Details
and differences from the reference: docs/jax.md.

Example:
    >>> import jax.numpy as jnp
    >>> from sparsetopk.jax import soft_topk_mask
    >>> soft_topk_mask(jnp.array([-5., -2., 3., 1.], dtype=jnp.float32), k=2, l=0.01)
    Array([0., 0., 1., 1.], dtype=float32)
"""

from . import _ffi

_ffi.register_targets()

from ._ffi import HostFallbackWarning  # noqa: E402
from ._operators import hard_topk_mag, hard_topk_mask, soft_topk_mag, soft_topk_mask, topk_loss, topk_sum  # noqa: E402
from ._global import (  # noqa: E402
    hard_topk_mag_global,
    hard_topk_mask_global,
    soft_topk_mag_global,
    soft_topk_mask_global,
)
from ._reference import (  # noqa: E402
    sparse_soft_topk_mag_dykstra,
    sparse_soft_topk_mag_pav,
    sparse_soft_topk_mask_dykstra,
    sparse_soft_topk_mask_pav,
)

__all__ = [
    "soft_topk_mask",
    "soft_topk_mag",
    "hard_topk_mask",
    "hard_topk_mag",
    "topk_sum",
    "topk_loss",
    "sparse_soft_topk_mask_pav",
    "sparse_soft_topk_mag_pav",
    "sparse_soft_topk_mask_dykstra",
    "sparse_soft_topk_mag_dykstra",
    "soft_topk_mag_global",
    "soft_topk_mask_global",
    "hard_topk_mag_global",
    "hard_topk_mask_global",
    "HostFallbackWarning",
]
