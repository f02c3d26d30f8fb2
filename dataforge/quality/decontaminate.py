"""Keep benchmark items out of training data: the `decontaminate` stage and `filter --decontaminate`.

A record whose prompt or response shares a word n-gram (13 by default) or a long verbatim run of
characters with an item of a benchmark file is rejected with the reason
``contaminated:<file>:<item id>`` and the shared text in ``meta.contamination`` (how it matches:
`contamination.py`). The benchmark files are indexed once; the index is cached under the dataforge
cache folder, keyed by the file's content hash and the settings, so the next run only loads it.

A benchmark file is any format dataforge reads (its records' instruction, input and output are the
item's text; the id is the record's id) or plain text, one item per line (the id is the line number):
a file whose first line is not a JSON object or array, or whose name ends in ``.txt``.

    dataforge decontaminate data.jsonl -o clean.jsonl --decontaminate gsm8k_test.jsonl,mmlu.txt
    dataforge filter data.jsonl -o clean.jsonl --decontaminate gsm8k_test.jsonl
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, Iterable, Iterator

import numpy as np
from pydantic import Field

from ..errors import DataforgeError
from ..hashing import file_hash, stable_hash
from ..io import read_records
from ..io.containers import _open_bytes
from ..records import Record
from ..stage import Cli, IOConfig, SideFiles, Stage, StageConfig, StageContext
from ..stage.procs import default_processes
from ..stage.work import Work
from .contamination import FORMAT, BenchmarkIndex, Hit, Matcher

_D = "Decontamination"
BATCH = 1024


class DecontaminationOptions(StageConfig):
    """The decontamination options, shared by `decontaminate` and `filter` (declared once)."""

    benchmarks: Annotated[list[str], Cli("--decontaminate", "--benchmarks", panel=_D, metavar="FILE,FILE,...")] = \
        Field(default_factory=list, description="benchmark files whose items must not appear in the data (any "
              "format dataforge reads, or plain text with one item per line)")
    ngram: Annotated[int, Cli(panel=_D)] = Field(
        13, ge=3, le=64, description="words in a shared n-gram that make a record contaminated (GPT-3, NeMo Curator: 13)")
    min_item_words: Annotated[int, Cli(panel=_D)] = Field(
        8, ge=1, description="an item shorter than --ngram words matches as a whole if it has at least this many")
    substring_chars: Annotated[int, Cli(panel=_D)] = Field(
        100, ge=0, description="a verbatim run of this many characters of an item is a hit too (0: off)")


def _is_text(path: Path) -> bool:
    """Plain text, one item per line: a .txt name, or a first line that is not JSON."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".txt", ".text")):
        return True
    if path.is_dir() or name.endswith((".parquet", ".jsonl", ".ndjson", ".json")):
        return False
    with _open_bytes(path) as fh:
        head = fh.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return not head.startswith((b"{", b"[")) and not head.startswith(b"PAR1")


