"""Finds and loads libsparsetopk_torch.so, which registers torch.ops.sparsetopk.*."""

import os
from pathlib import Path
from typing import List

import torch

LIBRARY_NAME = "libsparsetopk_torch.so"


def candidate_paths() -> List[Path]:
    """Where the library is looked for, in order.

    ``$SPARSETOPK_LIBRARY`` if set (and then only there); otherwise next to this
    package, then in the build trees of the CMake presets of a source checkout
    (``build/lib`` for ``release``, ``build-debug/lib`` for ``debug``).
    """
    override = os.environ.get("SPARSETOPK_LIBRARY")
    if override:
        return [Path(override)]
    package = Path(__file__).resolve().parent
    checkout = package.parent.parent
    return [
        package / LIBRARY_NAME,
        checkout / "build" / "lib" / LIBRARY_NAME,
        checkout / "build-debug" / "lib" / LIBRARY_NAME,
    ]


def _already_loaded() -> bool:
    try:
        torch.ops.sparsetopk.soft_topk_mask
    except (AttributeError, RuntimeError):
        return False
    return True


def load_library() -> None:
    """Loads the operator library once per process (a no-op if already loaded)."""
    if _already_loaded():
        return
    paths = candidate_paths()
    for path in paths:
        if path.is_file():
            torch.ops.load_library(str(path))
            return
    looked = ", ".join(str(p) for p in paths)
    raise ImportError(
        f"sparsetopk: cannot find {LIBRARY_NAME} (looked in: {looked}). Build it with "
        "`cmake --preset release && cmake --build build` or point SPARSETOPK_LIBRARY at it."
    )
