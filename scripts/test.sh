#!/usr/bin/env bash
# Set up .venv from the lock (see scripts/setup.sh) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/test_mlflow_ui.py drives Debian's Chromium through Debian's chromedriver (no test tool
# downloads a browser here); CI runs as root on Debian with its package mirrors
if ! { command -v chromium && command -v chromedriver; } >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[test] installing Debian's chromium and chromium-driver for the MLflow UI test"
        { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; } \
            >/dev/null || echo "[test] apt-get failed: tests/test_mlflow_ui.py will be skipped"
    else
        echo "[test] no chromium/chromedriver and no root apt-get: tests/test_mlflow_ui.py will be skipped"
    fi
fi
export MLFLOW_DISABLE_TELEMETRY=true RAY_AUTH_MODE=disabled
exec .venv/bin/python -m pytest "$@"
