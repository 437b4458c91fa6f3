# Environment for running mvvdp from this checkout: source it (bash).
MVVDP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export MVVDP_ROOT
export PYTHONPATH="$MVVDP_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$MVVDP_ROOT/.venv/bin:$PATH"
if [ -d "$MVVDP_ROOT/build/msgs_install" ]; then
  export AMENT_PREFIX_PATH="$MVVDP_ROOT/build/msgs_install:$MVVDP_ROOT/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export LD_LIBRARY_PATH="$MVVDP_ROOT/build/msgs_install/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  msgs_py=$(ls -d "$MVVDP_ROOT"/build/msgs_install/lib/python3*/site-packages 2>/dev/null | head -1)
  [ -n "$msgs_py" ] && export PYTHONPATH="$msgs_py${PYTHONPATH:+:$PYTHONPATH}"
fi
export MUJOCO_GL=${MUJOCO_GL:-egl}
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}
export HF_HUB_OFFLINE=1
export FASTDDS_BUILTIN_TRANSPORTS=${FASTDDS_BUILTIN_TRANSPORTS:-UDPv4}
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
