"""`GateWork`: the gate's per-record work on one batch, wherever the batch runs (here or a Ray worker).

It checks the records (embeddings, structure, constraints, correctness signals, judges), sends the ones
failing soft checks through Self-Refine, turns the scores into a status with reasons, and computes the
batch's dedup state (`dedup_state.features`). What it needs from the whole input (the answer
conventions, the alignment pool, the reference set) is computed once on the driver and travels with it.

A batch's result carries its decided records, their dedup features and the batch's counters (refine
and judge figures); the stage sums the counters, so they add up to the same whether one process or
twenty scored the batches.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..records import Record
from ..stage import Work
from .checks import EndingShapes
from .dedup_state import Features, features
from .rules import GateRules

if TYPE_CHECKING:
    from ..llm import LLM
    from .gate import FilterConfig


@dataclass
class GateBatch:
    """One scored batch: decided records by input position, their dedup features, the batch's counters."""

    items: list[tuple[int, Record]]
    features: Features | None
    counters: Counter = field(default_factory=Counter)


class GateWork(Work):
    """Scores and decides batches of ``(input position, record)``; see the module doc."""

    def __init__(self, cfg: "FilterConfig", rules: GateRules, *, judged: bool, consistent: bool, pool: list[str],
                 shapes: EndingShapes, reference: list[Record], decontaminator: Any = None):
        self.cfg, self.rules, self.judged, self.consistent = cfg, rules, judged, consistent
        self.pool, self.shapes, self.reference = pool, shapes, reference
        self.decontaminator = decontaminator  # the benchmark index, built once on the driver
        self.checker = self.judge = self.refiner = self.embedder = self.extractor = self.consistency = None
        self.own_judge_llm: "LLM | None" = None

    def uses_llm(self) -> bool:
        return self.judged or self.consistent

    def prepare(self) -> None:
        from .embed import get_embedder

        get_embedder(self.cfg.embedder, self.cfg.embed_cache).prepare()

    def open(self, llm: "LLM | None") -> None:
        from .checks import Checker
        from .consistency import ConsistencySettings, SelfConsistency
        from .embed import get_embedder
        from .gate import _constraint_extractor, judge_llm_for
        from .judges import Judge
        from .refine import Refiner

        cfg, rules = self.cfg, self.rules
        self.embedder = get_embedder(cfg.embedder, cfg.embed_cache)
        if self.judged and llm is not None:
            judge_llm, own = judge_llm_for(cfg, llm)
            self.own_judge_llm = judge_llm if own else None  # closed with the process (see `aclose`)
            if own and hasattr(llm, "also"):  # its requests count (tokens, cost, budget) like the stage's own
                judge_llm = llm.also(judge_llm)
            self.judge = Judge(judge_llm, seed=cfg.seed)
        self.extractor = _constraint_extractor(cfg, self.judge.llm if self.judge is not None else None)
        sig = rules.signals.consistency
        if self.consistent and llm is not None:
            self.consistency = SelfConsistency(llm, ConsistencySettings(sig.samples, sig.temperature, sig.max_tokens),
                                               seed=cfg.seed)
        self.checker = Checker(rules, self.embedder, judge=self.judge, reference=self.reference,
                               pool_prompts=self.pool, shapes=self.shapes, extractor=self.extractor,
                               consistency=self.consistency)
        if self.judge is not None:
            self.refiner = Refiner(llm, self.checker, rules, rounds=rules.refine.rounds, seed=cfg.seed)

    async def aclose(self) -> None:
        if self.own_judge_llm is not None:
            await self.own_judge_llm.aclose()
            self.own_judge_llm = None

    def _counters(self) -> Counter:
        """Running totals of this process's refine, judge and embedding figures."""
        c: Counter = Counter(embedded_texts=self.embedder.embedded if self.embedder is not None else 0)
        if self.refiner is not None:
            st = self.refiner.stats
            c.update({"refine_attempted": st.attempted, "refine_improved": st.improved, "refine_fixed": st.fixed,
                      "refine_rounds": st.rounds, "refine_errors": st.errors})
        if self.judge is not None:
            c.update({"judge_errors": self.judge.errors, "judge_unreadable": self.judge.unreadable,
                      "judge_verdicts": self.judge.verdicts})
        if self.decontaminator is not None:
            c.update({f"decontamination:{k}": n for k, n in self.decontaminator.counts().items()})
        if self.consistency is not None:
            c.update({"consistency_sampled": self.consistency.sampled, "consistency_errors": self.consistency.errors})
        if self.extractor is not None:
            c["extraction_requests"] = self.extractor.requests
            c.update({f"extraction_failed:{why}": n for why, n in self.extractor.failures.items()})
        return c

    async def run(self, batch: list[tuple[int, Record]]) -> GateBatch:
        before = self._counters()
        items = await self._decide(batch)
        items.sort(key=lambda x: x[0])
        feats = features(items, self.rules.dedup, self.embedder) if self.cfg.dedup else None
        counters = self._counters()
        counters.subtract(before)
        return GateBatch(items, feats, +counters)

    async def _decide(self, batch: list[tuple[int, Record]]) -> list[tuple[int, Record]]:
        from .provenance import gate_meta
        from .rules import decide, explained
        from .turns import judge_turns

        # a record an earlier stage already rejected (e.g. evolve --keep-failed) stays rejected with its
        # own reasons: the gate neither re-judges nor "rescues" it, it only passes it through; a contaminated
        # record is rejected before any model is asked
        if self.decontaminator is not None:
            batch = list(zip([i for i, _ in batch], self.decontaminator.check([r for _, r in batch])))
        results = [(i, r) for i, r in batch if r.status == "rejected"]
        batch = [(i, r) for i, r in batch if r.status != "rejected"]
        scored = await self.checker.score([r for _, r in batch]) if batch else []
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
        return await judge_turns(self.checker, self.rules, results)  # a conversation's later answers, each judged

    def __getstate__(self) -> dict[str, Any]:
        """What travels to a worker: the settings and the global context, never opened models."""
        return {**self.__dict__, "checker": None, "judge": None, "refiner": None, "embedder": None, "extractor": None,
                "consistency": None, "own_judge_llm": None}
