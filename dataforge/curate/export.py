"""The export stage: the records a job keeps, in the format the trainer or a hub upload wants.

It writes every kept record to its output in Record format (so later stages and `merge` read them back
with lineage intact) and, when `path` is set, the same records in `format` there too. Records left out
are counted by reason, never silently dropped.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field

from ..io import OUT_FORMATS
from ..records import Record
from ..stage import Stage, StageConfig, StageContext


class ExportConfig(StageConfig):
    """Options of the `export` stage."""

    format: Literal["record", "alpaca", "chat", "parquet"] = Field(
        "alpaca", description=f"format of the copy written to `path` ({', '.join(OUT_FORMATS)})")
    path: str | None = Field(None, description="also write the kept records here (relative to the CWD)")
    statuses: list[Literal["accepted", "review", "rejected", "pending"]] = Field(
        default_factory=lambda: ["accepted", "pending"],
        description="which statuses are kept (pending = never judged, e.g. no filter stage)")
    require_output: bool = Field(True, description="leave out records with an empty response")


class ExportStage(Stage[ExportConfig]):
    """Keep the records with the chosen statuses (and a response); write them, and a copy in another format."""

    name = "export"
    Config = ExportConfig
    record_parallel = True
    fan_out = False  # cheap, and its copy is one file: splitting it over Ray workers gains nothing
    journaled = False  # a re-run redoes it in seconds

    def __init__(self, cfg: ExportConfig):
        super().__init__(cfg)
        self.left_out: Counter[str] = Counter()

    def copies(self) -> list[tuple[Path, str]]:
        return [(Path(self.cfg.path), self.cfg.format)] if self.cfg.path else []

    def for_shard(self, i: int, n: int) -> ExportConfig:
        """Each shard writes its copy to `<path stem>.shard-i-of-n<suffix>`, not over the others'."""
        if not self.cfg.path:
            return self.cfg
        p = Path(self.cfg.path)
        return self.cfg.model_copy(update={"path": str(p.with_name(f"{p.stem}.shard-{i}-of-{n}{p.suffix}"))})

    def process(self, records: Iterator[Record], ctx: StageContext) -> None:
        keep = set(self.cfg.statuses)
        for r in records:
            if r.status not in keep:
                self.left_out[f"status:{r.status}"] += 1
            elif self.cfg.require_output and not r.output.strip():
                self.left_out["empty_output"] += 1
            else:
                ctx.out.write(r)

    def finish(self, ctx: StageContext) -> dict[str, Any]:
        return {"left_out": dict(self.left_out), "format": self.cfg.format,
                "path": str(Path(self.cfg.path).resolve()) if self.cfg.path else None}


def run_export(input_path, output_path, cfg: ExportConfig | None = None, **kwargs: Any):
    """Python entry point: `run_stage` for this stage (same keyword arguments)."""
    from ..stage import run_stage

    return run_stage(ExportStage, input_path, output_path, cfg, **kwargs)
