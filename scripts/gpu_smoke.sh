#!/usr/bin/env bash
# GPU smoke check of `dataforge train` on whatever GPU is present: bf16 (or fp16 + gradient scaler), the
# routed attention-bias kernel against eager, gradient checkpointing, every modification on, save -> load ->
# generate, exact resume, and 2-process NCCL DDP when there are 2 GPUs. Prints a pass/fail table; exits 1
# when a check failed. Without a GPU it says so and exits 0.
#   scripts/gpu_smoke.sh                 # the first GPU
#   scripts/gpu_smoke.sh --device cuda:1
#   scripts/gpu_smoke.sh --device cpu    # dry run of the same checks on the CPU (DDP over gloo)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DATAFORGE_PROGRESS=0
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" "$here/gpu_smoke.py" "$@"
