#!/usr/bin/env bash
# Set up .venv from the lock and run the main job on the embedded synthetic ILSVRC:
# Ray Data shards -> Ray Train CAM baseline + Ray Tune over bgwsol -> local MLflow server -> test table.
# Extra arguments go to flows/train_ilsvrc.py (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# a single-machine Ray started by the job itself needs no token auth; a cluster sets its own
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
exec .venv/bin/python flows/train_ilsvrc.py "$@"
