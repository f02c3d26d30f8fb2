"""The gate's per-record checks. Each writes a named score into ``record.scores`` (higher = better,
except ``contradiction`` and ``complexity``) and, when it finds a problem, a short detail that ends up
in the record's reasons. Checks run on a batch of records at once so embeddings are computed in bulk.

Scores:
  coherence      cosine(instruction+input, response) of MiniLM embeddings
  alignment      model judge P(yes: the response carries out the instruction)       (with a judge)
  alignment_emb  share of other prompts (a fixed, seeded pool from the input and the
                 reference set) that match the response worse than its own prompt    (without one)
  alignment_local  the same among the 32 pool prompts most similar to its own prompt  (without one)
  format         share of attached + detected constraints the response meets (1.0 = all, or none)
  truncation     0 when the response looks cut off, else 1
  structure      0 for an empty response or leftover template markers / role tags, else 1
  refusal        0 for refusal boilerplate, else 1
  reference      max cosine of the (prompt, response) pair to a known-good example
  contradiction  model judge P(yes: the response contradicts itself or its input)    (with a judge)
  complexity     1-10 from features (length, constraints, reasoning cues, evolution depth),
                 averaged with the model judge's rating when there is one
Correctness signals (no strong judge needed; no score where they do not apply):
  reference_answer  1 when the final answer equals the one the data carries     (reference_answers.py)
  arithmetic        1 when every stated a + b = c holds                           (arithmetic.py)
  execution         1 when every Python block runs in the sandbox                 (execution.py)
  consistency       share of k samples agreeing with the final number/label       (consistency.py, a model)
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..records import Record
from . import structure
from .arithmetic import check_arithmetic
from .constraint_extraction import ConstraintExtractor, Extraction, merge
from .constraint_parser import parse_constraints
from .execution import ExecutionLimits, check_execution, code_blocks
from .reference_answers import check_reference
from .judges import Judge
from .rules import DomainDetector, GateRules

_REASONING = re.compile(r"\b(?:step[- ]by[- ]step|explain why|justify|prove|derive|compare|contrast|analy[sz]e|"
                        r"evaluate|optimi[sz]e|trade-?offs?|edge cases?|complexity|multiple|each of|at least|"
                        r"consider|assume|given that|then)\b", re.I)
# Labels and one-word answers ("Yes", "positive", "42") carry too little text for embedding similarity:
# coherence and alignment_emb are not scored for them (the model judge still is).
SHORT_ANSWER_WORDS = 3
LOCAL_NEIGHBOURS = 32
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)?")


@dataclass
class Scored:
    """A record's check results before the decision: scores, problem details, detected domains."""

    record: Record
    scores: dict[str, float] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    domains: list[str] = field(default_factory=list)
    unjudged: list[str] = field(default_factory=list)  # model checks whose judge gave no verdict
    notes: list[str] = field(default_factory=list)  # reasons that do not change the status (extraction notes)


def group_key(r: Record) -> str:
    """Records of one origin share answer conventions: the source, else the task, else one group."""
    return str(r.meta.get("source") or r.task or "*")


class EndingShapes:
    """Learns, per group, the closing-line shape that most responses share (e.g. GSM8K's '#### 42'),
    so a response missing it can be flagged as probably cut off. Only shapes with a marker (a symbol
    or digit) count, and only when at least `min_share` of a group of `min_group` or more has it;
    groups without such a convention are left alone."""

    def __init__(self, min_group: int = 30, min_share: float = 0.75):
        self.min_group, self.min_share = min_group, min_share
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.dominant: dict[str, str] = {}

    def add(self, r: Record) -> None:
        if r.output.strip():
            self.counts[group_key(r)][structure.ending_shape(r.output)] += 1

    def finish(self) -> "EndingShapes":
        for g, c in self.counts.items():
            total = sum(c.values())
            shape, n = c.most_common(1)[0]
            # only marker-like conventions ("#### 9", "Answer: 9"); plain words are no convention
            if total >= self.min_group and n / total >= self.min_share and re.search(r"[^a\s]", shape):
                self.dominant[g] = shape
        return self

    def odd_ending(self, r: Record, output: str) -> bool:
        want = self.dominant.get(group_key(r))
        return bool(want) and structure.ending_shape(output) != want


