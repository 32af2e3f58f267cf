#!/usr/bin/env bash
# Set up .venv with the project and its test tools. Safe to rerun: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import tcl, ray, open_clip, moto, pytest, multipart, selenium, cv2" 2>/dev/null; then
  # No wheel cache: torch and its CUDA libraries are ~6 GB installed, and a cached copy of their
  # wheels would take several GB more on a machine that installs them once.
  export PIP_NO_CACHE_DIR=1
  .venv/bin/pip install -q --upgrade pip
  # torch first and pinned exactly: torchvision only works with this torch build.
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/pip install -q -e '.[dev]'
fi
# A browser for the web page test: Debian's chromium and its driver (needs root and apt).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "bootstrap: could not install chromium; the browser test will be skipped" >&2
  else
    echo "bootstrap: no root/apt to install chromium; the browser test will be skipped" >&2
  fi
fi
