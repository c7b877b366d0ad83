#!/usr/bin/env bash
# Install sdflow into ./.venv on a fresh machine: the CPU build of torch first (a bare "torch"
# requirement would pull a multi-GB CUDA build), then sdflow and its test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
