#!/usr/bin/env bash
# Installs what the project needs on Debian 12 (run as root): the Debian
# packages (skips apt when they are all there), then the Python environment
# .venv with the pinned torch from PyPI (scripts/setup-venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(cmake g++ make clang libclang-rt-14-dev libgtest-dev librapidcheck-dev zlib1g-dev
          python3-venv python3-numpy python3-pytest python3-matplotlib dataset-fashion-mnist)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
scripts/setup-venv.sh