def finish_reason_of(r: Record) -> str | None:
    """What the generator recorded about how its answer ended (`evolve` sets meta.evol.answer_truncated)."""
    evol = r.meta.get("evol")
    if isinstance(evol, dict) and evol.get("answer_truncated"):
        return "length"
    return r.meta.get("finish_reason")


def complexity_features(r: Record, n_constraints: int) -> float:
    """1-10 from what can be counted: length, constraints, reasoning cues, numbers, several asks,
    evolution depth. Scaled so plain seed tasks score 2-3, multi-step word problems 4-6, and a prompt
    evolved for several rounds with constraints 7-9; the model judge's rating, when there is one, is
    averaged in."""
    text = r.prompt_text
    words = len(text.split())
    sentences = len(re.findall(r"[.?!](?:\s|$)", r.instruction)) or 1
    score = 1.0
    score += min(1.5 * math.log2(1 + words / 15), 3.0)
    score += min(n_constraints, 3) * 1.0
    score += min(len(_REASONING.findall(text)) * 0.4, 1.2)
    score += min(len(_NUMBER.findall(text)) * 0.15, 1.0)
    score += min((sentences - 1) * 0.3, 1.0)
    score += min(int(r.lineage.round or 0), 4) * 0.5
    return float(min(max(score, 1.0), 10.0))


def constraint_specs(r: Record, extracted: list[dict] | None = None) -> list[dict]:
    """Attached constraints (from evolve) plus detected ones whose type is not attached already: the
    parser's, united with `extracted` (a model's list) when given. Only the instruction is read: the input
    is data ("the text has fewer than 3 words" there sets no constraint)."""
    attached = [s for s in (r.meta.get("constraints") or []) if isinstance(s, dict) and "type" in s]
    have = {s["type"] for s in attached}
    detected = merge(parse_constraints(r.instruction), extracted)[0]
    return attached + [s for s in detected if s["type"] not in have]


def format_score(r: Record, output: str, extracted: list[dict] | None = None) -> tuple[float, str | None]:
    from ..constraints import check
    from ..errors import DataforgeError

    specs = constraint_specs(r, extracted)
    if not specs:
        return 1.0, None
    bad = []
    for s in specs:
        try:
            res = check(s, output)
        except DataforgeError as exc:  # an unknown or malformed attached spec is a finding, not a crash
            bad.append(f"{s.get('type')}({exc})")
            continue
        if not res.ok:
            bad.append(f"{s['type']}({res.detail})")
    return (len(specs) - len(bad)) / len(specs), ("; ".join(bad) or None)


