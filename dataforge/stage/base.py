"""`Stage`: a config, `process` over the input records, and `finish` that writes what they became.

A new stage is one config class, one `Stage` subclass and one line in the registry
(`dataforge/pipeline/stages.py`); the command line, the pipeline stage, resuming, side files, the
progress bar and the summary come from the runner (`runner.run_stage`). See the README's "How a stage
works" for a complete example.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, ClassVar, Generic, Iterable, Iterator, TypeVar

from ..errors import DataforgeError
from ..io import ReadStats, RejectSink, read_records
from ..progress import Bar, progress_bar
from ..records import Record
from ..shard import select
from .config import StageConfig
from .journal import StageJournal
from .outputs import Outputs
from .sidefiles import SideFiles
from .work import LocalMapper, Work

if TYPE_CHECKING:
    from ..llm import LLM
    from .estimate import SamplePlan

C = TypeVar("C", bound=StageConfig)


class StageContext:
    """What the runner hands a stage: its input, model, journal, outputs and progress bars."""

    def __init__(self, stage: str, input_path: Path | None, side: SideFiles, cfg: StageConfig, *, progress: bool,
                 llm: "LLM | None", journal: StageJournal | None, outputs: Outputs, empty_ok: bool = False,
                 mapper: Any = None):
        self.stage, self.side, self.cfg, self.progress = stage, side, cfg, progress
        self.input = Path(input_path) if input_path is not None else None  # None: a stage run without input
        self._llm, self.journal, self.out, self.empty_ok = llm, journal, outputs, empty_ok
        self.mapper = mapper if mapper is not None else LocalMapper(llm)
        self.read_stats = ReadStats()
        self.records_in = 0
        self.files: dict[str, str] = {}  # other files the stage wrote (role -> path), listed in the summary
        self.resumed = len(journal.entries) if journal is not None else 0
        self.stopped: str | None = None  # set before `finish` when a budget stopped `process` early

    @property
    def llm(self) -> "LLM":
        """The stage's model (only for stages whose `needs_llm` is true)."""
        if self._llm is None:
            raise DataforgeError(f"{self.stage}: this stage was run without a model")
        return self._llm

    def _empty_input(self) -> bool:
        return self.input is None or (self.empty_ok and self.input.is_file() and self.input.stat().st_size == 0)

    def records(self) -> Iterator[Record]:
        """The input records (format, --shard and --strict applied); bad items go to the bad-lines file.
        No usable record at all is an error (unless the caller allowed an empty input)."""
        if not self._empty_input():
            with RejectSink(self.side.bad_lines) as sink:
                for r in select(read_records(self.input, self.cfg.input_format(), rejects=sink,
                                             strict=self.cfg.strict_input(), stats=self.read_stats),
                                self.cfg.shard_spec()):
                    self.records_in += 1
                    yield r
        if self.records_in == 0 and not self.empty_ok and self.input is not None:
            shard = self.cfg.shard_spec()
            bad = f" ({self.read_stats.bad} bad lines: {self.side.bad_lines})" if self.read_stats.bad else ""
            raise DataforgeError(f"{self.input}: no usable records" + (f" in shard {shard}" if shard else "") + bad)

    def read_again(self) -> Iterator[Record]:
        """The same records once more, for a stage that needs a first pass (bad items not counted twice)."""
        if self._empty_input():
            return
        yield from select(read_records(self.input, self.cfg.input_format(), rejects=RejectSink(None),
                                       strict=self.cfg.strict_input()), self.cfg.shard_spec())

    def map(self, work: Work, batches: Iterable[Any]) -> AsyncIterator[Any]:
        """`work` over `batches`, here or on Ray workers (the runner's mapper), results in batch order."""
        return self.mapper.map(work, batches)

    def bar(self, description: str, total: float | None = None, unit: str = "rec") -> AbstractContextManager[Bar]:
        """A progress bar (rate and ETA), or a silent one when the caller asked for none."""
        return progress_bar(description, total=total, unit=unit, enabled=self.progress)


