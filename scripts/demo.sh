#!/usr/bin/env bash
# Set up .venv from the lock and run the main job on the embedded synthetic ILSVRC.
# Extra arguments go to flows/train_ilsvrc.py (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python flows/train_ilsvrc.py "$@"
