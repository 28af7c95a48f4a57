#!/usr/bin/env bash
# Checks the supported torch range as a new user meets it: for each torch
# version, a fresh virtual environment with that torch from PyPI, then
#   pip install --no-build-isolation .     (the package, built against that torch)
# the README's Python quickstarts (output compared with the README), and the
# Python suite (pytest tests/python -q) on the installed package.
#
#   scripts/check-torch-range.sh [VERSION...]
#
# Default versions: the floor (torch>=X in pyproject.toml), 2.11.0 (the GPU
# machines' torch; only its CPU part is checked here) and the pin of
# python/requirements-dev.txt. A version "2.4" installs the newest 2.4.x.
# Each version gets build/torch-range/<version>/ (venv/, the wheel's build
# folder wheel-build/, logs); .venv is not touched. Prints one summary line per
# version at the end. Downloads about 3 GB per version (torch and its CUDA
# libraries from PyPI; pip caches them) and takes a few minutes each on 2 cores.
# Not part of CI.
#
# Environment: PYTHON (interpreter for the venvs, default python3), JOBS (build
# jobs, default 2), WITH_JAX=1 (also install jax, so that the JAX part is built
# and tested), KEEP_VENV=1 (reuse an existing venv and build folder instead of fresh ones).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-2}
unset PYTHONPATH SPARSETOPK_LIBRARY SPARSETOPK_CLI SPARSETOPK_JAX_LIBRARY SPARSETOPK_WHEEL VIRTUAL_ENV

floor=$(sed -n 's/^torch = \["torch>=\([0-9.]*\)"\]/\1/p' pyproject.toml)
pin=$(sed -n 's/^torch==\([0-9.]*\)$/\1/p' python/requirements-dev.txt)
if [ $# -eq 0 ]; then
  set -- "$floor" 2.11.0 "$pin"
fi
# The test tools at the versions of the pin's environment; numpy is left to pip
# (old torch releases predate the pinned numpy).
tools=($(grep -E '^(pytest|expecttest|scikit-build-core|ninja)==' python/requirements-dev.txt))
jax=($(grep -E '^(jax|jaxlib)==' python/requirements-dev.txt))

# readme_block NAME: the output the README shows for examples/NAME
readme_block() {
  awk -v name="examples/$1\` prints" '
    index($0, name) { found = 1; next }
    found == 1 && /^```/ { found = 2; next }
    found == 2 && /^```/ { exit }
    found == 2 { print }' README.md
}

summaries=()
for version in "$@"; do
  dir=$root/build/torch-range/$version
  mkdir -p "$dir"
  log=$dir/check.log
  : > "$log"
  start=$SECONDS
  spec="torch==$version"
  [[ $version =~ ^[0-9]+\.[0-9]+$ ]] && spec="torch==$version.*"
  echo "== torch $version: $dir" | tee -a "$log"

  status=ok
  if [ "${KEEP_VENV:-0}" != 1 ] || [ ! -x "$dir/venv/bin/python" ]; then
    rm -rf "$dir/venv" "$dir/wheel-build"
    "$python" -m venv "$dir/venv" >> "$log" 2>&1 || status="venv failed"
  fi
  venv_python=$dir/venv/bin/python
  packages=("$spec" numpy "${tools[@]}")
  [ "${WITH_JAX:-0}" = 1 ] && packages+=("${jax[@]}")
  if [ "$status" = ok ]; then
    echo "-- pip install ${packages[*]}" | tee -a "$log"
    "$venv_python" -m pip install -q "${packages[@]}" >> "$log" 2>&1 || status="pip install of torch failed"
  fi
  installed=$("$venv_python" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "$version?")

  # The package, as the README installs it; its build folder is this version's own.
  if [ "$status" = ok ]; then
    echo "-- pip install --no-build-isolation . (torch $installed)" | tee -a "$log"
    build_start=$SECONDS
    "$venv_python" -m pip install -v --no-build-isolation --config-settings="build-dir=$dir/wheel-build" . > "$dir/install.log" 2>&1 ||
      { tail -30 "$dir/install.log"; status="build failed"; }
    echo "   built and installed in $((SECONDS - build_start)) s" | tee -a "$log"
  fi

  # Inductor's cache (torch.compile's C++ code, precompiled headers) of this
  # torch only: the default /tmp/torchinductor_$USER is shared by every torch
  # on the machine, and another version's run can remove its headers under us.
  export TORCHINDUCTOR_CACHE_DIR=$dir/inductor-cache

  # The quickstarts, from outside the checkout (the installed package, not python/).
  quickstarts=""
  if [ "$status" = ok ]; then
    for example in python_quickstart.py python_pytorch2.py; do
      if (cd "$dir" && "$venv_python" "$root/examples/$example" > "$dir/$example.out" 2> "$dir/$example.err"); then
        if diff <(readme_block "$example") "$dir/$example.out" > "$dir/$example.diff"; then
          quickstarts+=" $example=README"
        else
          quickstarts+=" $example=differs"
        fi
      else
        quickstarts+=" $example=FAILED"
      fi
    done
    echo "-- quickstarts:$quickstarts (outputs and diffs in $dir)" | tee -a "$log"
  fi

  # The Python suite against the installed package (conftest.py imports it;
  # no PYTHONPATH, so python/ of the checkout is not on the path).
  counts="not run"
  if [ "$status" = ok ]; then
    echo "-- pytest tests/python -q" | tee -a "$log"
    "$venv_python" -m pytest -q -p no:cacheprovider -rs tests/python > "$dir/pytest.log" 2>&1
    pytest_status=$?
    tail -1 "$dir/pytest.log" | tee -a "$log"
    counts=$(tail -1 "$dir/pytest.log" | sed 's/=//g; s/^ *//; s/ *$//')
    [ $pytest_status -eq 0 ] || status="pytest exit $pytest_status"
    # the reasons of the skips, with their counts
    sed -n 's/^SKIPPED \[\([0-9]*\)\] [^:]*:[0-9]*: /\1 /p' "$dir/pytest.log" |
      awk '{ n = $1; $1 = ""; count[substr($0, 2)] += n } END { for (r in count) printf "   skipped %4d: %s\n", count[r], r }' |
      sort -k2,2nr | tee -a "$log"
  fi
  line="torch $installed: $status; pytest: $counts; quickstarts:${quickstarts:- not run}; $((SECONDS - start)) s"
  echo "$line" | tee -a "$log"
  summaries+=("$line")
done

echo
echo "== summary (details in build/torch-range/<version>/check.log) =="
printf '%s\n' "${summaries[@]}"
failed=0
for line in "${summaries[@]}"; do [[ $line == *": ok;"* ]] || failed=1; done
exit $failed
