"""Evol-Instruct: grow harder and rarer instructions from seeds, round by round, and answer them.

Each input record owns a *slot*. In every round the slot's current instruction is evolved with one
operation — in depth (add_constraints, deepen, concretize, increase_reasoning, complicate_input) or
in breadth (a new task on a rarer topic of the same domain). The evolution passes the elimination
rules (`elimination.py`) and gets an answer; a survivor becomes the slot's current instruction for
the next round, a failure leaves the parent in place to be evolved again next round with an
operation it has not failed with yet. One step is `evolve_step.py`; this module runs the steps.

Slots run independently, with no barrier between rounds. With ``speculate`` (default) a survivor's
next-round rewrite is requested while its answer is still pending: that request does not depend on
the answer (see `chain_key`), so it is kept when the answer passes and discarded when it fails, and
the output equals a round-by-round run while the critical path shrinks from 2 to ~1 request a round.

Every randomness is derived from ``(seed, chain_key(slot's record), round)`` and every finished step is
journaled, so a killed run re-run with the same command replays the journal, asks the request cache
for what was in flight, and ends with the same records.

>>> summary = run_evolve("seeds.jsonl", "evolved.jsonl", EvolveConfig(rounds=2))   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Optional

from pydantic import Field, field_validator, model_validator

from ..records import Record
from ..stage import Cli, IOConfig, Stage, StageContext, tally
from .elimination import EliminationConfig
from .evolve_step import (ANSWER_TOKENS, EVOLVE_TOKENS, IN_BREADTH, IN_DEPTH, OPERATIONS, Context, Rewrite, Slot,
                          append_phrase, chain_key, choose_operation, derive_seed, evolve_step, extract_instruction,
                          item_rng, make_context, plan_step, rewrite_step)

if TYPE_CHECKING:
    from ..llm import LLM

__all__ = ["EvolveConfig", "EvolveStage", "run_evolve", "OPERATIONS", "IN_DEPTH", "IN_BREADTH", "Context", "Slot",
           "append_phrase", "chain_key", "choose_operation", "derive_seed", "extract_instruction", "item_rng"]
_E = "Evolution"


def _tokens_text(budgets: dict[str, int]) -> str:
    return f"{budgets['chat']} chat models, {budgets['fewshot']} few-shot models"


class EvolveConfig(IOConfig):
    """Options of `dataforge evolve` (and of an `evolve` pipeline stage)."""

    rounds: Annotated[int, Cli(panel=_E)] = Field(4, ge=1, description="evolution rounds (the paper uses 4)")
    ops: Annotated[Optional[list[str]], Cli(panel=_E, metavar="OP,OP,...")] = Field(
        default_factory=lambda: list(OPERATIONS), description=f"operations to choose from ({', '.join(OPERATIONS)})")
    weights: Annotated[Optional[list[float]], Cli(panel=_E, metavar="W,W,...", default_text="uniform")] = Field(
        None, description="relative weight per operation in --ops")
    topics: Annotated[list[str], Cli(panel=_E, metavar="T,T,...")] = Field(
        default_factory=list, description="target topics for in-breadth evolution")
    steer: Annotated[Optional[str], Cli(panel=_E)] = Field(
        None, description="stats.json from `dataforge balance`: aim in-breadth at thin topics and in-depth at thin "
        "complexity levels")
    steer_boost: Annotated[float, Cli(panel=_E)] = Field(
        2.0, gt=0, description="weight multiplier for the operations steering favours")
    verifiable_share: Annotated[float, Cli(panel=_E)] = Field(
        0.5, ge=0, le=1, description="share of add_constraints evolutions that attach a checkable constraint from "
        "the library instead of a model-written one")
    keep_failed: Annotated[bool, Cli(panel=_E)] = Field(
        False, description="also write failed evolutions, status rejected with reasons")
    include_seeds: Annotated[bool, Cli(panel=_E)] = Field(
        False, description="also write the input records (round 0) before the evolved ones")
    seed: int = Field(0, description="seed of every random choice (derived per record and round)")
    temperature: Annotated[float, Cli(panel=_E)] = Field(
        0.7, ge=0, description="sampling temperature for evolutions and answers")
    evolve_max_tokens: Annotated[Optional[int], Cli(panel=_E, default_text=_tokens_text(EVOLVE_TOKENS))] = Field(
        None, ge=8, description="max tokens of an evolved instruction")
    answer_max_tokens: Annotated[Optional[int], Cli(panel=_E, default_text=_tokens_text(ANSWER_TOKENS))] = Field(
        None, ge=8, description="max tokens of an answer")
    max_in_flight: Annotated[int, Cli(panel=_E)] = Field(
        64, ge=1, description="evolution and answer steps in flight at once")
    speculate: Annotated[bool, Cli(panel=_E)] = Field(
        True, description="request a child's next-round rewrite while its answer is pending (kept if the answer "
        "passes, discarded otherwise): same output, shorter critical path; off for a local in-process model, "
        "which runs one request at a time")
    elimination: EliminationConfig = Field(default_factory=EliminationConfig)
    embedder: Annotated[Optional[str], Cli(panel=_E, default_text="all-MiniLM-L6-v2")] = Field(
        None, description="sentence-transformers model folder for the info-gain fallback")

    @field_validator("ops")
    @classmethod
    def _known_ops(cls, v: list[str] | None) -> list[str]:
        if v is None:
            return list(OPERATIONS)
        bad = [o for o in v if o not in OPERATIONS]
        if bad or not v:
            raise ValueError(f"unknown operation(s) {bad}; choose from {', '.join(OPERATIONS)}")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _weights_match(self) -> "EvolveConfig":
        if self.weights is not None:
            if len(self.weights) != len(self.ops):
                raise ValueError(f"--weights has {len(self.weights)} values for {len(self.ops)} operations")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("--weights must be non-negative and not all zero")
        return self


def _usage_total(llm: "LLM") -> int:
    return llm.usage.total_tokens


class EvolveStage(Stage[EvolveConfig]):
    """Evolve seed instructions into harder and rarer ones (Evol-Instruct), answer them, and drop failed
    evolutions by the paper's four rules."""

    name = "evolve"
    Config = EvolveConfig
    record_parallel = True
    version = 3  # 2: steps seeded by chain_key; 3: the runner's header (input hash instead of seed ids)
    output_neutral = frozenset({"keep_failed", "include_seeds", "max_in_flight", "out_format", "strict", "speculate"})
    side_inputs = ("steer",)
    partial_output = True  # stopped by a budget, it writes the steps finished so far

    def __init__(self, cfg: EvolveConfig):
        super().__init__(cfg)
        self.seeds: list[Record] = []
        self.slots: list[Slot] = []
        self.entries: dict[tuple[int, int], dict] = {}  # (round, slot) -> the confirmed step
        self.thrown_away: Counter[str] = Counter()  # speculative steps discarded, and the requests they sent
        self.speculating = False

    def needs_llm(self) -> bool:
        return True

    def sample_plan(self, n_input: int):
        """A dry run evolves a few records one round; the job is records x rounds steps."""
        from ..stage.estimate import SamplePlan

        k = min(n_input, 4)
        return SamplePlan(self.cfg.model_copy(update={"rounds": 1}), k, n_input * self.cfg.rounds / k,
                          f"{k} of {n_input:,} records, 1 of {self.cfg.rounds} rounds")

    def parallel_requests(self, n_input: int) -> int:
        return max(1, min(self.cfg.max_in_flight, n_input * (2 if self.cfg.speculate else 1)))

    async def process(self, records: Iterator[Record], ctx: StageContext) -> None:
        cfg = self.cfg
        self.seeds = list(records)
        run = make_context(cfg, ctx.llm)
        done = {(e["round"], e["slot"], e["parent"]): e for e in ctx.journal.entries}
        self.slots = [Slot(i, r) for i, r in enumerate(self.seeds)]
        # a local in-process model answers one request at a time: a speculative request there only adds work
        self.speculating = cfg.speculate and not str(ctx.llm.model_id).startswith("local:")
        self.t0, self.start_usage = time.time(), _usage_total(ctx.llm)
        self.sem = asyncio.Semaphore(cfg.max_in_flight)
        with ctx.bar("evolve", total=len(self.slots) * cfg.rounds, unit="step") as self.bar:
            if self.speculating:
                await self._chains(run, done, ctx)
            else:
                await self._rounds(run, done, ctx)
        ctx.journal.sync()

    def _settle(self, slot: Slot, rnd: int, entry: dict, llm: "LLM") -> None:
        """Record a confirmed step and move the slot on (a survivor becomes the next parent)."""
        self.entries[(rnd, slot.index)] = entry
        if entry["reason"] is None:
            slot.current = Record.model_validate(entry["record"])
            slot.failed_ops = []
        else:
            slot.failed_ops.append(entry["op"])
        self.bar.advance()
        kept = sum(e["reason"] is None for e in self.entries.values())
        rate = (_usage_total(llm) - self.start_usage) / max(time.time() - self.t0, 1e-6)
        self.bar.status(f"kept {kept} · {rate:,.0f} tok/s")

    async def _rounds(self, run: Context, done: dict, ctx: StageContext) -> None:
        """Round by round, requests grouped by operation (a local model reuses the cached few-shot prefix)."""
        for rnd in range(1, self.cfg.rounds + 1):
            plans = {s.index: plan_step(run, s, rnd) for s in self.slots}

            async def one(slot: Slot) -> dict:
                entry = done.get((rnd, slot.index, slot.current.id))
                if entry is None:
                    async with self.sem:
                        entry = await evolve_step(run, slot, rnd, plans[slot.index])
                    ctx.journal.append(entry)
                return entry

            order = sorted(self.slots, key=lambda s: (plans[s.index][0], s.index))
            results = await asyncio.gather(*(one(s) for s in order))
            ctx.journal.sync()
            for slot, entry in zip(order, results):
                self._settle(slot, rnd, entry, ctx.llm)

    async def _speculative_rewrite(self, run: Context, slot: Slot, rnd: int) -> Rewrite:
        with tally() as sent:  # this task's own requests, to report what a discarded one cost
            async with self.sem:
                rw = await rewrite_step(run, slot, rnd)
        rw.requests = sent[0]
        return rw

    def _discard(self, task: asyncio.Task, in_flight: set[asyncio.Task]) -> None:
        """Let a speculative rewrite finish (its requests land in the cache) and count what it cost."""
        def count(t: asyncio.Task) -> None:
            in_flight.discard(t)
            if not t.cancelled() and t.exception() is None:
                self.thrown_away["requests"] += t.result().requests
        self.thrown_away["steps"] += 1
        task.add_done_callback(count)

    async def _chain(self, run: Context, slot: Slot, done: dict, ctx: StageContext,
                     in_flight: set[asyncio.Task]) -> None:
        """All rounds of one slot, no barrier with other slots. While a survivor's answer is pending, its
        next-round rewrite is already in flight (the same request the next round would send, as everything
        is seeded by `chain_key`); a failed answer discards it."""
        ahead: asyncio.Task | None = None
        for rnd in range(1, self.cfg.rounds + 1):
            entry = done.get((rnd, slot.index, slot.current.id))
            if entry is None:
                if ahead is not None:
                    rw = await ahead
                    in_flight.discard(ahead)
                    rw.reparent(slot.current.id)
                else:
                    async with self.sem:
                        rw = await rewrite_step(run, slot, rnd)
                ahead = None
                if rw.entry is not None:
                    entry = rw.entry
                else:
                    if rnd < self.cfg.rounds:
                        ahead = asyncio.create_task(self._speculative_rewrite(run, Slot(slot.index, rw.draft), rnd + 1))
                        in_flight.add(ahead)
                    async with self.sem:
                        entry = await rw.answer()
                    if entry["reason"] is not None and ahead is not None:
                        self._discard(ahead, in_flight)
                        ahead = None
                ctx.journal.append(entry)
            elif ahead is not None:  # cannot happen with a journal written by this code
                self._discard(ahead, in_flight)
                ahead = None
            self._settle(slot, rnd, entry, ctx.llm)

    async def _chains(self, run: Context, done: dict, ctx: StageContext) -> None:
        in_flight: set[asyncio.Task] = set()  # speculative rewrites not yet kept, or discarded and running
        tasks = [asyncio.create_task(self._chain(run, s, done, ctx, in_flight)) for s in self.slots]
        try:
            await asyncio.gather(*tasks)
            await asyncio.gather(*list(in_flight), return_exceptions=True)  # discarded ones still running
        finally:
            for t in tasks + list(in_flight):
                t.cancel()  # only on an error is anything left running

    def finish(self, ctx: StageContext) -> dict[str, Any]:
        """Deterministic output: seeds (optional), then round by round in input order. Stopped early (a
        budget), only the steps finished so far: a chain's rounds are done in order, so its first ones."""
        seen: set[str] = set()
        duplicates = 0
        if self.cfg.include_seeds:
            for r in self.seeds:
                if r.id not in seen:
                    seen.add(r.id)
                    ctx.out.write(r)
        for rnd in range(1, self.cfg.rounds + 1):
            for slot in self.slots:
                e = self.entries.get((rnd, slot.index)) if ctx.stopped else self.entries[(rnd, slot.index)]
                if e is None:
                    continue
                if e["reason"] is not None and not self.cfg.keep_failed:
                    continue
                rec = Record.model_validate(e["record"])
                if rec.id in seen:
                    duplicates += 1
                    continue
                seen.add(rec.id)
                ctx.out.write(rec)
        details = self._details(duplicates)
        if ctx.stopped:
            details["steps_not_done"] = len(self.slots) * self.cfg.rounds - len(self.entries)
        return details

    def _details(self, duplicates: int) -> dict[str, Any]:
        per_round: dict[str, dict[str, int]] = {}
        per_op: dict[str, Counter] = defaultdict(Counter)
        reasons: Counter = Counter()
        for (rnd, _), e in sorted(self.entries.items()):
            r = per_round.setdefault(str(rnd), {"evolved": 0, "survived": 0, "failed": 0})
            ok = e["reason"] is None
            r["evolved"] += 1
            r["survived" if ok else "failed"] += 1
            per_op[e["op"]]["tried"] += 1
            per_op[e["op"]]["survived"] += ok
            if not ok:
                reasons[e["reason"]] += 1
        tried = sum(c["tried"] for c in per_op.values())
        survived = sum(c["survived"] for c in per_op.values())
        wall = time.time() - getattr(self, "t0", time.time())
        return {
            "rounds": per_round,
            "operations": {op: {"tried": c["tried"], "survived": c["survived"],
                                "survival_rate": round(c["survived"] / c["tried"], 3) if c["tried"] else None}
                           for op, c in sorted(per_op.items())},
            "eliminated": dict(sorted(reasons.items())),
            "survival_rate": round(survived / tried, 3) if tried else None,
            "duplicates_dropped": duplicates,
            "steps_tokens": sum(int(e.get("tokens") or 0) for e in self.entries.values()),
            "steps_per_second": round(tried / wall, 3) if wall > 0 else None,
            "speculative_discarded": ({"steps": self.thrown_away["steps"], "requests": self.thrown_away["requests"]}
                                      if self.speculating else None),
        }


def run_evolve(input_path, output_path, cfg: EvolveConfig | None = None, **kwargs: Any):
    """Python entry point: `run_stage` for this stage (same keyword arguments)."""
    from ..stage import run_stage

    return run_stage(EvolveStage, input_path, output_path, cfg, **kwargs)
