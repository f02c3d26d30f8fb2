"""`dataforge backends`: what is configured, whether it answers, which model, and how fast it is on
a short probe — so a misconfigured server is found in seconds, not an hour into a run."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import backend_config, config_command


def backends(
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Time a short generation (tokens/s).")] = True,
    probe_tokens: Annotated[int, typer.Option("--probe-tokens", min=1, help="Tokens to generate in the probe.")] = 32,
    *, backend: dict,
) -> None:
    """Show the configured backend (and the embedded default), check it answers, probe its speed."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..llm.probe import probe_backends

    cfg = backend_config({**backend, "no_cache": True})
    rows = probe_backends(cfg, probe=probe, probe_tokens=probe_tokens)
    table = Table(title="backends", title_justify="left", expand=False)
    for col in ("backend", "status", "model (profile)", "tok/s"):
        table.add_column(col, no_wrap=col != "model (profile)", overflow="fold")
    table.add_column("detail", overflow="fold", min_width=20)
    for r in rows:
        tps = f"{r['tokens_per_s']:.1f}" if r.get("tokens_per_s") else "-"
        name = f"{r['backend']} *" if r["configured"] else r["backend"]
        model_col = f"{r.get('model') or '-'}" + (f" ({r['profile']})" if r.get("profile") else "")
        table.add_row(name, r["status"], escape(model_col), tps, escape(r.get("detail") or ""))
    Console().print(table)
    Console().print("* = the configured backend (what generation commands will use)")
    key_var, key_state = cfg.api_key_env, "set" if cfg.api_key() else "not set"
    Console().print(f"credentials: ${key_var} is {key_state} (the value is never stored or shown)")
    if not any(r["configured"] and r["status"] == "ok" for r in rows):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    config_command(app, "backends", None, backend=True)(backends)
