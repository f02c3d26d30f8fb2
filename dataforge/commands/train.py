"""`dataforge train INPUT -o RUN_DIR`: fine-tune a causal LM on dataforge records.

The options are generated from `TrainConfig`'s fields (same names with dashes, same help, grouped in
panels), so the CLI and the library config can never drift apart. Dict-valued fields (task kinds,
temperatures) come from `--config FILE` (YAML or JSON with TrainConfig keys); explicit options win.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any, Optional

import typer

from ..train.config import GROUPS, TrainConfig

_PANEL = {name: panel for panel, names in GROUPS.items() for name in names}
_SKIP = {"task_kinds", "temperature_by_kind"}


def _option_type(annotation: Any) -> tuple[Any, bool]:
    """(type typer understands, is_optional) for a TrainConfig annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return str, False
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return _option_type(inner)[0], True
    if origin is list:
        return list[str], False
    return annotation, False


def _params() -> list[inspect.Parameter]:
    params = []
    for name, field in TrainConfig.model_fields.items():
        if name in _SKIP:
            continue
        typ, _ = _option_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if typ is bool else [flag]
        help_text = field.description or ""
        if typing.get_origin(field.annotation) is typing.Literal:
            help_text += f" ({' | '.join(typing.get_args(field.annotation))})"
        default = field.get_default(call_default_factory=True)
        if default is not None and default != []:
            shown = ("on" if default else "off") if isinstance(default, bool) else \
                (",".join(default) if isinstance(default, list) else default)
            help_text += f"  (default: {shown})"
        opt = typer.Option(None, *decls, help=help_text, rich_help_panel=_PANEL.get(name, "Other"),
                           show_default=False)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt,
                                        annotation=Optional[typ]))
    return params


def _build_config(config_file: Optional[Path], given: dict[str, Any]) -> TrainConfig:
    base: dict[str, Any] = {}
    if config_file is not None:
        from ..errors import DataforgeError

        if not config_file.exists():
            raise DataforgeError(f"{config_file}: no such config file")
        text = config_file.read_text(encoding="utf-8")
        if config_file.suffix in (".yaml", ".yml"):
            import yaml

            base = yaml.safe_load(text) or {}
        else:
            base = json.loads(text)
    merged = base | {k: v for k, v in given.items() if v is not None}
    try:
        return TrainConfig(**merged)
    except Exception as exc:
        from ..errors import DataforgeError

        raise DataforgeError(f"train config: {exc}") from exc


def register(app: typer.Typer) -> None:
    def train(input: Path, output: Path, config: Optional[Path], progress: bool, **options: Any) -> None:
        cfg = _build_config(config, options)
        from ..train import run_train

        summary = run_train(input, output, cfg, progress=progress)
        if summary.get("world_size", 1) > 1:
            import torch.distributed as dist

            if dist.get_rank() != 0:
                return
        typer.echo(json.dumps(summary, indent=2))

    fixed = [
        inspect.Parameter("input", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path,
                          default=typer.Argument(..., help="Records to train on (JSONL / any format dataforge reads).")),
        inspect.Parameter("output", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                          default=typer.Option(..., "-o", "--output", help="Run directory: checkpoints/, log.jsonl, "
                                               "summary.json, model/.")),
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                          default=typer.Option(None, "--config", help="YAML/JSON file with TrainConfig fields.")),
        inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(True, "--progress/--no-progress", help="Show the progress bar.")),
    ]

    def command(**kwargs: Any) -> None:
        train(kwargs.pop("input"), kwargs.pop("output"), kwargs.pop("config"), kwargs.pop("progress"), **kwargs)

    command.__signature__ = inspect.Signature(fixed + _params())  # type: ignore[attr-defined]
    command.__doc__ = ("Fine-tune a causal LM on instruction records (dual loss, optional instruction-aware "
                       "modules, EWC/L2-SP). Multi-process: torchrun --nproc_per_node N -m dataforge train ...")
    app.command("train")(command)
