#!/usr/bin/env bash
# Create .venv (once) and make it match requirements.lock exactly, then install bgwsol
# itself in editable mode. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
UV_VERSION="0.13.9"

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -m uv --version 2>/dev/null | grep -q "$UV_VERSION"; then
    echo "[setup] installing uv $UV_VERSION into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
stamp=.venv/.bgwsol-lock.sha256
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] syncing .venv with requirements.lock (first run downloads ~3 GB: torch ships CUDA wheels)"
    .venv/bin/python -m uv pip sync --quiet --python .venv/bin/python --require-hashes requirements.lock
    .venv/bin/python -m uv pip install --quiet --python .venv/bin/python --no-deps -e .
    echo "$want" > "$stamp"
fi
echo "[setup] .venv ready: $(.venv/bin/python -c 'import torch, torchvision, ray; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, ray {ray.__version__}")')"
