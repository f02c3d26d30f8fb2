"""`dataforge stats`: what is in a dataset, read with the same streaming reader as every stage.

Counts by status, task, ``meta.source`` and ``lineage.generator``; length distributions (characters) of
instruction, input and output as percentiles. Memory grows by 12 bytes per record (three lengths), never
with the size of the text.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from ..io import ReadStats, RejectSink, count_items, read_records
from ..progress import progress_bar
from ..shard import select
from ..stage import InputConfig
from ._options import config_command

TEXT_FIELDS = ("instruction", "input", "output")
PERCENTILES = (10, 25, 50, 75, 90, 99)
NONE_LABEL = "(none)"


class StatsConfig(InputConfig):
    """Options of `dataforge stats`: the input options every reader shares."""


def length_summary(lengths: array) -> dict[str, float]:
    """min / percentiles / max / mean of a list of lengths (all 0 for an empty list)."""
    import numpy as np

    if not lengths:
        return {"min": 0, **{f"p{q}": 0 for q in PERCENTILES}, "max": 0, "mean": 0.0}
    a = np.asarray(lengths)
    pct = np.percentile(a, PERCENTILES, method="nearest")
    return {"min": int(a.min()), **{f"p{q}": int(v) for q, v in zip(PERCENTILES, pct)},
            "max": int(a.max()), "mean": round(float(a.mean()), 1)}


def compute_stats(input_path: str | Path, cfg: StatsConfig | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Stream `input_path` once and return counts and length percentiles as a JSON-able dict."""
    cfg = cfg or StatsConfig()
    read = ReadStats()
    counters: dict[str, Counter] = {"status": Counter(), "task": Counter(), "source": Counter(),
                                    "generator": Counter()}
    lengths = {f: array("I") for f in TEXT_FIELDS}
    empty = Counter()
    with progress_bar("stats", total=count_items(input_path) if progress else None, unit="item") as bar:
        seen = 0
        for r in select(read_records(input_path, cfg.format, rejects=RejectSink(None), strict=cfg.strict, stats=read),
                        cfg.shard):
            counters["status"][r.status] += 1
            counters["task"][r.task or NONE_LABEL] += 1
            counters["source"][str(r.meta.get("source") or NONE_LABEL)] += 1
            counters["generator"][r.lineage.generator or NONE_LABEL] += 1
            for f in TEXT_FIELDS:
                n = len(getattr(r, f))
                lengths[f].append(n)
                if n == 0:
                    empty[f] += 1
            if progress and read.items != seen:
                bar.advance(read.items - seen)
                seen = read.items
        bar.advance(read.items - seen)
    return {
        "file": str(input_path),
        "format": read.fmt,
        "records": read.read,
        "items": read.items,
        "bad": read.bad,
        "bad_by_reason": dict(read.reasons.most_common()),
        "by_status": dict(counters["status"].most_common()),
        "by_task": dict(counters["task"].most_common()),
        "by_source": dict(counters["source"].most_common()),
        "by_generator": dict(counters["generator"].most_common()),
        "empty": {f: empty[f] for f in TEXT_FIELDS},
        "length_chars": {f: length_summary(lengths[f]) for f in TEXT_FIELDS},
    }


def _count_table(title: str, counts: dict[str, int], total: int, top: int):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column(title.split()[-1], overflow="fold")
    table.add_column("records", justify="right")
    table.add_column("share", justify="right")
    items = list(counts.items())
    shown, rest = items[:top], items[top:]
    if rest:
        shown.append((f"({len(rest)} more)", sum(n for _, n in rest)))
    for label, n in shown:
        table.add_row(label, f"{n:,}", f"{100 * n / total:.1f}%" if total else "-")
    return table


def print_stats(s: dict[str, Any], top: int = 15) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{s['file']}[/] ({s['format']}): {s['records']:,} records from {s['items']:,} items, "
                  f"{s['bad']:,} bad" + (f" ({', '.join(f'{k}: {v}' for k, v in s['bad_by_reason'].items())})"
                                         if s["bad"] else ""))
    for key, title in (("by_status", "by status"), ("by_task", "by task"), ("by_source", "by meta.source"),
                       ("by_generator", "by lineage.generator")):
        console.print(_count_table(title, s[key], s["records"], top))
    lengths = Table(title="length in characters", title_justify="left")
    lengths.add_column("field", no_wrap=True)
    cols = list(next(iter(s["length_chars"].values())))
    for c in cols:
        lengths.add_column(c, justify="right")
    lengths.add_column("empty", justify="right")
    for f, summary in s["length_chars"].items():
        lengths.add_row(f, *(f"{summary[c]:,}" for c in cols), f"{s['empty'][f]:,}")
    console.print(lengths)


def register(app: typer.Typer) -> None:
    @config_command(app, "stats", StatsConfig)
    def stats(
        input_path: Path = typer.Argument(..., metavar="IN", help="Input file or saved HF dataset folder."),
        as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables."),
        top: int = typer.Option(15, "--top", min=1, help="Rows per count table (the rest are summed)."),
        *, cfg: StatsConfig,
    ) -> None:
        """Counts by status, task, meta.source and generator; length percentiles of instruction/input/output."""
        summary = compute_stats(input_path, cfg)
        if as_json:
            typer.echo(json.dumps(summary, ensure_ascii=False, indent=2))
        else:
            print_stats(summary, top=top)
