"""`dataforge convert`: any supported input format to Record / Alpaca / chat JSONL or Parquet, streaming.

Bad input items never stop the run and never vanish: they go to ``<OUT>.rejects.jsonl`` and are counted
by reason in the closing summary (``--strict`` stops at the first one instead, naming file and line).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import BaseModel, Field

from ..errors import DataforgeError
from ..io import IN_FORMATS, OUT_FORMATS, ReadStats, RecordWriter, RejectSink, count_items, read_records, \
    rejects_path_for
from ..progress import progress_bar
from ._common import FormatOpt, ShardOpt, StrictOpt, ToOpt
from ..shard import parse_shard, select


class ConvertConfig(BaseModel):
    """Options of `dataforge convert` (also usable as a pipeline step)."""

    format: str = Field("auto", description=f"input format: {'|'.join(IN_FORMATS)}")
    to: Optional[str] = Field(None, description=f"output format: {'|'.join(OUT_FORMATS)}; "
                                                 "default parquet for a .parquet output, else record")
    strict: bool = Field(False, description="stop at the first bad input item with an error naming file:line")
    shard: Optional[str] = Field(None, description="keep only shard i/n of the records (by record id)")


def output_format_for(output_path: str | Path, to: str | None) -> str:
    """The explicit `--to`, or what the output's suffix says (``.parquet``), else Record JSONL."""
    if to:
        if to not in OUT_FORMATS:
            raise DataforgeError(f"unknown output format {to!r}; choose from {', '.join(OUT_FORMATS)}")
        return to
    return "parquet" if str(output_path).lower().endswith(".parquet") else "record"


def run_convert(input_path: str | Path, output_path: str | Path, cfg: ConvertConfig | None = None, *,
                llm: Any = None, progress: bool = True) -> dict[str, Any]:
    """Stream `input_path` into `output_path` (atomic) and return a JSON-able summary."""
    cfg = cfg or ConvertConfig()
    out_fmt = output_format_for(output_path, cfg.to)
    shard = parse_shard(cfg.shard)
    stats = ReadStats()
    rejects_path = rejects_path_for(output_path)
    started = time.perf_counter()
    with RejectSink(rejects_path) as sink, RecordWriter(output_path, out_fmt) as writer, \
            progress_bar("convert", total=count_items(input_path) if progress else None, unit="item") as bar:
        records = read_records(input_path, cfg.format, rejects=sink, strict=cfg.strict, stats=stats)
        seen = 0
        for record in select(records, shard):
            writer.write(record)
            if progress and stats.items != seen:
                bar.advance(stats.items - seen)
                seen = stats.items
        bar.advance(stats.items - seen)
    wall = time.perf_counter() - started
    return {
        "input": str(input_path),
        "output": str(output_path),
        "in_format": stats.fmt,
        "out_format": out_fmt,
        "shard": cfg.shard,
        "items_in": stats.items,
        "records_in": stats.read,
        "records_out": writer.count,
        "bad": stats.bad,
        "bad_by_reason": dict(stats.reasons.most_common()),
        "rejects": str(rejects_path) if stats.bad else None,
        "wall_s": round(wall, 3),
        "records_per_s": round(stats.read / wall, 1) if wall > 0 else None,
    }


def print_summary(title: str, summary: dict[str, Any], as_json: bool = False) -> None:
    """The closing summary (kept for `validate`, which shares it)."""
    from ._common import emit_summary

    emit_summary(summary, title, as_json)


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert(
        input_path: Path = typer.Argument(..., metavar="IN", help="Input file or saved HF dataset folder."),
        output: Path = typer.Option(..., "-o", "--output", help="Output file (written atomically)."),
        fmt: FormatOpt = "auto",
        to: ToOpt = None,
        strict: StrictOpt = False,
        shard: ShardOpt = None,
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Convert between formats: Record/Self-Instruct/Alpaca/chat JSONL, JSON arrays, Parquet, HF dirs.

        The output format defaults to parquet for a *.parquet OUT, else Record JSONL. Bad items go to OUT.rejects.jsonl (file, line, raw text, reason) and are counted in the closing summary.
        """
        cfg = ConvertConfig(format=fmt, to=to, strict=strict, shard=shard)
        summary = run_convert(input_path, output, cfg)
        print_summary("convert", summary, as_json)
