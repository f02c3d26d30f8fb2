"""Writing a model directory (the run's `model/`, `best/`, `merged/`) whole or not at all.

The files go to a temporary sibling first, which then replaces the old directory: a crash while saving
leaves the previous directory as it was, never a mix of two saves.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch


def replace_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_dir)`, then swap tmp_dir in place of `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}"
    old = final.parent / f".old-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def write_model(final: Path, imodel, tokenizer, meta: dict[str, Any], *, cfg=None,
                state: dict[str, torch.Tensor] | None = None) -> Path:
    """The model as it is now: a peft adapter directory for LoRA runs, else a full checkpoint.
    `state`: the InstructModel's full state dict when it was gathered elsewhere (FSDP)."""
    peft_model = imodel.__dict__.get("peft_model")

    def write(tmp: Path) -> None:
        if peft_model is not None:
            from .lora import adapter_meta, save_adapter

            save_adapter(tmp, imodel, peft_model, tokenizer, meta | {"adapter": adapter_meta(cfg, peft_model)})
        else:
            imodel.save(tmp, tokenizer, meta, state=state)

    return replace_dir(final, write)
