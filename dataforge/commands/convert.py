"""`dataforge convert`: any supported input format to Record / Alpaca / chat JSONL or Parquet, streaming.

Bad input items never stop the run and never vanish: they go to ``<OUT>.bad-lines.jsonl`` and are counted
by reason in the closing summary (``--strict`` stops at the first one instead, naming file and line).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import Field

from ..errors import DataforgeError
from ..io import OUT_FORMATS, ReadStats, RecordWriter, RejectSink, count_items, read_records
from ..progress import progress_bar
from ..shard import parse_shard, select
from ..stage import Cli, InputConfig, SideFiles
from ..stage.config import IO_PANEL, OutFormat
from ._common import emit_summary
from ._options import config_command


class ConvertConfig(InputConfig):
    """Options of `dataforge convert`."""

    to: Annotated[Optional[OutFormat], Cli("--to", "--out-format", panel=IO_PANEL,
                                           default_text="parquet for a *.parquet OUT, else record")] = Field(
        None, description="output format")


def output_format_for(output_path: str | Path, to: str | None) -> str:
    """The explicit `--to`, or what the output's suffix says (``.parquet``), else Record JSONL."""
    if to:
        if to not in OUT_FORMATS:
            raise DataforgeError(f"unknown output format {to!r}; choose from {', '.join(OUT_FORMATS)}")
        return to
    return "parquet" if str(output_path).lower().endswith(".parquet") else "record"


def run_convert(input_path: str | Path, output_path: str | Path, cfg: ConvertConfig | None = None, *,
                progress: bool = True) -> dict[str, Any]:
    """Stream `input_path` into `output_path` (atomic) and return a JSON-able summary."""
    cfg = cfg or ConvertConfig()
    out_fmt = output_format_for(output_path, cfg.to)
    shard = parse_shard(cfg.shard)
    stats = ReadStats()
    rejects_path = SideFiles(output_path).bad_lines
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


def register(app: typer.Typer) -> None:
    @config_command(app, "convert", ConvertConfig)
    def convert(
        input_path: Path = typer.Argument(..., metavar="IN", help="Input file or saved HF dataset folder."),
        output: Path = typer.Option(..., "-o", "--output", help="Output file (written atomically)."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
        *, cfg: ConvertConfig,
    ) -> None:
        """Convert between formats: Record/Self-Instruct/Alpaca/chat JSONL, JSON arrays, Parquet, HF dirs.

        The output format defaults to parquet for a *.parquet OUT, else Record JSONL. Bad items go to
        OUT.bad-lines.jsonl (file, line, raw text, reason) and are counted in the closing summary.
        """
        emit_summary(run_convert(input_path, output, cfg), "convert", as_json)
