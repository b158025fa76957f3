#!/usr/bin/env bash
# Set up .venv from the lock (see scripts/setup.sh) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLFLOW_DISABLE_TELEMETRY=true RAY_AUTH_MODE=disabled
exec .venv/bin/python -m pytest "$@"
