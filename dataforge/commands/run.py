"""`dataforge run PIPELINE`: the whole chain as one resumable batch job (see dataforge/pipeline/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._options import config_command, cost_options

_COST = cost_options()


def run(
    pipeline: Annotated[str, typer.Argument(help="pipelines/NAME.yaml, or the bare name of a shipped pipeline "
                                            "(alpaca_bootstrap, evol_corpus, filter_balance, full_chain).")],
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Where stage outputs and manifest.json go "
                                                    "(default: the YAML's run_dir, else runs/NAME).")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="Run record-parallel stages on shard i of n "
                                                 "(\"i/n\", by record id); merge the parts with `dataforge merge`.")] = None,
    ray: Annotated[Optional[str], typer.Option("--ray", help="Fan record-parallel work out to this Ray cluster "
                                               "(generation batches, the gate's scoring, embeddings, export): "
                                               "'auto', 'ray://host:10001', or 'local'.")] = None,
    input: Annotated[Optional[str], typer.Option("--input", "-i", help="Read this input instead of the YAML's "
                                                 "(file or saved HF dataset folder).")] = None,
    from_stage: Annotated[Optional[str], typer.Option("--from", help="Redo this stage and everything after it, "
                                                      "even if done.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show what would run, and for the "
                                          "model-calling stages among it run a small real sample and print the "
                                          "projected requests, tokens, wall time and cost; write nothing.",
                                          rich_help_panel="Cost and budget")] = False,
    price_in: Optional[float] = _COST["price_in"], price_out: Optional[float] = _COST["price_out"],
    budget_tokens: Optional[int] = _COST["budget_tokens"], budget_usd: Optional[float] = _COST["budget_usd"],
    *, backend: dict,
) -> None:
    """Run a pipeline YAML: every stage's output in its own folder under the run directory, a manifest
    after every stage; a re-run skips what is done and redoes only what changed."""
    from ..pipeline import Engine, RunOptions, load_pipeline
    from ..pipeline.costs import estimate_pipeline, job_budget
    from ..shard import parse_shard
    from ..stage.estimate import render_estimate
    from .stages import finish_stopped

    spec = load_pipeline(pipeline)
    budget = job_budget(spec, price_in, price_out, budget_tokens, budget_usd)
    opts = RunOptions(run_dir=run_dir, shard=parse_shard(shard), ray_address=ray, from_stage=from_stage,
                      dry_run=dry_run, backend_overrides=backend, input=input, budget=budget)
    engine = Engine(spec, opts)
    result = engine.run()
    _print_result(result, dry_run)
    if dry_run:
        for est in estimate_pipeline(engine, budget):
            typer.echo("\n".join(render_estimate(est)))
        return
    stopped = next((e for e in result["manifest"].get("stages", {}).values() if e.get("status") == "stopped-budget"),
                   {})
    finish_stopped(engine.stopped, f"the finished work is kept under {result['run_dir']} (manifest.json)",
                   (stopped.get("summary") or {}).get("budget"))


def _print_result(result: dict, dry_run: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{'plan' if dry_run else 'run'}: {result['run_dir']}", title_justify="left")
    table.add_column("stage", style="bold")
    table.add_column("action")
    table.add_column("in", justify="right")
    table.add_column("out", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("tokens", justify="right")
    stages = result["manifest"].get("stages", {})
    for name, action in result["plan"]:
        e = stages.get(name, {})
        c = e.get("counts", {})
        t = (e.get("tokens") or {}).get("total", "")
        table.add_row(name, action, str(c.get("in", "")), str(c.get("out", "")), str(e.get("seconds", "")), str(t))
    Console().print(table)
    if not dry_run:
        typer.echo(f"manifest: {Path(result['run_dir']) / 'manifest.json'}")


def register(app: typer.Typer) -> None:
    config_command(app, "run", None, backend=True)(run)
