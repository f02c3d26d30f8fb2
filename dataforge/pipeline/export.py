"""The export stage: the records a job keeps, in the format the trainer or a hub upload wants.

It writes every kept record to the stage output in Record format (so later stages and `merge` can
read them back with lineage intact) and, when `path` is set, the same records in `format` there too.
Records left out are counted by status, never silently dropped.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..io import OUT_FORMATS, RecordWriter, RejectSink, read_records, rejects_path_for


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["record", "alpaca", "chat", "parquet"] = Field(
        "alpaca", description=f"format of the copy written to `path` ({', '.join(OUT_FORMATS)})")
    path: str | None = Field(None, description="also write the kept records here (relative to the CWD)")
    statuses: list[Literal["accepted", "review", "rejected", "pending"]] = Field(
        default_factory=lambda: ["accepted", "pending"],
        description="which statuses are kept (pending = never judged, e.g. no filter stage)")
    require_output: bool = Field(True, description="leave out records with an empty response")


def run_export(input_path, output_path, cfg: ExportConfig, *, llm=None, progress: bool = True) -> dict:
    """Write the kept records to `output_path` (Record JSONL) and to `cfg.path` in `cfg.format`."""
    t0 = time.perf_counter()
    keep = set(cfg.statuses)
    left_out: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    n_in = 0
    extra = RecordWriter(cfg.path, cfg.format) if cfg.path else None
    try:
        empty = Path(input_path).is_file() and Path(input_path).stat().st_size == 0  # nothing kept upstream
        with RejectSink(rejects_path_for(output_path)) as sink, RecordWriter(output_path, "record") as w:
            for r in ([] if empty else read_records(input_path, rejects=sink)):
                n_in += 1
                if r.status not in keep:
                    left_out[f"status:{r.status}"] += 1
                    continue
                if cfg.require_output and not r.output.strip():
                    left_out["empty_output"] += 1
                    continue
                by_status[r.status] += 1
                w.write(r)
                if extra is not None:
                    extra.write(r)
        if extra is not None:
            extra.close()
    except BaseException:
        if extra is not None:
            extra.abort()
        raise
    return {
        "stage": "export",
        "in": n_in,
        "out": sum(by_status.values()),
        "by_status": dict(by_status),
        "left_out": dict(left_out),
        "bad_input_lines": sink.total,
        "format": cfg.format,
        "path": str(Path(cfg.path).resolve()) if cfg.path else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
