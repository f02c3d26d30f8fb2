"""`dataforge <stage>`: one command per registered stage (evolve, filter, ...), generated from its config.

Every stage command takes IN and ``-o OUT``, its config's options, the shared backend options when the
stage can talk to a model, ``--restart`` when it keeps a journal, and ``--json``; it runs the stage with
the same runner a pipeline uses and ends with the summary (a table, or JSON) and a one-line recap.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Optional

import typer

from ..pipeline.stages import STAGES, stage_class
from ..stage import Stage
from ._common import emit_summary
from ._options import BUDGET_EXIT, backend_config, config_command, cost_options


def _recap(summary: Any) -> str:
    out = ", ".join(f"{n:,} {status}" for status, n in sorted(summary.out.items())) or "nothing written"
    bad = f" ({summary.bad_lines:,} bad input lines)" if summary.bad_lines else ""
    return f"{summary.stage}: {summary.records_in:,} records in{bad} -> {out} in {summary.wall_s:.1f} s"


def finish_stopped(stopped: str | None, where: str, budget: dict[str, Any] | None = None) -> None:
    """A run its budget stopped: say so, what the job spent, how to go on, and exit with status 3."""
    if stopped:
        spent = ""
        if budget:
            cost = f", ${budget['spent_usd']:,.4f}" if budget.get("spent_usd") is not None else ""
            spent = f" (the job has used {budget['spent_tokens']:,} tokens{cost}; requests in flight were finished)"
        typer.secho(f"stopped: {stopped}{spent}; {where}. Re-run with a larger budget to resume.", fg="yellow",
                    err=True)
        raise typer.Exit(BUDGET_EXIT)


def _register(app: typer.Typer, cls: type[Stage]) -> None:
    uses_model = cls.needs_llm is not Stage.needs_llm
    cost = cost_options(hidden=not uses_model)

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
        price_in: Optional[float] = cost["price_in"], price_out: Optional[float] = cost["price_out"],
        budget_tokens: Optional[int] = cost["budget_tokens"], budget_usd: Optional[float] = cost["budget_usd"],
        dry_run: bool = cost["dry_run"],
        *, cfg: Any, backend: dict[str, Any] | None = None,
    ) -> None:
        from ..errors import DataforgeError
        from ..stage import run_stage
        from ..stage.budget import make_budget

        if restart and not cls.journaled:
            raise DataforgeError(f"--restart: {cls.name} keeps no journal, so every run starts over anyway")
        budget = make_budget(price_in, price_out, budget_tokens, budget_usd)
        if not uses_model and (budget is not None or dry_run):
            raise DataforgeError(f"{cls.name} calls no model: prices, budgets and --dry-run do not apply")
        stage = cls(cfg)
        if dry_run:
            _dry_run(stage, input_path, backend_config(backend or {}), budget, as_json)
            return
        summary = run_stage(stage, input_path, output, backend=backend_config(backend or {}) if uses_model
                            else None, restart=restart, budget=budget)
        emit_summary(summary.to_dict(), f"{cls.name} -> {output}", as_json)
        typer.echo(_recap(summary), err=True)
        finish_stopped(summary.stopped, f"the finished work is journaled in {summary.output}.partial.jsonl",
                       summary.budget)

    help_text = inspect.cleandoc(cls.__doc__ or "") + ("\n\nA killed run resumes when re-run with the same command."
                                               if cls.journaled else "")
    config_command(app, cls.name, cls.Config, backend=uses_model, help=help_text)(run)


def _dry_run(stage: Stage, input_path: Path, backend: Any, budget: Any, as_json: bool) -> None:
    from ..stage.estimate import estimate_stage, render_estimate

    est = estimate_stage(stage, input_path, backend=backend, budget=budget)
    if as_json:
        import json

        typer.echo(json.dumps(est.model_dump(mode="json"), indent=2))
    else:
        typer.echo("\n".join(render_estimate(est)))


def register(app: typer.Typer) -> None:
    for kind in STAGES:
        cls = stage_class(kind)
        if cls.cli:
            _register(app, cls)
