#!/usr/bin/env bash
# Installs everything into .venv: CPU torch first, then the project with all extras, then the ROS 2 interfaces.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in libegl1 libgl1 libegl-mesa0 libusb-1.0-0 cmake; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[sim,train,ros,mcap,cloud,msgs-build,dev]"
if [ -x scripts/build_msgs.sh ]; then
  scripts/build_msgs.sh
fi
echo "mvvdp installed in $(pwd)/.venv"
