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
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && cmp -s "$requirements" "$stamp"; then
  exit 0  # already set up with these requirements
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r "$requirements"
cp "$requirements" "$stamp"
echo "set up .venv: $(.venv/bin/python -c 'import sys, torch; print("Python", sys.version.split()[0], "torch", torch.__version__)')"