def benchmark_items(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(item id, texts) of every item in a benchmark file; a bad line is an error naming file and line
    (a silently skipped item would be a silently missed contamination)."""
    if _is_text(path):
        with _open_bytes(path) as fh:
            for n, raw in enumerate(fh, 1):
                text = raw.decode("utf-8", "replace").strip()
                if text:
                    yield str(n), [text]
        return
    for r in read_records(path, strict=True):
        yield r.id, [r.prompt_text, r.output]


def _settings(opts: DecontaminationOptions) -> dict[str, int]:
    return {"ngram": opts.ngram, "min_item_words": opts.min_item_words, "substring_chars": opts.substring_chars}


def index_for(path: Path, opts: DecontaminationOptions) -> tuple[BenchmarkIndex, bool]:
    """The index of one benchmark file: (index, loaded from the cache?)."""
    from ..io import atomic_open
    from ..paths import default_cache_dir

    if not path.exists():
        raise DataforgeError(f"{path}: no such benchmark file")
    s = _settings(opts)
    key = f"{file_hash(path)}-{stable_hash({**s, 'format': FORMAT})}"
    cached = default_cache_dir() / "decontamination" / f"{key}.npz"
    if cached.is_file():
        try:
            return _load(cached, s), True
        except (OSError, ValueError, KeyError):  # a damaged cache file is rebuilt, not trusted
            pass
    idx = BenchmarkIndex.build(benchmark_items(path), ngram=opts.ngram, min_words=opts.min_item_words,
                               substring_chars=opts.substring_chars)
    if not idx.items:
        raise DataforgeError(f"{path}: no benchmark items in it")
    cached.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{k}.hash": h for k, (h, _) in idx.tables.items()} | {f"{k}.item": o for k, (_, o) in idx.tables.items()}
    header = json.dumps({"items": idx.items, "words": list(idx.words)})
    with atomic_open(cached, "wb") as fh:
        np.savez(fh, header=np.frombuffer(header.encode("utf-8"), dtype=np.uint8),
                 values=np.array(list(idx.words.values()), dtype=np.uint64), **arrays)
    return idx, False


def _load(path: Path, s: dict[str, int]) -> BenchmarkIndex:
    with np.load(path) as z:
        header = json.loads(z["header"].tobytes().decode("utf-8"))
        idx = BenchmarkIndex(s["ngram"], s["min_item_words"], s["substring_chars"], header["items"],
                             dict(zip(header["words"], z["values"].tolist())))
        for name in z.files:
            if name.endswith(".hash"):
                kind = name[:-5]
                idx.tables[kind] = (z[name], z[f"{kind}.item"])
    return idx


def _labels(paths: list[str]) -> list[str]:
    """How a file is named in reasons: its file name, or the path as given when two names clash."""
    names = [Path(p).name for p in paths]
    return [n if names.count(n) == 1 else p for n, p in zip(names, paths)]


class Decontaminator:
    """The benchmark index of a run and what it found; `check` rejects the contaminated records (here, or
    `apply` with hits that worker processes looked up: `LookupWork`)."""

    def __init__(self, opts: DecontaminationOptions):
        if not opts.benchmarks:
            raise DataforgeError("decontamination needs at least one benchmark file (--decontaminate FILE)")
        t0 = time.perf_counter()
        parts, self.cached = [], []
        for p in opts.benchmarks:
            idx, hit = index_for(Path(p), opts)
            parts.append(idx)
            self.cached.append(hit)
        self._parts, self._labels = parts, _labels(opts.benchmarks)
        self.items = {label: len(idx.items) for label, idx in zip(self._labels, parts)}
        self._matcher: Matcher | None = None
        self.index_s = time.perf_counter() - t0
        self.found: Counter[str] = Counter()  # benchmark label -> records rejected
        self.how: Counter[str] = Counter()
        self.checked = 0
        self.check_s = 0.0

    @property
    def matcher(self) -> Matcher:
        """The merged index's lookup structure, built on first use: a driver whose workers do the lookups
        never builds it."""
        if self._matcher is None:
            self._matcher = BenchmarkIndex.merge(self._parts, self._labels).matcher()
            self._parts = []
        return self._matcher

    def lookup(self, texts: list[list[str] | None]) -> tuple[list[Hit | None], float]:
        """(the first hit of each record's texts, None for a record not to check; seconds it took)."""
        t0 = time.perf_counter()
        todo = [k for k, t in enumerate(texts) if t is not None]
        found = self.matcher.check([texts[k] for k in todo])
        hits: list[Hit | None] = [None] * len(texts)
        for k, hit in zip(todo, found):
            hits[k] = hit
        return hits, time.perf_counter() - t0

    def check(self, records: list[Record]) -> list[Record]:
        """The records, each contaminated one rejected (a record already rejected passes unchanged)."""
        return self.apply(records, *self.lookup(texts_of(records)))

    def apply(self, records: list[Record], hits: list[Hit | None], seconds: float) -> list[Record]:
        """The records with `hits` (from `lookup`, here or in a worker) applied, counted in the summary."""
        self.check_s += seconds
        self.checked += sum(r.status != "rejected" for r in records)
        return [r if hit is None else self.reject(r, hit) for r, hit in zip(records, hits)]

    def reject(self, r: Record, hit: Hit) -> Record:
        label = hit.item.rsplit(":", 1)[0]
        self.found[label] += 1
        self.how[hit.by] += 1
        return r.model_copy(update={
            "status": "rejected", "reasons": [*r.reasons, f"contaminated:{hit.item}"],
            "meta": {**r.meta, "contamination": {"item": hit.item, "by": hit.by, "match": hit.match}}})

    def counts(self) -> Counter[str]:
        """What `check` found so far, as counters that add up over processes (a gate's Ray workers)."""
        c: Counter[str] = Counter({f"contaminated:{k}": n for k, n in self.found.items()})
        c.update({f"matched_by:{k}": n for k, n in self.how.items()})
        c.update({"checked": self.checked, "check_ms": round(self.check_s * 1000)})
        return c

    def details(self, counts: Counter[str] | None = None) -> dict[str, Any]:
        """The summary's figures: this index's, and what `check` found here or, `counts`, everywhere."""
        c = self.counts() if counts is None else counts
        found = {k.split(":", 1)[1]: n for k, n in c.items() if k.startswith("contaminated:") and n}
        how = {k.split(":", 1)[1]: n for k, n in c.items() if k.startswith("matched_by:") and n}
        check_s = c.get("check_ms", 0) / 1000
        return {"benchmarks": self.items, "index_from_cache": all(self.cached), "index_s": round(self.index_s, 3),
                "checked": c.get("checked", 0), "contaminated": sum(found.values()),
                "contaminated_by_benchmark": found, "matched_by": how,
                "records_per_second": round(c.get("checked", 0) / check_s) if check_s > 0 else None}


def texts_of(records: list[Record]) -> list[list[str] | None]:
    """What is looked up per record: its prompt and response (None: already rejected, not checked)."""
    return [None if r.status == "rejected" else [r.prompt_text, r.output] for r in records]


class LookupWork(Work):
    """The lookups of a batch in a worker process: each worker loads the cached index once (`open`)."""

    def __init__(self, opts: DecontaminationOptions, processes: int):
        self.opts = DecontaminationOptions(**{k: getattr(opts, k) for k in DecontaminationOptions.model_fields})
        self.processes = processes
        self.guard: Decontaminator | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "guard": None}

    def open(self, llm: Any) -> None:
        self.guard = Decontaminator(self.opts)

    def run(self, batch: list[list[str] | None]) -> tuple[list[Hit | None], float]:
        assert self.guard is not None
        return self.guard.lookup(batch)


def batches(records: Iterable[Record], size: int = BATCH) -> Iterator[list[Record]]:
    it = iter(records)
    while batch := list(islice(it, size)):
        yield batch


class DecontaminateConfig(IOConfig, DecontaminationOptions):
    """Options of `dataforge decontaminate` (and of a `decontaminate` pipeline stage)."""

    workers: Annotated[int | None, Cli(panel=_D)] = Field(
        None, ge=0, description="processes that look the records up while this one reads and writes (default: one "
        "per core beyond the first; 0: all in this process)")


class DecontaminateStage(Stage[DecontaminateConfig]):
    """Reject records that restate benchmark items: a shared word 13-gram (normalised as GPT-3 and NeMo
    Curator do) or a long verbatim run of characters; reason contaminated:<file>:<item id>."""

    name = "decontaminate"
    Config = DecontaminateConfig
    record_parallel = True
    journaled = False  # one fast streaming pass: a re-run redoes it
    side_inputs = ("benchmarks",)
    output_neutral = frozenset({"out_format", "strict", "workers"})

    def __init__(self, cfg: DecontaminateConfig):
        if not cfg.benchmarks:
            raise DataforgeError("decontaminate: name the benchmark files (--decontaminate FILE,FILE,...)")
        super().__init__(cfg)
        self.guard: Decontaminator | None = None

    def side_outputs(self, side: SideFiles) -> dict[str, Path]:
        return {"rejected": side.rejected}

    async def process(self, records: Iterator[Record], ctx: StageContext) -> None:
        self.guard = guard = Decontaminator(self.cfg)  # builds (or loads) the index once, before any worker
        workers = default_processes() if self.cfg.workers is None else self.cfg.workers
        waiting: deque[list[Record]] = deque()  # batches whose lookups are under way, in input order

        def lookups() -> Iterator[list[list[str] | None]]:
            for batch in batches(records):
                waiting.append(batch)
                yield texts_of(batch)

        with ctx.bar("decontaminate", unit="rec") as bar:
            async for hits, seconds in ctx.map(LookupWork(self.cfg, workers), lookups()):
                batch = waiting.popleft()
                for r in guard.apply(batch, hits, seconds):
                    ctx.out.write(r)
                bar.advance(len(batch))

    def finish(self, ctx: StageContext) -> dict[str, Any]:
        return self.guard.details() if self.guard is not None else {}


def run_decontaminate(input_path, output_path, cfg: DecontaminateConfig | None = None, **kwargs: Any):
    """Python entry point: `run_stage` for this stage (same keyword arguments)."""
    from ..stage import run_stage

    return run_stage(DecontaminateStage, input_path, output_path, cfg, **kwargs)
