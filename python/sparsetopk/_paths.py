"""Where the package's compiled libraries are looked for. Imports no framework:
the PyTorch part (``_library.py``) and :mod:`sparsetopk.jax` both use it."""

import os
from pathlib import Path
from typing import List


def candidate_paths(name: str, override_variable: str) -> List[Path]:
    """Where the library file ``name`` is looked for, in order.

    ``$<override_variable>`` if set, and then only there; otherwise next to this
    package, then in the build trees of the CMake presets of a source checkout
    (``build/lib`` for ``release``, ``build-debug/lib`` for ``debug``).
    """
    override = os.environ.get(override_variable)
    if override:
        return [Path(override)]
    package = Path(__file__).resolve().parent
    checkout = package.parent.parent
    return [
        package / name,
        checkout / "build" / "lib" / name,
        checkout / "build-debug" / "lib" / name,
    ]
