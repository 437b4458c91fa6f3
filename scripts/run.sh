#!/usr/bin/env bash
# Runs `mvvdp ARGS...` from this checkout with the environment of scripts/env.sh.
set -euo pipefail
source "$(dirname "$0")/env.sh"
exec python -m mvvdp_core.cli "$@"
