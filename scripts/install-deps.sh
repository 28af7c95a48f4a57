#!/usr/bin/env bash
# Installs the Debian 12 packages the project needs (run as root). Skips apt
# entirely when everything is already there.
set -euo pipefail
packages=(cmake g++ make clang libclang-rt-14-dev libgtest-dev librapidcheck-dev libtorch-dev zlib1g-dev
          python3-torch python3-numpy python3-pytest python3-matplotlib dataset-fashion-mnist)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