class Checker:
    """Runs every check on batches. `embedder` is a `dataforge.quality.embed.Embedder`; `judge` is
    None when no judge model is used; `pool_prompts` are the prompts alignment_emb ranks against."""

    def __init__(self, rules: GateRules, embedder, *, judge: Judge | None = None,
                 reference: Sequence[Record] = (), pool_prompts: Sequence[str] = (),
                 shapes: EndingShapes | None = None, consistency=None,
                 extractor: ConstraintExtractor | None = None):
        self.rules = rules
        self.embedder = embedder
        self.judge = judge
        self.consistency = consistency  # a SelfConsistency, or None
        self.extractor = extractor
        self.extracted: dict[str, Extraction] = {}  # this batch's, by instruction: refine drafts reuse them
        self.shapes = shapes or EndingShapes()
        self.domains = DomainDetector(rules.high_stakes)
        self.ref_pairs = None
        if reference:
            ep = embedder.encode([r.prompt_text for r in reference])
            eo = embedder.encode([r.output for r in reference])
            self.ref_pairs = _pair(ep, eo)
        self.pool = embedder.encode(list(dict.fromkeys(pool_prompts))) if pool_prompts else None

    # ------------------------------------------------------------------ cheap, per record
    def text_checks(self, r: Record, output: str, finish_reason: str | None = None) -> Scored:
        sc = Scored(r)
        found = self.extracted.get(r.instruction)
        extracted = found.specs if found is not None else None
        problem = structure.check_empty(output) or structure.check_template_leftovers(output)
        sc.scores["structure"] = 0.0 if problem else 1.0
        if problem:
            sc.details["structure"] = problem
        problem = structure.check_refusal(output)
        sc.scores["refusal"] = 0.0 if problem else 1.0
        if problem:
            sc.details["refusal"] = problem
        signals = structure.truncation_signals(output, finish_reason) if output.strip() else []
        if output.strip() and self.shapes.odd_ending(r, output):
            signals.append("unusual_ending")
        sc.scores["truncation"] = 0.0 if signals else 1.0
        if signals:
            sc.details["truncation"] = "+".join(signals)
        fmt, detail = format_score(r, output, extracted)
        sc.scores["format"] = round(fmt, 4)
        if detail:
            sc.details["format"] = detail
        if found is not None:
            sc.notes = (merge(parse_constraints(r.instruction), extracted)[1] if extracted is not None
                        else [f"constraint_extraction:not_run:{found.error}"])
        sig = self.rules.signals
        if sig.reference_answer:
            _put(sc, "reference_answer", check_reference(r, output))
        if sig.arithmetic:
            _put(sc, "arithmetic", check_arithmetic(output))
        n_constraints = len(constraint_specs(r, extracted))
        sc.scores["complexity"] = round(complexity_features(r, n_constraints), 3)
        sc.domains = self.domains.detect(f"{r.prompt_text}\n{output}")
        return sc

    # ------------------------------------------------------------------ batch
    async def score(self, records: Sequence[Record], outputs: Sequence[str] | None = None,
                    judge_complexity: bool = True) -> list[Scored]:
        """All checks for `records` (responses from `outputs` when given: refine drafts)."""
        outs = list(outputs) if outputs is not None else [r.output for r in records]
        if self.extractor is not None:
            if outputs is None:  # a new batch: forget the last one's (refine drafts of a batch reuse its answers)
                self.extracted = {r.instruction: self.extracted[r.instruction] for r in records
                                  if r.instruction in self.extracted}
            todo = list(dict.fromkeys(r.instruction for r in records if r.instruction not in self.extracted))
            for ins, res in zip(todo, await asyncio.gather(*(self.extractor.extract(i) for i in todo))):
                self.extracted[ins] = res
        scored = [self.text_checks(r, o, finish_reason_of(r) if outputs is None else None)
                  for r, o in zip(records, outs)]
        ep = self.embedder.encode([r.prompt_text for r in records])
        eo = self.embedder.encode(outs)
        coh = np.einsum("ij,ij->i", ep, eo)
        short = [len(o.split()) <= SHORT_ANSWER_WORDS for o in outs]
        for sc, c, s in zip(scored, coh, short):
            if not s:
                sc.scores["coherence"] = round(float(c), 4)
        if self.ref_pairs is not None and len(self.ref_pairs):
            ref = (_pair(ep, eo) @ self.ref_pairs.T).max(axis=1)
            for sc, v in zip(scored, ref):
                sc.scores["reference"] = round(float(v), 4)
        await self._signals(scored, outs)
        if self.judge is None:
            glob, local = self.alignment_rank(ep, eo)
            for sc, g, lo, s in zip(scored, glob, local, short):
                if g is not None and not s:
                    sc.scores["alignment_emb"] = round(float(g), 4)
                if lo is not None and not s:
                    sc.scores["alignment_local"] = round(float(lo), 4)
        else:
            await self._judge(scored, outs, judge_complexity)
        return scored

    def alignment_rank(self, ep: np.ndarray, eo: np.ndarray, k: int = LOCAL_NEIGHBOURS
                       ) -> tuple[list[float | None], list[float | None]]:
        """Two ranks of a response's own prompt among pool prompts (higher = better aligned):
        global: share of all pool prompts that match the response worse than its own prompt;
        local: the same among the k pool prompts most similar to its own prompt, which catches a
        response swapped in from a similar task (another maths problem, another tool call).
        Pool prompts nearly identical to the record's own (cos > 0.98) are left out."""
        n = len(ep)
        if self.pool is None or len(self.pool) < 16:
            return [None] * n, [None] * n
        own = np.einsum("ij,ij->i", ep, eo)
        vs_pool = eo @ self.pool.T                    # (batch, pool) response vs other prompts
        pp = ep @ self.pool.T                         # (batch, pool) own prompt vs other prompts
        same = pp > 0.98
        worse = (vs_pool < own[:, None]) & ~same
        valid = (~same).sum(axis=1)
        glob = [float(w / v) if v else None for w, v in zip(worse.sum(axis=1), valid)]
        kk = min(k, self.pool.shape[0] - 1)
        pp_masked = np.where(same, -np.inf, pp)
        nb = np.argpartition(-pp_masked, kk - 1, axis=1)[:, :kk]
        rows = np.arange(n)[:, None]
        ok = np.isfinite(pp_masked[rows, nb])
        beaten = (vs_pool[rows, nb] < own[:, None]) & ok
        local = [float(b / c) if c else None for b, c in zip(beaten.sum(axis=1), ok.sum(axis=1))]
        return glob, local

    async def _signals(self, scored: list[Scored], outs: list[str]) -> None:
        """Execution (subprocesses, two at a time) and self-consistency (the model) for the batch."""
        ex = self.rules.signals.execution
        limits = ExecutionLimits(timeout=ex.timeout, memory_mb=ex.memory_mb, max_blocks=ex.max_blocks)
        slots = asyncio.Semaphore(2)

        async def run(sc: Scored, out: str) -> None:
            if ex.enabled and code_blocks(out):
                async with slots:
                    _put(sc, "execution", await asyncio.to_thread(check_execution, out, limits))
            if self.consistency is not None and sc.scores.get("structure") != 0.0:
                _put(sc, "consistency", await self.consistency.check(sc.record, out))

        await asyncio.gather(*(run(sc, o) for sc, o in zip(scored, outs)))

    async def _judge(self, scored: list[Scored], outs: list[str], judge_complexity: bool) -> None:
        judge = self.judge

        async def one(sc: Scored, out: str) -> None:
            if sc.scores.get("structure") == 0.0:
                return  # nothing to judge in an empty or broken response
            tasks = [judge.alignment(sc.record, out), judge.contradiction(sc.record, out)]
            if judge_complexity:
                tasks.append(judge.complexity(sc.record))
            res = await asyncio.gather(*tasks)
            for check, j in (("alignment", res[0]), ("contradiction", res[1])):
                if j.score is None:
                    sc.unjudged.append(check)  # no verdict is not a pass: the gate sends it to review
                    continue
                sc.scores[check] = round(j.score, 4)
                failed = j.score < 0.5 if check == "alignment" else j.score > 0.5
                if failed and j.reason:
                    sc.details[check] = j.reason
            if judge_complexity and res[2] is not None:
                sc.scores["complexity_judge"] = res[2]
                sc.scores["complexity"] = round((sc.scores["complexity"] + res[2]) / 2, 3)

        await asyncio.gather(*(one(sc, o) for sc, o in zip(scored, outs)))


def _put(sc: Scored, name: str, result: tuple[float, str | None] | None) -> None:
    if result is not None:
        sc.scores[name] = result[0]
        if result[1]:
            sc.details[name] = result[1]


def _pair(ep: np.ndarray, eo: np.ndarray) -> np.ndarray:
    v = ep + eo
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def hash_pool(records: Iterable[Record], k: int = 512) -> list[str]:
    """A fixed pool of k prompts: the records with the smallest id hashes, so the pool (and every
    alignment_emb score) does not depend on input order, sharding or where a resumed run restarts."""
    import hashlib
    import heapq

    heap: list[tuple[int, str]] = []
    for r in records:
        h = -int.from_bytes(hashlib.blake2b(r.id.encode(), digest_size=8).digest(), "big")
        item = (h, r.prompt_text)
        if len(heap) < k:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    return [t for _, t in sorted(heap, reverse=True)]
