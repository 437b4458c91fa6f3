#!/usr/bin/env bash
# Builds the mvvdp_msgs ROS 2 interfaces with plain cmake against the venv holding the ROS 2 wheels
# (the venv is the ament prefix) and installs them into build/msgs_install, which scripts/env.sh puts on
# AMENT_PREFIX_PATH, LD_LIBRARY_PATH and PYTHONPATH.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VIRTUAL_ENV:-$ROOT/.venv}
VENV=$(cd "$VENV" && pwd -P)
PYTHON=$VENV/bin/python
BUILD=$ROOT/build/msgs_build
INSTALL=$ROOT/build/msgs_install

[ -x "$PYTHON" ] || { echo "build_msgs: no Python at $PYTHON (run scripts/install.sh first)" >&2; exit 1; }
command -v cmake >/dev/null || { echo "build_msgs: cmake is not installed" >&2; exit 1; }
[ -d "$VENV/share/rosidl_default_generators" ] || {
  echo "build_msgs: $VENV lacks the ROS 2 build wheels (pip install -e '.[msgs-build]')" >&2; exit 1; }

export AMENT_PREFIX_PATH=$VENV
export CMAKE_PREFIX_PATH=$VENV
export PATH=$VENV/bin:$PATH
export LD_LIBRARY_PATH=$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

cmake -S "$ROOT/mvvdp_msgs" -B "$BUILD" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$INSTALL" \
  -DBUILD_TESTING=OFF \
  -DPython3_EXECUTABLE="$PYTHON" \
  -DCMAKE_PROJECT_INCLUDE="$ROOT/mvvdp_msgs/cmake/fix_wheel_python_targets.cmake" \
  --log-level=WARNING >/dev/null
cmake --build "$BUILD" -j "$(nproc)" >/dev/null
cmake --install "$BUILD" >/dev/null
echo "mvvdp_msgs installed in $INSTALL"
