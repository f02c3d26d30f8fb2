"""How commands end: the closing summary as a table, or as one JSON object with ``--json``."""

from __future__ import annotations

from typing import Any, Mapping


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows.extend(_flatten(v, key + "."))
        else:
            rows.append((key, v))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)


def print_summary(summary: Mapping[str, Any], title: str = "summary") -> None:
    """The closing summary of a command as a two-column rich table on stdout (nested dicts dotted)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in _flatten(summary):
        table.add_row(key, _fmt(value))
    Console().print(table)


def emit_summary(summary: Mapping[str, Any], title: str, as_json: bool = False) -> None:
    """A command's closing summary: the table above, or one JSON object on stdout with ``--json``."""
    if as_json:
        import json

        import typer

        typer.echo(json.dumps(summary, ensure_ascii=False, indent=2, default=str))
        return
    print_summary({k: ("none" if v is None or v == {} else v) for k, v in summary.items()}, title=title)
