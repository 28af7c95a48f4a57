"""scripts/gpu-check.sh without a GPU: it parses, and its dry run lists every step with a timeout
whose budgets fit the 8 minutes a lent GPU machine gives the check (docs/gpu.md)."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu-check.sh"
LIMIT_S = 480
STEPS = ["env", "configure", "build_selftest", "selftest", "memcheck", "racecheck", "synccheck", "initcheck",
         "build_libs", "pytest", "bench", "jax", "jax_kernels", "compile"]
STEP_LINE = re.compile(r"^STEP (\S+)\s+timeout=\s*(\d+)s (required|optional)\s+-> (\S+)\s+(.*)$")


def dry_run(*args, **env):
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **env}, cwd="/")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def plan(output):
    return [STEP_LINE.match(line).groups() for line in output.splitlines() if line.startswith("STEP ")]


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_passes():
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_the_dry_run_lists_every_step_with_a_timeout_in_order():
    steps = plan(dry_run("--dry-run"))
    assert [name for name, *_ in steps] == STEPS
    for name, budget, kind, file, command in steps:
        assert int(budget) > 0 and command.strip(), name
        assert re.fullmatch(r"[A-Za-z0-9._-]+", file), file
    assert {name for name, _, kind, *_ in steps if kind == "optional"} == {"jax_kernels", "compile"}


def test_the_budgets_fit_in_eight_minutes():
    output = dry_run("--dry-run")
    total = sum(int(budget) for _, budget, *_ in plan(output))
    assert total <= LIMIT_S
    assert f"budgets sum to {total} s" in output


def test_at_most_eight_result_files():
    # the device tool brings back 8 files from $OUT; bench.md is written beside bench.csv
    files = {file for *_, file, _ in plan(dry_run("--dry-run"))} | {"bench.md"}
    assert len(files) <= 8, files


def test_the_environment_variable_selects_the_dry_run_and_out_is_honoured(tmp_path):
    output = dry_run(GPU_CHECK_DRY_RUN="1", OUT=str(tmp_path / "out"))
    assert plan(output)
    assert f"--junitxml={tmp_path}/out/pytest.xml" in output
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_the_dry_run_writes_nothing_in_the_tree():
    before = set(os.listdir(REPO))
    dry_run("--dry-run")
    assert set(os.listdir(REPO)) == before


def test_docs_gpu_md_lists_the_same_steps_and_budgets():
    text = (REPO / "docs" / "gpu.md").read_text()
    documented = re.findall(r"^\| (\d+) \| (\w+) \| (\d+) s \|", text, flags=re.MULTILINE)
    assert [(name, budget) for _, name, budget in documented] == \
        [(name, budget) for name, budget, *_ in plan(dry_run("--dry-run"))]
