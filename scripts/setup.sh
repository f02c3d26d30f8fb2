#!/usr/bin/env bash
# Install dataforge and everything its tests need into ./.venv (CPU torch wheel; GPU users install their own torch first).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e '.[test]'
