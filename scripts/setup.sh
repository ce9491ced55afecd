#!/usr/bin/env bash
# Create .venv and install the project with its exact pinned dependencies (package registries only, no other download).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements/lock.txt
.venv/bin/python -m pip install -q --no-deps -r requirements/no-deps.txt
.venv/bin/python -m pip install -q --no-deps -e .
echo "environment ready: $(pwd)/.venv"
