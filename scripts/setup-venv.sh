#!/usr/bin/env bash
# Makes .venv in the checkout with the pinned torch and the Python tools of the
# build and the tests (python/requirements-dev.txt). pip keeps its cache, so a
# second machine set-up or CI run on the same machine downloads nothing.
# PYTHON selects the interpreter (default: the python3 first on PATH, >= 3.10).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
requirements=python/requirements-dev.txt
stamp=.venv/.requirements
# The checkout's package in .venv, editable: a .pth file puts python/ on the
# path (the compiled libraries are found in the build trees, _paths.py), so
# `.venv/bin/python -c "import sparsetopk"` works from any directory.
link_checkout() {
  local site
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  echo "$PWD/python" > "$site/sparsetopk-checkout.pth"
}
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && cmp -s "$requirements" "$stamp"; then
  link_checkout
  exit 0  # already set up with these requirements
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r "$requirements"
cp "$requirements" "$stamp"
link_checkout
echo "set up .venv: $(.venv/bin/python -c 'import sys, torch; print("Python", sys.version.split()[0], "torch", torch.__version__)')"
