#!/usr/bin/env bash
# Set up .venv with the project and its test tools. Safe to rerun: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import tcl, ray, open_clip, moto, pytest" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  # torch first and pinned exactly: torchvision only works with this torch build.
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/pip install -q -e '.[dev]'
fi
