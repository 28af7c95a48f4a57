"""Finds the compiled libraries of the package, and loads libsparsetopk_torch.so,
which registers torch.ops.sparsetopk.*.

torch is imported by :func:`load_library` only. The search path itself is in
``_paths.py``, which sparsetopk.jax uses to find libsparsetopk_jax.so without
importing this module.
"""

from pathlib import Path
from typing import List

from . import _paths

LIBRARY_NAME = "libsparsetopk_torch.so"
# The CUDA kernels (UNVERIFIED, opt-in: docs/gpu.md), built beside the main
# library where CMake found nvcc and a CUDA torch; it links libtorch_cuda.so, so
# it is loaded only when torch is a CUDA build.
CUDA_LIBRARY_NAME = "libsparsetopk_torch_cuda.so"


def candidate_paths(name: str = LIBRARY_NAME, override_variable: str = "SPARSETOPK_LIBRARY") -> List[Path]:
    """Where the library file ``name`` is looked for, in order.

    ``$SPARSETOPK_LIBRARY`` (``override_variable``) if set, and then only there;
    otherwise next to this package, then in the build trees of the CMake presets
    of a source checkout (``build/lib`` for ``release``, ``build-debug/lib`` for
    ``debug``).
    """
    return _paths.candidate_paths(name, override_variable)


def _has_op(name: str) -> bool:
    """Whether torch.ops.sparsetopk.<name> is registered."""
    import torch

    try:
        getattr(torch.ops.sparsetopk, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _already_loaded() -> bool:
    return _has_op("soft_topk_mask")


def _check_built_torch(path: Path) -> None:
    """A wheel (pip install / pip wheel) records the torch it was built against in
    ``_build_info.py``; a library built for another torch major.minor would fail to
    load with undefined C++ symbols, so say so plainly instead."""
    import torch

    if path.parent != Path(__file__).resolve().parent:
        return
    try:
        from ._build_info import TORCH_VERSION as built
    except ImportError:  # a source checkout: no wheel build info
        return
    running = torch.__version__.split("+")[0]
    if built.split(".")[:2] != running.split(".")[:2]:
        raise ImportError(
            f"sparsetopk: {path} was built against torch {built}, but torch {torch.__version__} "
            "is imported; the C++ ABI differs between torch minor versions. Rebuild sparsetopk "
            "in this environment (pip install --no-build-isolation --force-reinstall <source>)."
        )


def _load_cuda_library(path: Path) -> None:
    """Loads the CUDA kernels' library beside the main one, if it is there and torch is a CUDA build."""
    import torch

    if torch.version.cuda is not None and path.is_file():
        torch.ops.load_library(str(path))


def load_library() -> None:
    """Loads the operator library once per process (a no-op if already loaded)."""
    import torch

    if _already_loaded():
        return
    paths = candidate_paths()
    for path in paths:
        if path.is_file():
            _check_built_torch(path)
            torch.ops.load_library(str(path))
            _load_cuda_library(path.parent / CUDA_LIBRARY_NAME)
            return
    looked = ", ".join(str(p) for p in paths)
    raise ImportError(
        f"sparsetopk: cannot find {LIBRARY_NAME} (looked in: {looked}). Build it with "
        "`cmake --preset release && cmake --build build` or point SPARSETOPK_LIBRARY at it."
    )


def cuda_kernels_available() -> bool:
    """Whether the CUDA kernels' library is loaded (torch.ops.sparsetopk._use_cuda_kernels exists)."""
    return _has_op("_use_cuda_kernels")


def use_cuda_kernels(enabled: bool = True) -> bool:
    """Turns the hand-written CUDA kernels on (or off) for every op on CUDA tensors; returns the
    previous setting. UNVERIFIED: they have never run on a GPU (docs/gpu.md); off by default, when
    CUDA tensors take the verified device-generic path. A single soft forward can opt in with
    ``solver="cuda_kernel"`` instead."""
    import torch

    if not cuda_kernels_available():
        raise RuntimeError(
            f"sparsetopk: the CUDA kernels are not loaded ({CUDA_LIBRARY_NAME} was not built beside "
            f"{LIBRARY_NAME}, or torch {torch.__version__} is not a CUDA build)"
        )
    return bool(torch.ops.sparsetopk._use_cuda_kernels(bool(enabled)))
