#!/usr/bin/env bash
# Runs the test suite (after scripts/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ruff check .
exec python -m pytest -q test "$@"
