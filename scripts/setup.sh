#!/usr/bin/env bash
# Install dataforge and everything its tests need into ./.venv (CPU torch wheel; GPU users install their own torch first).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e '.[test]'
# Headless Chromium for the report's browser test (tests/test_report.py); Debian package `chromium`.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "note: chromium not found and not root: install it with 'sudo apt-get install chromium'" \
         "(the HTML report's browser test is skipped without it)" >&2
  fi
fi
