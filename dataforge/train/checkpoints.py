"""Training checkpoints: `run_dir/checkpoints/step-N/`, written to a temp dir and renamed, the last
`keep_checkpoints` kept.

A checkpoint holds the weights, the AdamW moments, the RNG states (CPU, and GPU when used) and
`state.json` (step, param groups, config, counters, the fp16 loss scaler). Full fine-tuning saves every weight; adapter runs only the trainable tensors (the
frozen base is the model the run starts from); FSDP runs write through `fsdp.save` (every process takes
part). Resuming with settings that shape the data plan, the model or the sharding is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import DataforgeError
from .device import restore_rng, rng_states

CKPT_DIR = "checkpoints"
STATE_KEYS = ("seed", "batch_size", "grad_accum", "pack", "max_length", "group_by_length", "model", "lora",
              "lora_r", "lora_alpha", "lora_targets", "qlora", "fsdp", "objective", "dpo_beta")


def ckpt_dirs(out: Path) -> list[Path]:
    root = out / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if p.is_dir() and (p / "state.json").exists()),
                  key=lambda p: int(p.name.split("-")[1]))


def _barrier(dist) -> None:
    import torch.distributed as tdist

    tdist.barrier()


def save_checkpoint(out: Path, step: int, objective, opt: torch.optim.Optimizer, cfg, extra: dict[str, Any],
                    dist=None, scaler=None) -> Path:
    """Rank 0 alone calls it, except under FSDP where every process must (pass `dist`). `scaler`: the fp16
    loss scaler, whose scale a resumed run continues from."""
    from safetensors.torch import save_file, save_model

    root = out / CKPT_DIR
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    sharded = bool(cfg.fsdp and dist is not None and dist.world > 1)
    main = dist is None or dist.main
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    state: dict[str, Any] = {"step": step, "config": cfg.model_dump(mode="json"),
                             "scaler": scaler.state_dict() if scaler is not None else {}} | extra
    if sharded:
        from . import fsdp

        _barrier(dist)
        state |= fsdp.save(tmp, objective, opt, cfg.fsdp_checkpoint, dist.rank)
        _barrier(dist)
    else:
        if cfg.lora:
            from .lora import trainable_state

            save_file(trainable_state(objective), str(tmp / "weights.safetensors"))
        else:
            save_model(objective, str(tmp / "weights.safetensors"))
        sd = opt.state_dict()
        tensors = {f"{i}.{k}": v.detach().contiguous().cpu() for i, st in sd["state"].items() for k, v in st.items()}
        tensors |= rng_states()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state["param_groups"] = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    if main:
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=list), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in ckpt_dirs(out)[: -cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    if sharded:
        _barrier(dist)
    return final


def load_checkpoint(path: Path, objective, opt: torch.optim.Optimizer, cfg, dist=None, scaler=None) -> dict:
    from safetensors.torch import load_file, load_model

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    old = state.get("config", {})
    changed = [k for k in STATE_KEYS if k in old and old[k] != getattr(cfg, k)]
    if changed:
        raise DataforgeError(f"{path}: checkpoint was made with different {', '.join(changed)}; "
                             "use a new output dir or --no-resume")
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if cfg.fsdp and dist is not None and dist.world > 1:
        from . import fsdp

        fsdp.load(path, objective, opt, state, dist.rank)
        return state
    if "fsdp_format" in state:
        raise DataforgeError(f"{path}: an FSDP checkpoint; resume it with --fsdp under torchrun")
    if cfg.lora:
        from .lora import load_trainable_state

        load_trainable_state(objective, load_file(str(path / "weights.safetensors")), path)
    else:
        load_model(objective, str(path / "weights.safetensors"), strict=True)
    tensors = load_file(str(path / "optimizer.safetensors"))
    restore_rng(tensors)
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        i, name = key.split(".", 1)
        per_param.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    return state
