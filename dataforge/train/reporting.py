"""`--report-to tensorboard|wandb|none`: the log.jsonl lines, also sent to a standard tracker.

Scalars keep their log.jsonl names, under `train/` or `eval/` (eval loss by lineage as
`eval/by_<key>/<value>`). TensorBoard writes to run_dir/tensorboard; on resume it purges the steps the
crash lost, like log.jsonl. Weights & Biases runs offline (files under run_dir/wandb, `wandb sync` later)
unless a network and an API key are there; WANDB_MODE set by the user wins. Only rank 0 reports.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from ..errors import DataforgeError


def scalars(entry: dict[str, Any]) -> dict[str, float]:
    """Flat {tag: value} of a log line: numbers only, eval_by expanded."""
    out: dict[str, float] = {}
    for key, value in entry.items():
        if key in ("step", "epoch"):
            continue
        if key == "eval_by":
            for lineage_key, groups in value.items():
                for name, stats in groups.items():
                    out[f"eval/by_{lineage_key}/{name}"] = float(stats["loss"])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[("eval/" if key.startswith("eval") else "train/") + key] = float(value)
    return out


def _online() -> bool:
    if not os.environ.get("WANDB_API_KEY"):
        return False
    try:
        with socket.create_connection(("api.wandb.ai", 443), timeout=2):
            return True
    except OSError:
        return False


class Reporter:
    """One tracker (or none). `log(step, entry)` after each log.jsonl line, `close()` at the end."""

    def __init__(self, kind: str, out: Path, config: dict[str, Any], start_step: int = 0):
        self.kind = kind
        self._tb = self._wandb = None
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise DataforgeError("--report-to tensorboard needs the tensorboard package "
                                     "(pip install tensorboard)") from exc
            self._tb = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        elif kind == "wandb":
            try:
                import wandb
            except ImportError as exc:
                raise DataforgeError("--report-to wandb needs wandb: pip install 'dataforge[wandb]'") from exc
            mode = os.environ.get("WANDB_MODE") or ("online" if _online() else "offline")
            self.mode = mode
            # no console capture (the progress bar owns stderr), no git/code scan of the working directory
            settings = wandb.Settings(console="off", save_code=False, disable_git=True)
            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "dataforge"), name=out.name,
                                     dir=str(out), config=config, mode=mode, reinit="finish_previous",
                                     settings=settings)

    def log(self, step: int, entry: dict[str, Any]) -> None:
        values = scalars(entry)
        if self._tb is not None:
            for tag, v in values.items():
                self._tb.add_scalar(tag, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
