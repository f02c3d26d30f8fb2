"""`dataforge train INPUT -o RUN_DIR`: fine-tune a causal LM on dataforge records.

The options are generated from `TrainConfig`'s fields (same names with dashes, same help, grouped in
panels), so the CLI and the library config can never drift apart. Dict-valued fields (task kinds,
temperatures) come from `--config FILE` (YAML or JSON with TrainConfig keys); explicit options win.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..train.config import GROUPS, TrainConfig
from ._options import config_command

_PANEL = {name: panel for panel, names in GROUPS.items() for name in names}


def _config_file(given: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields from ``--config FILE`` (YAML or JSON); the options given on the line win."""
    path: Optional[Path] = given.get("config")
    if path is None:
        return {}
    from ..errors import DataforgeError

    if not path.exists():
        raise DataforgeError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def register(app: typer.Typer) -> None:
    @config_command(app, "train", TrainConfig, panels=_PANEL, base=_config_file)
    def train(
        input: Path = typer.Argument(..., help="Records to train on (JSONL / any format dataforge reads)."),
        output: Path = typer.Option(..., "-o", "--output", help="Run directory: checkpoints/, log.jsonl, "
                                    "summary.json, model/."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file with TrainConfig fields."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
        *, cfg: TrainConfig,
    ) -> None:
        """Fine-tune a causal LM on instruction records (dual loss, optional instruction-aware modules,
        EWC/L2-SP). Multi-process: torchrun --nproc_per_node N -m dataforge train ..."""
        from ..train import run_train

        summary = run_train(input, output, cfg, progress=progress)
        if summary.get("world_size", 1) > 1:
            import torch.distributed as dist

            if dist.get_rank() != 0:
                return
        from ..train.evaluation import eval_table

        table = eval_table(summary.get("eval_loss_by", {}), summary.get("eval_loss"))
        if table:
            typer.echo(table, err=True)
        typer.echo(json.dumps(summary, indent=2))
