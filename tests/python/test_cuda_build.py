"""The CUDA kernels' library as built (no GPU needed): it holds sm_90 machine code and
compute_90 PTX, the main library does not depend on libtorch_cuda, and the kernels are
off unless a call opts in. Skips, saying why, where the library or cuobjdump is absent."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import sparsetopk
from sparsetopk import _library


def _main_library() -> Path:
    for path in _library.candidate_paths():
        if path.is_file():
            return path
    pytest.skip("libsparsetopk_torch.so is not built")


def _cuda_library() -> Path:
    path = _main_library().parent / _library.CUDA_LIBRARY_NAME
    if not path.is_file():
        pytest.skip(f"{path} is not built (no nvcc or no CUDA torch at configure time)")
    return path


def _cuobjdump() -> str:
    """cuobjdump from PATH, the CUDA toolkit, or the copy Triton's wheel carries."""
    found = shutil.which("cuobjdump")
    candidates = [found] if found else []
    candidates.append(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"))
    try:
        import triton

        candidates.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    except ImportError:
        pass
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("cuobjdump not found (PATH, $CUDA_HOME/bin, triton's package)")


def test_the_cuda_library_holds_sm_90_machine_code():
    listing = subprocess.run([_cuobjdump(), "--list-elf", str(_cuda_library())], capture_output=True, text=True,
                             check=True).stdout
    assert "sm_90" in listing, listing


def test_the_cuda_library_holds_compute_90_ptx():
    listing = subprocess.run([_cuobjdump(), "--list-ptx", str(_cuda_library())], capture_output=True, text=True,
                             check=True).stdout
    assert "sm_90" in listing, listing  # the PTX of compute_90 is listed as sm_90.ptx


def test_the_main_library_does_not_need_libtorch_cuda():
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not found")
    needed = subprocess.run([readelf, "-d", str(_main_library())], capture_output=True, text=True, check=True).stdout
    assert "libtorch_cuda" not in needed and "libcudart" not in needed, needed


def test_the_kernels_are_off_unless_opted_in():
    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is not a CUDA build: the CUDA library is not loaded")
    _cuda_library()
    assert sparsetopk.cuda_kernels_available()
    if os.environ.get("SPARSETOPK_CUDA_KERNELS") == "1":
        pytest.skip("SPARSETOPK_CUDA_KERNELS=1 is set in this environment")
    previous = sparsetopk.use_cuda_kernels(False)
    assert previous is False
    assert sparsetopk.use_cuda_kernels(False) is False


def test_cpu_tensors_never_reach_the_cuda_kernels():
    if not sparsetopk.cuda_kernels_available():
        pytest.skip("the CUDA kernels' library is not loaded")
    x = torch.randn(6, 9, dtype=torch.float64)
    expected = sparsetopk.soft_topk_mask(x, 3, 0.2)
    previous = sparsetopk.use_cuda_kernels(True)
    try:
        torch.testing.assert_close(sparsetopk.soft_topk_mask(x, 3, 0.2), expected, rtol=0, atol=0)
    finally:
        sparsetopk.use_cuda_kernels(previous)
