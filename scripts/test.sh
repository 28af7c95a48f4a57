#!/usr/bin/env bash
# Installs what is needed, builds, and runs every test (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
ctest --preset release -j "$(nproc)"
