"""Shared helpers for the tests of the sparsetopk Python package.

Run from the repository root after building:
    PYTHONPATH=python /usr/bin/python3 -m pytest -q tests/python
(ctest runs the same with SPARSETOPK_LIBRARY and SPARSETOPK_CLI set.)
"""

import os
import subprocess
from pathlib import Path

import pytest
import torch

import _eight_devices
import sparsetopk  # noqa: F401  (loads the operator library)

REPO = Path(__file__).resolve().parents[2]
P_VALUES = [4.0 / 3.0, 2.0, 1.5]


def cli_path():
    path = Path(os.environ.get("SPARSETOPK_CLI", REPO / "build" / "bin" / "sparsetopk"))
    return path if path.is_file() else None


@pytest.fixture
def cli():
    """Runs the command-line tool on float64 rows; returns the parsed output rows."""
    path = cli_path()
    if path is None:
        pytest.skip("the sparsetopk CLI is not built")

    def run(mode, rows, k, l=None, p=None, vjp_rows=None):
        args = [str(path), mode, "--k", str(k)]
        if l is not None:
            args += ["--l", repr(float(l))]
        if p is not None:
            args += ["--p", repr(float(p))]
        lines = []
        for i, row in enumerate(rows.tolist()):
            lines.append(" ".join(repr(v) for v in row))
            if vjp_rows is not None:
                lines.append(" ".join(repr(v) for v in vjp_rows[i].tolist()))
        if vjp_rows is not None:
            args.append("--vjp")
        result = subprocess.run(args, input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
        return torch.tensor([[float(v) for v in line.split()] for line in result.stdout.splitlines()],
                            dtype=torch.float64)

    return run


@pytest.fixture(scope="session")
def eight_device_process(request):
    """The tests of every collected module that asks for this fixture, run once in one pytest
    subprocess with 8 CPU devices (_eight_devices.py); `.check(__file__)` asserts on one module's."""
    modules = sorted({str(item.path) for item in request.session.items
                      if "eight_device_process" in getattr(item, "fixturenames", ())})
    return _eight_devices.run(modules)


def separated(shape, dim=-1, spacing=0.3, seed=0, dtype=torch.float64, magnitude=False):
    """A random tensor whose slices along `dim` have entries at least ~spacing apart
    (and, with magnitude=True, magnitudes >= 0.5 and apart), away from the kinks."""
    g = torch.Generator().manual_seed(seed)
    shape = list(shape)
    n = shape[dim]
    moved = shape[:]
    del moved[dim]
    moved.append(n)
    rows = torch.stack([torch.randperm(n, generator=g) for _ in range(max(1, int(torch.tensor(moved[:-1]).prod())))])
    values = rows.to(dtype) * spacing + 0.2 * spacing * torch.rand(rows.shape, generator=g, dtype=dtype)
    if magnitude:
        signs = torch.randint(0, 2, rows.shape, generator=g).to(dtype) * 2 - 1
        values = signs * (0.5 + values)
    else:
        values = values - values.mean()
    return values.reshape(moved).movedim(-1, dim).contiguous()
