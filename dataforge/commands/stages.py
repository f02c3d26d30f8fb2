"""`dataforge <stage>`: one command per registered stage (evolve, filter, ...), generated from its config.

Every stage command takes IN and ``-o OUT``, its config's options, the shared backend options when the
stage can talk to a model, ``--restart`` when it keeps a journal, and ``--json``; it runs the stage with
the same runner a pipeline uses and ends with the summary (a table, or JSON) and a one-line recap.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from ..pipeline.stages import STAGES, stage_class
from ..stage import Stage
from ._common import emit_summary
from ._options import backend_config, config_command


def _recap(summary: Any) -> str:
    out = ", ".join(f"{n:,} {status}" for status, n in sorted(summary.out.items())) or "nothing written"
    bad = f" ({summary.bad_lines:,} bad input lines)" if summary.bad_lines else ""
    return f"{summary.stage}: {summary.records_in:,} records in{bad} -> {out} in {summary.wall_s:.1f} s"


def _register(app: typer.Typer, cls: type[Stage]) -> None:
    uses_model = cls.needs_llm is not Stage.needs_llm

    in_help = ("Input records (any supported format: Record, Self-Instruct seeds, Alpaca, chat JSONL, JSON, "
               "Parquet, HF folder).")
    if cls.input_optional:
        in_help = "Optional: " + (cls.input_help or in_help)

    def run(
        input_path: Path = typer.Argument(None if cls.input_optional else ..., metavar="IN", help=in_help,
                                          show_default=False),
        output: Path = typer.Option(..., "-o", "--output", help="Output file (written atomically); side files "
                                    "go beside it."),
        restart: bool = typer.Option(False, "--restart", help="Throw away the journal an unfinished run left "
                                     "(otherwise a re-run with the same settings resumes it, and one with other "
                                     "settings is refused).", hidden=not cls.journaled),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
        *, cfg: Any, backend: dict[str, Any] | None = None,
    ) -> None:
        from ..errors import DataforgeError
        from ..stage import run_stage

        if restart and not cls.journaled:
            raise DataforgeError(f"--restart: {cls.name} keeps no journal, so every run starts over anyway")
        summary = run_stage(cls, input_path, output, cfg, backend=backend_config(backend or {}) if uses_model
                            else None, restart=restart)
        emit_summary(summary.to_dict(), f"{cls.name} -> {output}", as_json)
        typer.echo(_recap(summary), err=True)

    help_text = inspect.cleandoc(cls.__doc__ or "") + ("\n\nA killed run resumes when re-run with the same command."
                                               if cls.journaled else "")
    config_command(app, cls.name, cls.Config, backend=uses_model, help=help_text)(run)


def register(app: typer.Typer) -> None:
    for kind in STAGES:
        cls = stage_class(kind)
        if cls.cli:
            _register(app, cls)
