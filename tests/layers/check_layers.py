#!/usr/bin/env python3
"""Checks that the layers point one way: no #include or Python import reaches a
layer above or beside the file's own.

    check_layers.py [ROOT]      (default: the checkout holding this file)

The layers (CMakeLists.txt), each allowed the ones listed under DEPENDS:

    api         include/sparsetopk (but torch.hpp)
    row         src/core/row (the per-row functions)         -> api
    core        src/core (but row/), python/sparsetopk/_paths.py
                                                             -> row, api
    cuda        src/cuda                                     -> row, api
    torch       src/torch (but cuda/), include/sparsetopk/torch.hpp,
                python/sparsetopk/*.py                       -> core, row, api
    torch-cuda  src/torch/cuda                               -> torch, cuda, core, row, api
    jax         src/jax (but cuda_*), python/sparsetopk/jax  -> core, row, api
    jax-cuda    src/jax/cuda_*                               -> jax, cuda, core, row, api
    cli         src/cli                                      -> core, api
    top         apps, bench, examples, fuzz                  -> everything above

So the per-row functions reach nothing of the core's CPU loops (threads,
workspaces, exceptions), and the CUDA kernels see the per-row functions and
the public headers, not the core's CPU internals.

torch and jax are siblings: neither may use the other. Frameworks count as
layers too: <torch/...>, <ATen/...>, <c10/...> and `import torch` are the torch
layer's; "xla/..." and `import jax` the JAX layer's; <cuda_runtime*.h>,
<cub/...> the CUDA layer's. Tests sit at the layer they test (tests/core,
tests/support, tests/consumer: core; tests/cuda: cuda; tests/torch: torch;
tests/cli: cli), and nothing outside tests/ may include a file of tests/.

Quoted includes resolve as the compiler does: next to the including file, then
in the include directories the CMake targets give (INCLUDE_ROOTS). Prints one
line per violation and exits 1 if there is any, 0 otherwise.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Optional, Set

DEPENDS: Dict[str, Set[str]] = {
    "api": set(),
    "row": {"api"},
    "core": {"row", "api"},
    "cuda": {"row", "api"},
    "torch": {"core", "row", "api"},
    "torch-cuda": {"torch", "cuda", "core", "row", "api"},
    "jax": {"core", "row", "api"},
    "jax-cuda": {"jax", "cuda", "core", "row", "api"},
    "cli": {"core", "api"},
    "top": {"api", "row", "core", "cuda", "torch", "torch-cuda", "jax", "jax-cuda", "cli"},
}

# Where a quoted or bracketed include is looked for after the including file's
# folder: the include directories of the CMake targets (sparsetopk: include;
# sparsetopk_row: src/core/row; sparsetopk_core_internal: src/core (the core's
# own tests); sparsetopk_cuda_row: src/cuda;
# sparsetopk_torch_internal: src/torch; sparsetopk_cli_parse: src/cli; the
# tests' support folder; apps' own root).
INCLUDE_ROOTS = ["include", "src/core/row", "src/core", "src/cuda", "src/torch", "src/cli", "tests/support", "apps"]

# External headers and modules, by their first path component, and the layer that owns them.
FRAMEWORK_HEADERS = {
    "torch": "torch", "ATen": "torch", "c10": "torch", "caffe2": "torch",
    "xla": "jax",
    "cub": "cuda", "thrust": "cuda", "cuda": "cuda", "cuda_runtime.h": "cuda", "cuda_runtime_api.h": "cuda",
    "cuda.h": "cuda", "cooperative_groups.h": "cuda",
}
FRAMEWORK_MODULES = {"torch": "torch", "jax": "jax", "jaxlib": "jax"}

CXX_SUFFIXES = {".cpp", ".hpp", ".h", ".cu", ".cuh", ".cc"}
SCANNED = ["src", "include", "tests", "apps", "bench", "examples", "fuzz", "python/sparsetopk"]
SKIPPED_DIRS = {".venv", "__pycache__", "corpus", ".git"}

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.MULTILINE)


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def layer_of(path: str) -> Optional[str]:
    """The layer of a file (a path relative to the root, with /), or None where none applies."""
    p = PurePosixPath(path)
    parts = p.parts
    if path == "include/sparsetopk/torch.hpp":
        return "torch"
    if parts[:2] == ("include", "sparsetopk"):
        return "api"
    if parts[:3] == ("src", "core", "row"):
        return "row"
    if parts[:2] == ("src", "core"):
        return "core"
    if parts[:2] == ("src", "cuda"):
        return "cuda"
    if parts[:3] == ("src", "torch", "cuda"):
        return "torch-cuda"
    if parts[:2] == ("src", "torch"):
        return "torch"
    if parts[:2] == ("src", "jax"):
        return "jax-cuda" if p.name.startswith("cuda") else "jax"
    if parts[:2] == ("src", "cli"):
        return "cli"
    if parts[:2] == ("python", "sparsetopk"):
        if len(parts) > 3 and parts[2] == "jax":
            return "jax"
        if p.name == "_paths.py":  # finds the compiled libraries; imports no framework
            return "core"
        return "torch"
    if parts[:1] == ("tests",) and len(parts) > 2:
        return {"core": "core", "support": "core", "consumer": "api", "cuda": "cuda", "torch": "torch",
                "cli": "cli"}.get(parts[1])
    if parts[:1] in {("apps",), ("bench",), ("examples",), ("fuzz",)}:
        return "top"
    return None


def is_test(path: str) -> bool:
    return path.startswith("tests/")


def _files(root: Path) -> Iterable[Path]:
    for top in SCANNED:
        base = root / top
        if not base.is_dir():
            continue
        stack = [base]
        while stack:
            folder = stack.pop()
            for entry in sorted(folder.iterdir()):
                if entry.is_dir():
                    if entry.name not in SKIPPED_DIRS and not entry.name.startswith("build"):
                        stack.append(entry)
                elif entry.suffix in CXX_SUFFIXES or (entry.suffix == ".py" and top == "python/sparsetopk"):
                    yield entry


def _relative(root: Path, path: Path) -> Optional[str]:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def resolve_include(root: Path, including: Path, name: str, quoted: bool) -> Optional[str]:
    """The project file an include names (relative path), or None for an external header."""
    candidates = [including.parent / name] if quoted else []
    candidates += [root / include_root / name for include_root in INCLUDE_ROOTS]
    for candidate in candidates:
        if candidate.is_file():
            return _relative(root, candidate)
    return None


def _allowed(layer: str, target: str) -> bool:
    return target == layer or target in DEPENDS[layer]


def _complaint(layer: str, target: str) -> str:
    allowed = ", ".join(sorted(DEPENDS[layer])) or "nothing outside itself"
    return f"{layer} may not depend on {target} ({layer} may depend on: {allowed})"


def check_cxx(root: Path, path: Path, rel: str, layer: str) -> List[Violation]:
    found = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for match in INCLUDE.finditer(text):
        bracket, name = match.group(1), match.group(2).strip()
        line = text.count("\n", 0, match.start()) + 1
        spelled = f'"{name}"' if bracket == '"' else f"<{name}>"
        target = resolve_include(root, path, name, bracket == '"')
        if target is None:
            owner = FRAMEWORK_HEADERS.get(PurePosixPath(name).parts[0])
            if owner and not _allowed(layer, owner):
                found.append(Violation(rel, line, f"{rel} includes {spelled} ({owner}): {_complaint(layer, owner)}"))
            continue
        if is_test(target) and not is_test(rel):
            found.append(Violation(rel, line, f"{rel} includes {target}: {layer} code may not depend on the tests"))
            continue
        target_layer = layer_of(target)
        if target_layer is not None and not _allowed(layer, target_layer):
            found.append(Violation(rel, line, f"{rel} includes {target}: {_complaint(layer, target_layer)}"))
        elif name.startswith("../") or "/../" in name:
            found.append(Violation(rel, line, f"{rel} includes {spelled}: include by name through the target "
                                              f"that owns {target}, not by a relative path"))
    return found


def _module_file(root: Path, module: str) -> Optional[str]:
    """python/sparsetopk/... for a module of the package, else None."""
    parts = module.split(".")
    if parts[0] != "sparsetopk":
        return None
    base = root / "python" / Path(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return _relative(root, candidate)
    return _relative(root, base.with_suffix(".py"))  # e.g. the generated _build_info


def check_python(root: Path, path: Path, rel: str, layer: str) -> List[Violation]:
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    # The package a relative import starts from: that of a module, or the package an __init__.py is.
    package = rel[len("python/"):-len(".py")].split("/")[:-1]
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
                # `from . import nn`: each name may be a module
                modules = [prefix] if node.module else [f"{prefix}.{alias.name}" for alias in node.names]
            else:
                modules = [node.module or ""]
        for module in modules:
            owner = FRAMEWORK_MODULES.get(module.split(".")[0])
            if owner is not None:
                if not _allowed(layer, owner):
                    found.append(Violation(rel, node.lineno, f"{rel} imports {module}: {_complaint(layer, owner)}"))
                continue
            target = _module_file(root, module)
            if target is None:
                continue
            target_layer = layer_of(target)
            if target_layer is not None and not _allowed(layer, target_layer):
                found.append(Violation(rel, node.lineno,
                                       f"{rel} imports {module} ({target}): {_complaint(layer, target_layer)}"))
    return found


def check(root: Path) -> List[Violation]:
    violations: List[Violation] = []
    for path in _files(root):
        rel = _relative(root, path)
        if rel is None:
            continue
        layer = layer_of(rel)
        if layer is None:
            continue
        if path.suffix == ".py":
            violations += check_python(root, path, rel, layer)
        else:
            violations += check_cxx(root, path, rel, layer)
    return violations


def main(argv: List[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2]
    if not (root / "src" / "core").is_dir():
        print(f"check_layers: {root} is not a sparsetopk checkout (no src/core)", file=sys.stderr)
        return 2
    violations = check(root)
    for violation in violations:
        print(violation)
    if violations:
        print(f"check_layers: {len(violations)} include(s)/import(s) point up or across a layer "
              "(the layers: tests/layers/check_layers.py, CMakeLists.txt)", file=sys.stderr)
        return 1
    print("check_layers: every include and import points down a layer")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
