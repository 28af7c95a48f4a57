"""The JAX tests that need 8 CPU devices (test_jax_sharding.py, test_jax_global_sharded.py).

XLA gives the CPU 8 devices only with XLA_FLAGS=--xla_force_host_platform_device_count=8 set before
jax starts its backends. So the normal test run (one device, where the other JAX suites run in the
same process) has one test in each such module, marked `launcher`, which asks the session fixture
`eight_device_process` (conftest.py) how that module's tests went in one pytest subprocess with the
flag and CHILD=1. That subprocess runs every such module collected in the session, once (one start
of Python, pytest and jax for all of them), without conftest.py (which imports torch); the other
tests of these modules run only there (`in_child`).
"""

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

CHILD = "SPARSETOPK_8_DEVICE_CHILD"
DEVICES = 8
in_child = pytest.mark.skipif(os.environ.get(CHILD) != "1", reason="runs in the 8-device subprocess")
launcher = pytest.mark.skipif(os.environ.get(CHILD) == "1", reason="this is the 8-device subprocess")
REPO = Path(__file__).resolve().parents[2]


class Outcome:
    """What the 8-device subprocess printed, and its tests' outcomes per module."""

    def __init__(self, returncode, output, outcomes):
        self.returncode, self.output, self.outcomes = returncode, output, outcomes

    def check(self, module_file):
        """Asserts that the module's tests ran in the subprocess and none failed."""
        name = Path(module_file).stem
        counts = self.outcomes.get(name, {})
        # 0: all passed; 1: some test failed (of this module or another, which its launcher reports)
        assert self.returncode in (0, 1), self.output[-6000:]
        assert counts.get("failed", 0) == 0, self.output[-6000:]
        assert counts.get("passed", 0) > 0, f"no test of {name} passed in the 8-device subprocess:\n" \
                                             + self.output[-3000:]
        print(f"\n{name} in the 8-device subprocess: {counts}")


def run(module_files):
    """Runs the modules' tests in one pytest subprocess with 8 CPU devices."""
    flags = os.environ.get("XLA_FLAGS", "")
    # the CPU's 8 devices, also where a GPU is the default backend
    env = dict(os.environ, **{CHILD: "1", "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={DEVICES}",
                              "JAX_PLATFORMS": "cpu"})
    with tempfile.TemporaryDirectory() as directory:
        report = Path(directory) / "report.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--noconftest",
                   f"--junitxml={report}", *map(str, module_files)]
        result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        outcomes = {}
        if report.is_file():
            for case in ElementTree.parse(report).iter("testcase"):
                module = case.get("classname", "").rsplit(".", 1)[-1]
                kinds = {child.tag for child in case}
                kind = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
                counts = outcomes.setdefault(module, {})
                counts[kind] = counts.get(kind, 0) + 1
    return Outcome(result.returncode, result.stdout + result.stderr, outcomes)
