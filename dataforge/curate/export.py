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

from ..errors import DataforgeError
from ..io import OUT_FORMATS
from ..records import Record
from ..stage import Stage, StageConfig, StageContext, Work


class ExportConfig(StageConfig):
    """Options of the `export` stage."""

    format: Literal["record", "alpaca", "chat", "parquet"] = Field(
        "alpaca", description=f"format of the copy written to `path` ({', '.join(OUT_FORMATS)})")
    path: str | None = Field(None, description="also write the kept records here (relative to the CWD)")
    statuses: list[Literal["accepted", "review", "rejected", "pending"]] = Field(
        default_factory=lambda: ["accepted", "pending"],
        description="which statuses are kept (pending = never judged, e.g. no filter stage)")
    require_output: bool = Field(True, description="leave out records with an empty response")
    card: bool = Field(False, description="also write a Hugging Face dataset card, README.md, beside the export "
                       "(in the copy's folder when `path` is set); in a pipeline it takes the run's manifest")
    card_license: str = Field("unknown", description="the licence the card states (a Hub licence id)")


class ExportWork(Work):
    """Which records of a batch the export keeps, and why the others are left out (here or on Ray)."""

    def __init__(self, cfg: ExportConfig):
        self.statuses, self.require_output = set(cfg.statuses), cfg.require_output

    def run(self, batch: list[Record]) -> list[tuple[Record, str | None]]:
        out = []
        for r in batch:
            if r.status not in self.statuses:
                out.append((r, f"status:{r.status}"))
            elif self.require_output and not r.output.strip():
                out.append((r, "empty_output"))
            else:
                out.append((r, None))
        return out


class ExportStage(Stage[ExportConfig]):
    """Keep the records with the chosen statuses (and a response); write them, and a copy in another format."""

    name = "export"
    Config = ExportConfig
    record_parallel = True
    fan_out = False  # its copy is one file: the driver writes it, the workers only decide (`ExportWork`)
    parallel_work = True
    journaled = False  # a re-run redoes it in seconds
    batch_size = 1024

    def __init__(self, cfg: ExportConfig):
        super().__init__(cfg)
        self.left_out: Counter[str] = Counter()
        self.stats = None

    def _card_path(self, output: Path) -> Path:
        return (Path(self.cfg.path) if self.cfg.path else output).parent / "README.md"

    def copies(self) -> list[tuple[Path, str]]:
        return [(Path(self.cfg.path), self.cfg.format)] if self.cfg.path else []

    def for_shard(self, i: int, n: int) -> ExportConfig:
        """Each shard writes its copy to `<path stem>.shard-i-of-n<suffix>`, not over the others'."""
        if not self.cfg.path:
            return self.cfg
        p = Path(self.cfg.path)
        return self.cfg.model_copy(update={"path": str(p.with_name(f"{p.stem}.shard-{i}-of-{n}{p.suffix}"))})

    async def process(self, records: Iterator[Record], ctx: StageContext) -> None:
        from .card import RecordStats, may_overwrite

        if self.cfg.card and not may_overwrite(self._card_path(ctx.side.output)):
            raise DataforgeError(f"{self._card_path(ctx.side.output)}: a README.md that dataforge did not write is "
                                 "there; move it, or export elsewhere (--card never overwrites it)")
        self.stats = RecordStats() if self.cfg.card else None

        def batches() -> Iterator[list[Record]]:
            batch: list[Record] = []
            for r in records:
                batch.append(r)
                if len(batch) >= self.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

        async for decided in ctx.map(ExportWork(self.cfg), batches()):
            for r, why in decided:
                if why is None:
                    ctx.out.write(r)
                    if self.stats is not None:
                        self.stats.add(r)
                else:
                    self.left_out[why] += 1

    def finish(self, ctx: StageContext) -> dict[str, Any]:
        if self.stats is not None and self.stats.n:
            ctx.files["card"] = str(self._write_card(ctx.side.output))
        return {"left_out": dict(self.left_out), "format": self.cfg.format,
                "path": str(Path(self.cfg.path).resolve()) if self.cfg.path else None}

    def _write_card(self, output: Path) -> Path:
        """README.md beside the export: the exported records, what the export left out, the run's manifest."""
        from ..io import write_text_atomic
        from .card import CardOptions, card_from

        data = Path(self.cfg.path) if self.cfg.path else output
        manifest = output.parent.parent / "manifest.json"  # a pipeline's: <run_dir>/<stage>/<output>
        aside = {"left out by the export": {"records": sum(self.left_out.values()),
                                            "by_reason": dict(self.left_out)}} if self.left_out else {}
        card = card_from(self.stats, CardOptions(license=self.cfg.card_license, data_files=data.name), aside,
                         manifest if manifest.is_file() else None)
        path = self._card_path(output)
        write_text_atomic(path, str(card).rstrip("\n") + "\n")
        return path


def run_export(input_path, output_path, cfg: ExportConfig | None = None, **kwargs: Any):
    """Python entry point: `run_stage` for this stage (same keyword arguments)."""
    from ..stage import run_stage

    return run_stage(ExportStage, input_path, output_path, cfg, **kwargs)
