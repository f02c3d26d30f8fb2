"""Preference pairs for DPO: sample k answers per instruction at a spread of temperatures, score each with
the quality gate, and pair the best with the worst when the gap is clear (`pairs_rank.py` says how).

The gate itself does the scoring, nothing is re-implemented: a `FilterStage` with the given gate YAML
sets up the checks `filter` runs (constraints, judges on their own model if asked, correctness signals,
embeddings) over this input (`make_checker`), and `rules.decide` gives each answer its status and reasons. Records with attached constraints (evolve's
add_constraints, converse's constraint turns) give *verifiable* pairs.

The output is TRL's DPO format by default (``--to dpo``: conversational; ``dpo_plain``: strings), each row
with both scores, the reason and the kind; inside a pipeline it is Records with a `preference`, which
`dataforge train --objective dpo` reads. Instructions without a clear pair go to ``<out>.rejected.jsonl``
with the reason. A pair is accepted (the ranking is what this stage decides; each side's own gate status
and reasons are in ``meta.pairs``). Each record's samples are seeded by ``(seed, record id, temperature, sample)`` and each
finished record is journaled: a killed run resumes, shards and Ray batches make the same pairs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Optional

from pydantic import Field

from ..records import Lineage, Preference, Record, utc_now
from ..stage import Cli, IOConfig, SideFiles, Stage, StageContext, operation
from ..stage.config import IO_PANEL, OutFormat
from .evolve_step import ANSWER_TOKENS, derive_seed
from .pairs_rank import Candidate, choose_pair, gate_score

_P = "Pairs"


class PairsConfig(IOConfig):
    """Options of `dataforge pairs` (and of a `pairs` pipeline stage)."""

    out_format: Annotated[OutFormat, Cli("--to", "--out-format", panel=IO_PANEL)] = Field(
        "dpo", description="format of the output file (dpo: TRL's conversational DPO rows; dpo_plain: strings; "
        "record: Records with a preference)")
    temperatures: Annotated[list[float], Cli(panel=_P, metavar="T,T,...")] = Field(
        default_factory=lambda: [0.2, 0.6, 1.0, 1.4], description="sampling temperatures, one answer at each "
        "(times --per-temperature)")
    per_temperature: Annotated[int, Cli(panel=_P)] = Field(1, ge=1, le=16, description="answers per temperature")
    include_output: Annotated[bool, Cli(panel=_P)] = Field(
        True, description="the record's own answer is a candidate too")
    min_gap: Annotated[float, Cli(panel=_P)] = Field(
        0.2, ge=0, le=1, description="a scored pair needs a better gate status or a score this much higher")
    verifiable_only: Annotated[bool, Cli(panel=_P)] = Field(
        False, description="only verifiable pairs (chosen meets every attached constraint, rejected fails one)")
    answer_max_tokens: Annotated[Optional[int], Cli(panel=_P, default_text="768 chat models, 96 few-shot")] = Field(
        None, ge=8, description="max tokens of an answer")
    gate_config: Annotated[Optional[str], Cli(panel=_P, default_text="dataforge/quality/default_gate.yaml")] = Field(
        None, description="gate YAML whose checks and thresholds score the answers")
    judges: Annotated[Optional[Literal["auto", "on", "off"]], Cli(panel=_P, default_text="auto (gate YAML)")] = Field(
        None, description="model judges; auto: not with the embedded small model")
    judge_model: Annotated[Optional[str], Cli(panel=_P, default_text="the generator's model")] = Field(
        None, description="judge with another model")
    judge_base_url: Annotated[Optional[str], Cli(panel=_P, default_text="--base-url")] = Field(
        None, description="the judge model's server")
    embedder: Annotated[Optional[str], Cli(panel=_P, default_text="all-MiniLM-L6-v2")] = Field(
        None, description="local sentence-transformers folder")
    max_in_flight: Annotated[int, Cli(panel=_P)] = Field(16, ge=1, description="records in flight at once")
    seed: int = Field(0, description="seed of every sample (derived per record, temperature and sample)")


class PairsStage(Stage[PairsConfig]):
    """Sample k answers per instruction at a spread of temperatures, score each with the quality gate, and
    pair the best with the worst when the gap is clear (verifiable pairs where constraints are attached)."""

    name = "pairs"
    partial_output = True  # stopped by a budget, it writes the records finished so far
    Config = PairsConfig
    record_parallel = True
    output_neutral = frozenset({"max_in_flight", "out_format", "strict"})
    side_inputs = ("gate_config",)
    output_name = "pairs.jsonl"

    def __init__(self, cfg: PairsConfig):
        from ..quality.gate import FilterConfig, FilterStage

        super().__init__(cfg)
        # the quality gate itself, whose checks, judges and decision rules score every sampled answer
        self.gate = FilterStage(FilterConfig(config=cfg.gate_config, judges=cfg.judges, refine_rounds=0,
                                             judge_model=cfg.judge_model, judge_base_url=cfg.judge_base_url,
                                             embedder=cfg.embedder, seed=cfg.seed))
        self.rules = self.gate.rules
        self.kinds: Counter[str] = Counter()
        self.no_pair: Counter[str] = Counter()
        self.sampled = self.failed = 0
        self.gaps: list[float] = []

    def needs_llm(self) -> bool:
        return True

    def side_outputs(self, side: SideFiles) -> dict[str, Path]:
        return {"rejected": side.rejected}

    async def process(self, records: Iterator[Record], ctx: StageContext) -> None:
        checker = self.gate.make_checker(ctx.llm, ctx.read_again())
        self.judged_by = f"model:{self.gate.judge_model}" if checker.judge is not None else "embedding and heuristics"
        from ..stage.parallel import each_record

        try:
            await each_record(ctx, records, lambda r: self._pair(r, ctx.llm, checker),
                              lambda r, e: self._write(r, e, ctx), max_in_flight=self.cfg.max_in_flight, label="pairs")
        finally:
            await self.gate.close_judge()

    async def _sample(self, r: Record, llm: Any) -> tuple[list[Candidate], int, dict[str, str]]:
        """(candidates, failed requests, the answer template) for one record."""
        from ..llm import GenParams, LLMError
        from ..prompts import render

        cfg = self.cfg
        prompt = render("answer", llm.profile, instruction=r.instruction, input=r.input)
        tokens = cfg.answer_max_tokens or ANSWER_TOKENS["fewshot" if llm.profile == "fewshot" else "chat"]
        plan = [(t, j, m) for j, t in enumerate(cfg.temperatures) for m in range(cfg.per_temperature)]

        async def ask(t: float, j: int, m: int) -> Candidate | None:
            params = GenParams(temperature=t, max_tokens=tokens, seed=derive_seed(cfg.seed, r.id, j, m, "pair"))
            try:
                with operation("sample"):
                    completion = await llm.generate(prompt, params)
            except LLMError:
                return None
            return Candidate(completion.text.strip(), t, completion.truncated)

        got = await asyncio.gather(*(ask(*p) for p in plan))
        cands = [c for c in got if c is not None]
        if cfg.include_output and r.output.strip():
            cands.insert(0, Candidate(r.output.strip(), None, finish_reason_truncated(r)))
        return cands, sum(c is None for c in got), {"template": prompt.template_id, "template_hash": prompt.hash}

    async def _score(self, r: Record, cands: list[Candidate], checker: Any) -> None:
        """The gate's checks and decision on every candidate, plus the attached constraints one by one."""
        from .. import constraints as C
        from ..errors import DataforgeError
        from ..quality.rules import decide, explained

        recs = [r.model_copy(update={"output": c.text, "meta": answer_meta(r.meta, c.truncated)}) for c in cands]
        with operation("judge"):
            scored = await checker.score(recs, judge_complexity=False)
        for c, sc in zip(cands, scored):
            status, reasons = decide(sc.scores, self.rules, [(f"{x}:unjudged", "review") for x in sc.unjudged])
            c.status, c.reasons, c.scores = status, explained(reasons, sc.details), dict(sc.scores)
            c.score = gate_score(sc.scores, self.rules)
            for spec in r.meta.get("constraints") or []:
                try:
                    res = C.check(spec, c.text)
                except DataforgeError as exc:
                    c.constraint_failures.append(f"{spec.get('type')}({exc})")
                    continue
                if not res.ok:
                    c.constraint_failures.append(f"{res.type}({res.detail})")

    async def _pair(self, r: Record, llm: Any, checker: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": r.id, "pair": None, "reason": None, "failed": 0, "candidates": 0}
        if r.turns:
            entry["reason"] = "conversation_not_supported"
            return entry
        if self.cfg.verifiable_only and not r.meta.get("constraints"):
            entry["reason"] = "no_attached_constraints"  # nothing to verify: no request spent on it
            return entry
        cands, entry["failed"], entry["template"] = await self._sample(r, llm)
        entry["candidates"] = len(cands)
        if len(cands) >= 2:
            await self._score(r, cands, checker)
        result = choose_pair(cands, bool(r.meta.get("constraints")), self.cfg.min_gap, self.cfg.verifiable_only)
        if isinstance(result, str):
            entry["reason"] = result
            return entry
        chosen, rejected, kind, reason = result
        entry["pair"] = {"chosen": chosen.as_dict(), "rejected": rejected.as_dict(), "kind": kind, "reason": reason}
        return entry

    def _write(self, r: Record, entry: dict[str, Any], ctx: StageContext) -> None:
        self.sampled += entry["candidates"]
        self.failed += entry["failed"]
        if entry["pair"] is None:
            self.no_pair[entry["reason"]] += 1
            ctx.out.write(r.with_status("rejected", f"pairs:{entry['reason']}"))
            return
        p = entry["pair"]
        chosen, rejected = Candidate(**p["chosen"]), Candidate(**p["rejected"])
        self.kinds[p["kind"]] += 1
        self.gaps.append(chosen.score - rejected.score)
        pref = Preference(rejected=rejected.text, kind=p["kind"], chosen_score=chosen.score,
                          rejected_score=rejected.score, reason=p["reason"], chosen_temperature=chosen.temperature,
                          rejected_temperature=rejected.temperature)
        meta = {**answer_meta(r.meta, chosen.truncated),
                "pairs": {"candidates": entry["candidates"], "judged_by": self.judged_by,
                          "chosen_status": chosen.status, "chosen_reasons": chosen.reasons,
                          "rejected_status": rejected.status, "rejected_reasons": rejected.reasons}}
        lineage = Lineage(parents=[r.id], root=r.lineage.root or r.id, generator="pairs", operation=p["kind"],
                          round=r.lineage.round, model=ctx.llm.model_id, template=entry["template"]["template"],
                          template_hash=entry["template"]["template_hash"], timestamp=utc_now())
        out = Record.model_validate({**r.model_dump(), "id": "", "output": chosen.text, "preference": pref.model_dump(),
                                     "status": "accepted", "reasons": [], "scores": chosen.scores,
                                     "meta": meta, "lineage": lineage.model_dump()})
        ctx.out.write(out)

    def finish(self, ctx: StageContext) -> dict[str, Any]:
        gaps = sorted(self.gaps)
        return {"pairs": dict(self.kinds), "no_pair": dict(self.no_pair.most_common()),
                "answers_sampled": self.sampled, "answer_requests_failed": self.failed,
                "median_score_gap": round(gaps[len(gaps) // 2], 4) if gaps else None,
                "scored_by": getattr(self, "judged_by", None)}


def finish_reason_truncated(r: Record) -> bool:
    from ..quality.checks import finish_reason_of

    return finish_reason_of(r) == "length"


def answer_meta(meta: dict[str, Any], truncated: bool) -> dict[str, Any]:
    """The record's meta for another answer: what the generator said about how the old one ended (cut at
    max tokens) is dropped, and said again only when this answer was cut."""
    out = {k: v for k, v in meta.items() if k != "finish_reason"}
    if isinstance(out.get("evol"), dict) and "answer_truncated" in out["evol"]:
        out["evol"] = {k: v for k, v in out["evol"].items() if k != "answer_truncated"}
    if truncated:
        out["finish_reason"] = "length"
    return out


def run_pairs(input_path, output_path, cfg: PairsConfig | None = None, **kwargs: Any):
    """Python entry point: `run_stage` for this stage (same keyword arguments)."""
    from ..stage import run_stage

    return run_stage(PairsStage, input_path, output_path, cfg, **kwargs)
