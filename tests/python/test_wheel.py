"""The wheel of `pip wheel .` (pyproject.toml) serves `import sparsetopk` on its own.

Given a built wheel in $SPARSETOPK_WHEEL (skipped when unset):
    .venv/bin/python -m pip wheel . --no-build-isolation --no-deps -w dist/
    SPARSETOPK_WHEEL=dist/sparsetopk-0.1.0-cp311-cp311-linux_x86_64.whl \
        PYTHONPATH=python .venv/bin/python -m pytest -q tests/python/test_wheel.py
the wheel is installed into a fresh virtualenv that has nothing but pip's
install of it and, through a .pth file, the site-packages holding the current
interpreter's torch (torch is not reinstalled). It is imported there from an
empty directory without PYTHONPATH or SPARSETOPK_LIBRARY: no checkout, no build tree.
"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "python" / "sparsetopk"
LIBRARY = "libsparsetopk_torch.so"
JAX_LIBRARY = "libsparsetopk_jax.so"

# Runs inside the fresh virtualenv; argv[1] is its directory.
IMPORT_CHECK = r"""
import sys
from pathlib import Path

import torch
import sparsetopk

venv = Path(sys.argv[1]).resolve()
package = Path(sparsetopk.__file__).resolve()
assert venv in package.parents, f"sparsetopk imported from {package}, not from the fresh venv {venv}"
loaded = [Path(p).resolve() for p in torch.ops.loaded_libraries]
assert any(p.name == "libsparsetopk_torch.so" and venv in p.parents for p in loaded), loaded

# SPEC.md, known values: x = [-5, -2, 3, 1], k = 2, l = 0.01 -> mask [0, 0, 1, 1].
x = torch.tensor([-5.0, -2.0, 3.0, 1.0], requires_grad=True)
mask = sparsetopk.soft_topk_mask(x, k=2, l=0.01)
torch.testing.assert_close(mask.detach(), torch.tensor([0.0, 0.0, 1.0, 1.0]), atol=1e-5, rtol=0)
mask.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
assert x.grad is not None and x.grad.shape == x.shape and torch.isfinite(x.grad).all(), x.grad

# A backward through a soft (non-saturated) block, against finite differences.
y = torch.tensor([0.3, -0.2, 0.1, 0.25], dtype=torch.float64, requires_grad=True)
assert torch.autograd.gradcheck(lambda t: sparsetopk.soft_topk_mask(t, k=2, l=1.0), (y,))
print("ok", package)
"""


# The JAX part, in the same fresh virtualenv (jax comes through the same .pth
# as torch), imported without torch.
JAX_IMPORT_CHECK = r"""
import sys
from pathlib import Path

import jax.numpy as jnp
import sparsetopk.jax as stj

venv = Path(sys.argv[1]).resolve()
loaded = [p for p in stj._ffi.library_paths() if p.is_file()][0].resolve()
assert venv in loaded.parents and loaded.name == "libsparsetopk_jax.so", loaded
assert "torch" not in sys.modules, "sparsetopk.jax imported torch"
mask = stj.soft_topk_mask(jnp.array([-5.0, -2.0, 3.0, 1.0]), k=2, l=0.01)
assert jnp.allclose(mask, jnp.array([0.0, 0.0, 1.0, 1.0]), atol=1e-5), mask
print("ok", loaded)
"""


def wheel_path():
    """$SPARSETOPK_WHEEL; the test is skipped when unset and fails (not errors) when missing."""
    value = os.environ.get("SPARSETOPK_WHEEL")
    if not value:
        pytest.skip("SPARSETOPK_WHEEL is not set: build a wheel with "
                    "`pip wheel . --no-build-isolation --no-deps -w dist/` and point SPARSETOPK_WHEEL at it")
    path = Path(value).resolve()
    if not path.is_file():
        pytest.fail(f"SPARSETOPK_WHEEL={value} does not exist")
    return path


def test_wheel_contents():
    wheel = wheel_path()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = [n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")]
        assert dist_info, names
        wheel_meta = archive.read(f"{dist_info[0]}/WHEEL").decode()
    assert f"sparsetopk/{LIBRARY}" in names
    assert f"sparsetopk/{JAX_LIBRARY}" in names
    assert "sparsetopk/_build_info.py" in names
    # Where this machine's build made the CUDA kernels' library, the wheel (same CMake) holds it too.
    cuda_library = Path(os.environ.get("SPARSETOPK_LIBRARY", "build/lib/x")).parent / "libsparsetopk_torch_cuda.so"
    if cuda_library.is_file():
        assert "sparsetopk/libsparsetopk_torch_cuda.so" in names, names
    if (cuda_library.parent / "libsparsetopk_jax_cuda.so").is_file():
        assert "sparsetopk/libsparsetopk_jax_cuda.so" in names, names
    missing = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if f"sparsetopk/{p.relative_to(PACKAGE).as_posix()}" not in names]
    assert not missing, f"Python files of python/sparsetopk missing from the wheel: {missing}"
    # Only the package and its metadata: nothing of the checkout's tests or build tree.
    assert {n.split("/")[0] for n in names} == {"sparsetopk", dist_info[0]}, names
    stray = [n for n in names if "__pycache__" in n or "conftest" in n or Path(n).name.startswith("test_")
             or n.startswith("tests/")]
    assert not stray, stray
    # A platform wheel (it holds a .so), not purelib / *-none-any.
    assert "Root-Is-Purelib: false" in wheel_meta, wheel_meta
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    assert tags and all(not t.endswith("-any") for t in tags), tags


def run(args, **kwargs):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_wheel_installs_and_imports_alone(tmp_path):
    wheel = wheel_path()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip())
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "SPARSETOPK_LIBRARY", "SPARSETOPK_JAX_LIBRARY", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    # The current interpreter's pip installs into the fresh venv (pip >= 22.3),
    # before the .pth exists: else pip would see a sparsetopk installed next to
    # torch as "already satisfied".
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", wheel], env=env)
    assert (site / "sparsetopk" / LIBRARY).is_file(), sorted(p.name for p in site.iterdir())
    # torch from the current interpreter, only through this .pth (appended after
    # the fresh venv's own site-packages, so the installed wheel comes first).
    torch_site = Path(torch.__file__).resolve().parent.parent
    (site / "outer_torch.pth").write_text(f"{torch_site}\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    out = run([python, "-c", IMPORT_CHECK, venv], cwd=empty, env=env)
    assert out.startswith("ok "), out
    out = run([python, "-c", JAX_IMPORT_CHECK, venv], cwd=empty, env=env)
    assert out.startswith("ok "), out