class Stage(ABC, Generic[C]):
    """One step of the data flow. Subclasses set `name` and `Config` and implement `process` and `finish`."""

    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]]
    record_parallel: ClassVar[bool] = False  # a record's outputs depend on that record alone (shards, Ray)
    fan_out: ClassVar[bool | None] = None  # Ray may split it into batches (None: when record_parallel)
    journaled: ClassVar[bool] = True  # keeps `<out>.partial.jsonl`, so a killed run resumes
    version: ClassVar[int] = 1  # of the journal entries: bump when their meaning changes
    output_neutral: ClassVar[frozenset[str]] = frozenset()  # fields a resume may change (how, not what)
    side_inputs: ClassVar[tuple[str, ...]] = ()  # fields naming files whose content shapes the output
    output_name: ClassVar[str] = "records.jsonl"  # its output inside a pipeline's stage folder
    output_is_dir: ClassVar[bool] = False
    cli: ClassVar[bool] = True  # gets a generated `dataforge <name>` command
    owns_run: ClassVar[bool] = False  # reads, resumes and writes on its own (train): `run_alone` is called
    input_optional: ClassVar[bool] = False  # may run without an input file (a seedless generator: magpie)
    input_help: ClassVar[str | None] = None  # what its input is, where that is not "records to work on"
    partial_output: ClassVar[bool] = False  # `finish` can write what is done when a budget stopped it early
    parallel_work: ClassVar[bool] = False  # its `ctx.map` work goes to Ray workers when the job has a ray block

    def __init__(self, cfg: C):
        self.cfg = cfg

    @classmethod
    def can_fan_out(cls) -> bool:
        return cls.record_parallel if cls.fan_out is None else cls.fan_out

    def needs_llm(self) -> bool:
        """Whether this run talks to a model (the runner then opens one, meters it and closes it)."""
        return False

    def fingerprint(self) -> dict[str, Any]:
        """The config fields that decide the output: a journal written under others is not resumed."""
        return self.cfg.model_dump(mode="json", exclude=set(self.output_neutral))

    def sample_plan(self, n_input: int) -> "SamplePlan":
        """How `--dry-run` samples this stage (see `estimate`): by default up to 8 input records with the
        same options, the whole job being n_input / 8 times larger."""
        from .estimate import SamplePlan

        k = min(n_input, 8)
        return SamplePlan(self.cfg, k, n_input / k, f"{k} of {n_input:,} records")

    def sample_scale(self, summary: Any, n_input: int) -> float | None:
        """The job / sample ratio when only the sample run tells it (a plan whose `scale` is None)."""
        return None

    def parallel_requests(self, n_input: int) -> int:
        """Requests the whole job keeps in flight at most (besides the backend's concurrency)."""
        return max(1, n_input)

    def side_input_hashes(self, cfg: StageConfig | None = None) -> dict[str, Any]:
        """Content hashes of the files `side_inputs` name in `cfg` (default: this stage's; a field holds a
        path or a list of paths; a missing file hashes to None): other files, not only other names, mean
        other settings."""
        from ..hashing import file_hash

        fields = (cfg or self.cfg).model_dump(mode="json")
        out: dict[str, Any] = {}
        for f in self.side_inputs:
            value = fields.get(f)
            if isinstance(value, str):
                out[f] = file_hash(value)
            elif isinstance(value, list) and value:
                out[f] = [file_hash(p) for p in value]
        return out

    def side_outputs(self, side: SideFiles) -> dict[str, Path]:
        """Statuses that go to their own file instead of the output (e.g. {"rejected": side.rejected})."""
        return {}

    def copies(self) -> list[tuple[Path, str]]:
        """Extra files that get every record of the output again, each (path, format)."""
        return []

    def extra_outputs(self) -> list[Path]:
        """Files the stage writes outside its output's folder (a pipeline checks they still exist)."""
        return [p for p, _ in self.copies()]

    def for_shard(self, i: int, n: int) -> C:
        """The config for shard i of n of a pipeline run (e.g. to write a copy under a shard's own name)."""
        return self.cfg

    def run_alone(self, input_path: Path, output_path: Path, *, progress: bool) -> dict[str, Any]:
        """The whole run of an `owns_run` stage; returns its details."""
        raise NotImplementedError(f"{self.name}: not a stage that runs alone")

    @abstractmethod
    def process(self, records: Iterator[Record], ctx: StageContext) -> Awaitable[None] | None:
        """Do the work over the input records: journal finished work (`ctx.journal`), write streaming
        output (`ctx.out`). A coroutine where it calls a model."""

    @abstractmethod
    def finish(self, ctx: StageContext) -> dict[str, Any]:
        """Write what is left (`ctx.out`, extra files) and return the stage's own summary details. With
        `partial_output`, also called after a budget stopped `process` (`ctx.stopped` says why): then it
        writes the work that is complete and nothing else."""
