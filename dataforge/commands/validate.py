"""`dataforge validate`: check a file with the same reader every stage uses, before spending compute on it.

Prints every bad item as ``file:line: reason`` (the first ``--show`` of them), a closing summary, and exits
with status 1 when any item is bad (2 for an unreadable file or, with ``--strict``, at the first bad item).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from ..io import ReadStats, RejectSink, count_items, read_records
from ..progress import progress_bar
from ..shard import select
from ..stage import InputConfig
from ._common import emit_summary
from ._options import config_command


class _ListingSink(RejectSink):
    """A reject sink that also keeps the first `keep` rejects to show the user."""

    def __init__(self, path: Optional[Path], keep: int):
        super().__init__(path)
        self.keep = keep
        self.shown: list[tuple[str, int, str]] = []

    def add(self, file: str, line: int, raw: str | bytes, reason: str) -> None:
        super().add(file, line, raw, reason)
        if len(self.shown) < self.keep:
            self.shown.append((file, line, reason))


def run_validate(input_path: str | Path, cfg: InputConfig | None = None, *, rejects_path: str | Path | None = None,
                 show: int = 20, progress: bool = True) -> tuple[dict[str, Any], list[tuple[str, int, str]]]:
    """Read all of `input_path`; return the summary and the first `show` bad items (file, line, reason)."""
    cfg = cfg or InputConfig()
    stats = ReadStats()
    started = time.perf_counter()
    with _ListingSink(Path(rejects_path) if rejects_path else None, show) as sink, \
            progress_bar("validate", total=count_items(input_path) if progress else None, unit="item") as bar:
        seen = 0
        for _ in select(read_records(input_path, cfg.format, rejects=sink, strict=cfg.strict, stats=stats), cfg.shard):
            if progress and stats.items != seen:
                bar.advance(stats.items - seen)
                seen = stats.items
        bar.advance(stats.items - seen)
    summary = {
        "file": str(input_path),
        "format": stats.fmt,
        "items": stats.items,
        "records": stats.read,
        "bad": stats.bad,
        "bad_by_reason": dict(stats.reasons.most_common()),
        "rejects": str(rejects_path) if rejects_path and stats.bad else None,
        "wall_s": round(time.perf_counter() - started, 3),
        "ok": stats.bad == 0,
    }
    return summary, sink.shown


def register(app: typer.Typer) -> None:
    @config_command(app, "validate", InputConfig)
    def validate(
        input_path: Path = typer.Argument(..., metavar="IN", help="Input file or saved HF dataset folder."),
        rejects: Optional[Path] = typer.Option(None, "--rejects", help="Also write the bad items to this JSONL."),
        show: int = typer.Option(20, "--show", min=0, help="How many bad items to list."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
        *, cfg: InputConfig,
    ) -> None:
        """Check that every item of IN reads as a Record; exit 1 if any is bad."""
        summary, shown = run_validate(input_path, cfg, rejects_path=rejects, show=show)
        if not as_json:
            for file, line, reason in shown:
                typer.echo(f"{file}:{line}: {reason}")
            if summary["bad"] > len(shown):
                typer.echo(f"... and {summary['bad'] - len(shown):,} more bad items"
                           + ("" if rejects else " (use --rejects FILE to list them all)"))
        emit_summary(summary, "validate", as_json)
        if summary["bad"]:
            raise typer.Exit(1)
