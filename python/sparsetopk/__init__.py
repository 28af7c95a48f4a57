"""sparsetopk: fast, differentiable and sparse top-k operators for PyTorch.

Importing the package loads the compiled operator library (libsparsetopk_torch.so,
built by CMake; see ``sparsetopk._library.candidate_paths`` and the
``SPARSETOPK_LIBRARY`` environment variable), which registers
``torch.ops.sparsetopk.{soft_topk_mask, soft_topk_mag, hard_topk_mask, hard_topk_mag}``.

Functions: :func:`soft_topk_mask`, :func:`soft_topk_mag`, :func:`hard_topk_mask`,
:func:`hard_topk_mag`. Modules: :class:`SoftTopKMask`, :class:`SoftTopKMagnitude`,
:class:`SparseLinear`, :class:`SoftTopKRouter`.

Example:
    >>> import torch, sparsetopk
    >>> x = torch.tensor([-5., -2., 3., 1.])
    >>> sparsetopk.soft_topk_mask(x, k=2, l=0.01)
    tensor([0., 0., 1., 1.])
"""

from ._library import cuda_kernels_available, load_library, use_cuda_kernels

load_library()

from . import _registration  # noqa: E402,F401  (fake kernels, vmap rules, torch.func autograd)

from .functional import hard_topk_mag, hard_topk_mask, soft_topk_mag, soft_topk_mask  # noqa: E402
from .nn import RouterOutput, SoftTopKMagnitude, SoftTopKMask, SoftTopKRouter, SparseLinear  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "soft_topk_mask",
    "soft_topk_mag",
    "hard_topk_mask",
    "hard_topk_mag",
    "SoftTopKMask",
    "SoftTopKMagnitude",
    "SparseLinear",
    "SoftTopKRouter",
    "RouterOutput",
    "use_cuda_kernels",
    "cuda_kernels_available",
]
