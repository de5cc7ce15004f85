#!/usr/bin/env bash
# One-time, idempotent set-up: a virtual environment in .venv with tunelens and its dev tools.
# PyTorch is pinned to the CPU build that lies on this machine's disk (a plain `torch`
# requirement would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
