#!/usr/bin/env bash
# GPU smoke check of `dataforge train` on whatever GPU is present, in one go:
#  1. scripts/gpu_smoke.py (issue 12): bf16 (or fp16 + gradient scaler), the routed attention-bias kernel
#     against eager, gradient checkpointing, every modification on, save -> load -> generate, exact resume,
#     and 2-process NCCL DDP when there are 2 GPUs; a pass/fail table;
#  2. scripts/gpu_smoke_scale.sh (issue 17): QLoRA on SmolLM2, FSDP over NCCL against one process, cached
#     generation on CUDA; PASS / FAIL / NOT RUN per check.
# Exits 1 when any check failed. Without a GPU it says so and exits 0 (nothing is reported as passed).
#   scripts/gpu_smoke.sh                 # the first GPU
#   scripts/gpu_smoke.sh --device cuda:1
#   scripts/gpu_smoke.sh --device cpu    # dry run of part 1 on the CPU (DDP over gloo); part 2 needs CUDA
#   scripts/gpu_smoke.sh --keep DIR      # keep the run directories (part 2's under DIR/scale)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DATAFORGE_PROGRESS=0
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
# the project's environment when none is active, so `python` and `torchrun` are the ones with torch
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$(dirname "$here")/.venv/bin/python" ]; then
  export PATH="$(dirname "$here")/.venv/bin:$PATH"
fi

device="" keep=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --device) device="${args[i + 1]:-}" ;;
    --device=*) device="${args[i]#--device=}" ;;
    --keep) keep="${args[i + 1]:-}" ;;
    --keep=*) keep="${args[i]#--keep=}" ;;
  esac
done

status=0
"${PYTHON:-python}" "$here/gpu_smoke.py" "$@" || status=$?
[ "$status" -le 1 ] || exit "$status"              # a usage error or a crash of the checker itself

echo
echo "== scale checks (scripts/gpu_smoke_scale.sh)"
if [[ "$device" == cpu* ]]; then
  echo "NOT RUN: --device $device (QLoRA, FSDP over NCCL and cached generation on CUDA need a GPU)"
else
  scale_args=()
  [ -n "$keep" ] && scale_args=("$keep/scale")
  # the scale checks use the first visible GPUs (--device cuda:N selects part 1's device only) and call
  # `python`: with PYTHON=/path/to/python, that interpreter's directory goes first on PATH
  py_dir=""
  [[ "${PYTHON:-}" == */* ]] && py_dir="$(dirname "$PYTHON"):"
  PATH="$py_dir$PATH" bash "$here/gpu_smoke_scale.sh" ${scale_args[@]+"${scale_args[@]}"} || status=1
fi
exit "$status"
