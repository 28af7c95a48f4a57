"""sparsetopk: fast, differentiable and sparse top-k operators for PyTorch and JAX.

PyTorch: the functions :func:`soft_topk_mask`, :func:`soft_topk_mag`,
:func:`hard_topk_mask`, :func:`hard_topk_mag`, the top-k sum and loss
:func:`topk_sum`, :func:`topk_loss` and the modules :class:`TopKLoss`,
:class:`SoftTopKMask`, :class:`SoftTopKMagnitude`, :class:`SparseLinear`,
:class:`SoftTopKRouter`, over ``torch.ops.sparsetopk.*``. They load the
compiled operator library (libsparsetopk_torch.so; see
``sparsetopk._library.candidate_paths`` and the ``SPARSETOPK_LIBRARY``
environment variable), which registers the ops.

JAX: :mod:`sparsetopk.jax` (the same operators as XLA FFI custom calls).

Importing this package imports neither framework by itself, so that each part
works without the other installed: the PyTorch part is loaded on first use of
one of its names, or at once when torch is already imported (then
``torch.ops.sparsetopk.*`` exist as soon as ``import sparsetopk`` returns).

Example:
    >>> import torch, sparsetopk
    >>> x = torch.tensor([-5., -2., 3., 1.])
    >>> sparsetopk.soft_topk_mask(x, k=2, l=0.01)
    tensor([0., 0., 1., 1.])
"""

import importlib
import sys
from typing import Any

from ._ops import OPERATORS as _OPERATORS

__version__ = "0.1.0"

# The PyTorch API: name -> the submodule defining it (the operators' functions: the table of _ops.py).
_TORCH_API = {
    **{op.name: "functional" for op in _OPERATORS},
    "topk_sum": "functional",
    "topk_loss": "functional",
    "soft_topk_mask_global": "_global",
    "soft_topk_mag_global": "_global",
    "hard_topk_mask_global": "_global",
    "hard_topk_mag_global": "_global",
    "TopKLoss": "nn",
    "SoftTopKMask": "nn",
    "SoftTopKMagnitude": "nn",
    "SparseLinear": "nn",
    "SoftTopKRouter": "nn",
    "RouterOutput": "nn",
    "use_cuda_kernels": "_library",
    "cuda_kernels_available": "_library",
}

__all__ = list(_TORCH_API)


def __getattr__(name: str) -> Any:
    module = _TORCH_API.get(name)
    if module is None:
        raise AttributeError(f"module 'sparsetopk' has no attribute {name!r}")
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as error:
        raise ImportError(f"sparsetopk.{name} is part of the PyTorch API, which needs torch (pip install "
                          "torch); the JAX operators are in sparsetopk.jax") from error
    importlib.import_module(".nn", __name__)  # loads the library and registers the Python side, once
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(list(globals()) + __all__)


if "torch" in sys.modules:
    from . import nn as _nn  # noqa: F401  (loads the library, registers the ops and their Python side)
