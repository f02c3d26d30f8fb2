"""Evol-Instruct: grow harder and rarer instructions from seeds, round by round, and answer them.

Each input record owns a *slot*. In every round the slot's current instruction is evolved with one
operation — in depth (add_constraints, deepen, concretize, increase_reasoning, complicate_input) or
in breadth (a new task on a rarer topic of the same domain). The evolution passes the elimination
rules (`elimination.py`) and gets an answer; a survivor becomes the slot's current instruction for
the next round, a failure leaves the parent in place to be evolved again next round with an
operation it has not failed with yet.

Slots run independently, with no barrier between rounds. With ``speculate`` (default) a survivor's
next-round rewrite is requested while its answer is still pending: that request does not depend on
the answer (see `chain_key`), so it is kept when the answer passes and discarded when it fails, and
the output equals a round-by-round run while the critical path shrinks from 2 to ~1 request a round.

Every randomness is derived from ``(seed, chain_key(slot's record), round)`` and every finished step is
journaled (``<out>.partial.jsonl``), so a killed run re-run with the same command replays the
journal, asks the request cache for what was in flight, and ends with the same records.

>>> summary = run_evolve("seeds.jsonl", "evolved.jsonl", EvolveConfig(rounds=2))   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from pydantic import BaseModel, Field, field_validator, model_validator

from .. import constraints as C
from ..errors import DataforgeError
from ..records import Lineage, Record, utc_now
from .elimination import (COPIED_PROMPT, LLM_FAILED, EliminationConfig, Eliminator, Verdict, default_embedder_factory)

IN_DEPTH = ("add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input")
IN_BREADTH = ("breadth",)
OPERATIONS = IN_DEPTH + IN_BREADTH
TEMPLATES = {op: f"evol_{op}" for op in OPERATIONS}
INPUT_KINDS = ("a small table of data (a few rows and columns)", "a short piece of code",
               "a small JSON object", "a short list of numbers or measurements")
TRUNCATED = "truncated_evolution"
DUPLICATE = "duplicate"
JOURNAL_VERSION = 2  # 2: steps seeded by chain_key, not by the parent's answer-dependent id


class EvolveConfig(BaseModel):
    """Options of `dataforge evolve` (and of an `evolve` pipeline stage)."""

    rounds: int = Field(4, ge=1, description="evolution rounds (the paper uses 4)")
    ops: Optional[list[str]] = Field(default_factory=lambda: list(OPERATIONS), description="operations to choose from")
    weights: Optional[list[float]] = Field(None, description="relative weight per operation in `ops` (default uniform)")
    topics: list[str] = Field(default_factory=list, description="target topics for in-breadth evolution")
    steer: Optional[str] = Field(None, description="stats.json from `dataforge balance`: aim in-breadth at thin "
                                 "topics and in-depth at thin complexity levels")
    steer_boost: float = Field(2.0, gt=0, description="weight multiplier for the operations steering favours")
    verifiable_share: float = Field(0.5, ge=0, le=1, description="share of add_constraints evolutions that attach a "
                                    "checkable constraint from the library instead of a model-written one")
    keep_failed: bool = Field(False, description="also write failed evolutions, status rejected with reasons")
    include_seeds: bool = Field(False, description="also write the input records (round 0) before the evolved ones")
    seed: int = Field(0, description="seed of every random choice (derived per record and round)")
    temperature: float = Field(0.7, ge=0, description="sampling temperature for evolutions and answers")
    evolve_max_tokens: Optional[int] = Field(None, ge=8, description="max tokens of an evolved instruction "
                                             "(default 320 for chat models, 80 for few-shot models)")
    answer_max_tokens: Optional[int] = Field(None, ge=8, description="max tokens of an answer "
                                             "(default 768 for chat models, 96 for few-shot models)")
    max_in_flight: int = Field(64, ge=1, description="evolution and answer steps in flight at once")
    speculate: bool = Field(True, description="request a child's next-round rewrite while its answer is pending "
                            "(kept if the answer passes, discarded otherwise); same output, shorter critical path. "
                            "Off for a local in-process model, which runs one request at a time")
    shard: Optional[str] = Field(None, description="process only shard i/n of the input (by record id)")
    format: str = Field("auto", description="input format")
    out_format: str = Field("record", description="output format: record | alpaca | chat | parquet")
    strict: bool = Field(False, description="stop at the first bad input line")
    elimination: EliminationConfig = Field(default_factory=EliminationConfig)
    embedder: Optional[str] = Field(None, description="sentence-transformers model folder for the info-gain fallback")
    backend: Optional[Any] = Field(None, description="BackendConfig used when no LLM is passed in")

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

    def fingerprint_fields(self) -> dict[str, Any]:
        """What decides the content of the output (a journal from other settings cannot be resumed)."""
        return self.model_dump(exclude={"keep_failed", "include_seeds", "max_in_flight", "out_format", "strict",
                                        "backend", "speculate"})


# ---------------------------------------------------------------------------------------- helpers

def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from anything printable: stable across runs, machines and Python versions."""
    h = hashlib.blake2b(":".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") % (2 ** 31)


def item_rng(*parts: Any) -> random.Random:
    return random.Random(derive_seed(*parts))


def extract_instruction(text: str, label: str | None = None, require_label: bool = False) -> str:
    """The evolved instruction inside a completion. Few-shot completions are one line; where the
    template makes the model write a label first (breadth without a topic), take what follows it."""
    t = (text or "").strip()
    if require_label:
        idx = t.lower().rfind((label or "").lower()) if label else -1
        if idx < 0:
            return ""
        t = t[idx + len(label or ""):].strip()
    if require_label or label:
        t = t.split("\n", 1)[0].strip()
    if t.startswith("<<<") and t.endswith(">>>"):
        t = t[3:-3].strip()
    if len(t) >= 2 and t[0] == t[-1] == '"' and t.count('"') == 2:
        t = t[1:-1].strip()
    return t


def append_phrase(instruction: str, phrase: str) -> str:
    """`instruction` + a constraint phrase as a new sentence ("...the following word:" becomes
    "...the following word. Answer in at most 50 words.")."""
    base = instruction.rstrip()
    if base.endswith(":"):
        base = base[:-1].rstrip() + "."
    elif base and base[-1] not in ".!?\"')]`":
        base += "."
    return f"{base} {phrase}" if base else phrase


@dataclass
class Slot:
    """One lineage chain: its current instruction and the operations that failed on it."""

    index: int
    current: Record
    failed_ops: list[str] = field(default_factory=list)


@dataclass
class Context:
    cfg: EvolveConfig
    llm: Any
    eliminator: Eliminator
    profile: str
    topics: list[str]
    steering: Any
    level_names: list[str]
    evolve_tokens: int
    answer_tokens: int


# ---------------------------------------------------------------------------------------- operation choice

def _level_index(record: Record, names: list[str]) -> int | None:
    try:
        from ..curate.levels import level_of
    except ImportError:  # curation not installed: depth stands in
        return record.lineage.round or 0
    lvl = level_of(record)
    return names.index(lvl) if lvl in names else None


def choose_operation(ctx: Context, slot: Slot, rng: random.Random) -> str:
    """Weighted choice among the configured operations, skipping those this parent already failed
    with; steering favours in-depth when a higher complexity level is thin, breadth otherwise."""
    cfg = ctx.cfg
    weights = dict(zip(cfg.ops, cfg.weights or [1.0] * len(cfg.ops)))
    thin = list(getattr(ctx.steering, "thin_levels", []) or [])
    if thin and ctx.level_names:
        here = _level_index(slot.current, ctx.level_names)
        thin_idx = [ctx.level_names.index(t) for t in thin if t in ctx.level_names]
        if here is not None and thin_idx:
            favour = IN_DEPTH if any(i > here for i in thin_idx) else IN_BREADTH
            weights = {op: w * (cfg.steer_boost if op in favour else 1.0) for op, w in weights.items()}
    candidates = [op for op in cfg.ops if op not in slot.failed_ops and weights[op] > 0]
    if not candidates:
        candidates = [op for op in cfg.ops if weights[op] > 0]
    return rng.choices(candidates, weights=[weights[op] for op in candidates])[0]


# ---------------------------------------------------------------------------------------- one step

def _constraints_kept(parent: Record, text: str) -> list[dict]:
    """Parent constraints still worded in the child (a model rewrite may have dropped them)."""
    return [s for s in parent.meta.get("constraints") or [] if s.get("phrase") and s["phrase"] in text]


def chain_key(record: Record) -> str:
    """What seeds a record's next evolution. An input record: its id. A child: its root, instruction
    and input, which are final before its answer is, so the next round can be asked for while the
    answer is still pending (`speculate`), and get the same request as when asked for afterwards."""
    if not record.lineage.root:
        return record.id
    return hashlib.blake2b("\x00".join((record.lineage.root, record.instruction, record.input)).encode("utf-8"),
                           digest_size=12).hexdigest()


def plan_step(ctx: Context, slot: Slot, rnd: int) -> tuple[str, random.Random]:
    """The operation for this slot in this round, and the RNG the step continues with."""
    rng = item_rng(ctx.cfg.seed, chain_key(slot.current), rnd)  # not the slot index: a shard evolves a record the same way
    return choose_operation(ctx, slot, rng), rng


_REQUESTS: ContextVar[Optional[list[int]]] = ContextVar("evolve_requests", default=None)


class _CountingLLM:
    """The run's LLM, counting the requests of the task that set `_REQUESTS` (a speculative branch),
    so the summary can say how many requests a discarded branch cost."""

    def __init__(self, llm: Any):
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    async def generate(self, *args: Any, **kwargs: Any) -> Any:
        counter = _REQUESTS.get()
        if counter is not None:
            counter[0] += 1
        return await self._llm.generate(*args, **kwargs)


@dataclass
class Rewrite:
    """First half of a step: the evolved instruction and its checks. `entry` is the finished journal
    entry when the evolution already failed; otherwise `draft` is the child before its answer (what
    the next round would evolve if the answer passes) and `answer` finishes the step."""

    rnd: int
    slot: int
    parent_id: str
    entry: Optional[dict] = None
    draft: Optional[Record] = None
    answer: Any = None  # async () -> entry
    requests: int = 0  # sent by this rewrite (counted for speculative ones only)

    def reparent(self, parent_id: str) -> None:
        """A speculative rewrite saw the parent before its answer (another id): name the real one."""
        if parent_id == self.parent_id:
            return
        self.parent_id = parent_id
        if self.entry is not None:
            self.entry["parent"] = parent_id
            self.entry["record"]["lineage"]["parents"] = [parent_id]


async def evolve_step(ctx: Context, slot: Slot, rnd: int, plan: tuple[str, random.Random] | None = None
                      ) -> dict[str, Any]:
    """Evolve the slot's current record once; returns the journal entry (JSON-able)."""
    rw = await rewrite_step(ctx, slot, rnd, plan)
    return rw.entry if rw.entry is not None else await rw.answer()


async def rewrite_step(ctx: Context, slot: Slot, rnd: int, plan: tuple[str, random.Random] | None = None
                       ) -> Rewrite:
    """Evolve the slot's current record and check the new instruction (rules 4 and 1)."""
    from ..llm import GenParams, LLMError
    from ..prompts import render

    cfg, llm, parent = ctx.cfg, ctx.llm, slot.current
    key = chain_key(parent)
    op, rng = plan or plan_step(ctx, slot, rnd)
    root = parent.lineage.root or parent.id
    tokens = 0
    evol_meta: dict[str, Any] = {}
    child_input = ""
    constraints = []
    template, template_hash = None, None
    out = Rewrite(rnd=rnd, slot=slot.index, parent_id=parent.id)

    def finish(reason: str | None, instruction: str, output: str = "", verdict: Verdict | None = None) -> dict:
        meta: dict[str, Any] = {"evol": {**evol_meta, "judge": verdict.how if verdict else None}}
        if verdict is not None and verdict.score is not None:
            meta["evol"]["similarity"] = round(verdict.score, 4)
        if constraints:
            meta["constraints"] = constraints
        if "source" in parent.meta:
            meta["source"] = parent.meta["source"]
        rec = Record(
            instruction=instruction or "", input=child_input, output=output,
            task=None if op == "breadth" else parent.task,  # a brand-new task has no known category yet
            topic=evol_meta.get("topic") if op == "breadth" else parent.topic,
            status="rejected" if reason else "pending", reasons=[reason] if reason else [],
            lineage=Lineage(parents=[out.parent_id], root=root, generator="evolve", operation=op, round=rnd,
                            model=llm.model_id, template=template, template_hash=template_hash, timestamp=utc_now()),
            meta=meta)
        return {"round": rnd, "slot": slot.index, "parent": out.parent_id, "op": op, "reason": reason,
                "tokens": tokens, "record": json.loads(rec.model_dump_json())}

    def failed(reason: str, instruction: str, verdict: Verdict | None = None) -> Rewrite:
        out.entry = finish(reason, instruction, verdict=verdict)
        return out

    def survived(instruction: str, verdict: Verdict) -> Rewrite:
        out.draft = Record.model_validate(finish(None, instruction, verdict=verdict)["record"])

        async def answer() -> dict:
            return await _answer_and_check(ctx, rnd, key, finish, instruction, verdict, tokens_so_far=tokens,
                                           child_input=child_input)
        out.answer = answer
        return out

    # 1. the evolution itself
    if op == "add_constraints" and rng.random() < cfg.verifiable_share:
        try:
            spec = C.sample_constraint(rng, parent.instruction, existing=parent.meta.get("constraints") or [])
        except DataforgeError:
            spec = None
        if spec is not None:
            instruction = append_phrase(parent.instruction, spec["phrase"])
            child_input = parent.input
            constraints = [*_constraints_kept(parent, instruction), spec]
            template, evol_meta["verifiable"] = "constraint_library", spec["type"]
            return survived(instruction, Verdict(None, "constraint"))
    # Small few-shot models rewrite one line well but cannot copy a long input along with it: they
    # evolve the instruction alone and the child keeps the parent's input as it is.
    carry_input = ctx.profile == "fewshot" and op != "breadth"
    if carry_input:
        child_input = parent.input
    variables: dict[str, Any] = {"prompt": parent.instruction if carry_input else parent.prompt_text,
                                 "topic": None, "examples": [],
                                 "input_kind": rng.choice(INPUT_KINDS)}
    if op == "breadth" and ctx.topics:
        topic = rng.choice(ctx.topics)
        label = ctx.steering.label_for(topic) if ctx.steering is not None else topic
        variables["topic"] = label
        variables["examples"] = ctx.steering.examples_for(topic) if ctx.steering is not None else []
        evol_meta["topic"] = topic
    rendered = render(TEMPLATES[op], ctx.profile, **variables)
    template, template_hash = rendered.template_id, rendered.hash
    params = GenParams(temperature=cfg.temperature, max_tokens=ctx.evolve_tokens,
                       seed=derive_seed(cfg.seed, key, rnd, "evolve"))
    try:
        completion = await llm.generate(rendered, params)
    except LLMError as exc:
        evol_meta["error"] = str(exc)[:300]
        return failed(LLM_FAILED, "")
    tokens += completion.usage.total_tokens
    fewshot = (completion.profile or rendered.profile) == "fewshot"  # chat when the server refused /completions
    label = rendered.meta.get("label") if fewshot else None
    instruction = extract_instruction(completion.text, label, require_label=fewshot and op == "breadth"
                                      and not variables["topic"])
    if fewshot and op == "breadth" and not variables["topic"]:
        # the model names its rare topic first; one lifted from the worked examples is a copy (rule 4)
        invented = (completion.text.strip().split("\n", 1)[0] if completion.text.strip() else "").strip(" .")
        evol_meta["rare_topic"] = invented
        if invented and len(invented) > 3 and f"rare topic: {invented.lower()}" in rendered.text.lower():
            return failed(COPIED_PROMPT, instruction, Verdict(COPIED_PROMPT, "example topic"))
    # cut off at max_tokens: fatal only where the cut falls inside the instruction we kept
    if completion.truncated and (not fewshot or completion.text.rstrip().endswith(instruction)):
        return failed(TRUNCATED, instruction)
    constraints = _constraints_kept(parent, instruction)

    # 2. cheap text rules, then the information-gain judge
    verdict = ctx.eliminator.check_instruction(instruction, rendered.text, variables["prompt"])
    if not verdict.ok:
        return failed(verdict.reason, instruction, verdict)
    verdict = await ctx.eliminator.check_info_gain(variables["prompt"], instruction,
                                                   seed=derive_seed(cfg.seed, key, rnd, "judge"))
    tokens += verdict.tokens
    if not verdict.ok:
        return failed(verdict.reason, instruction, verdict)
    return survived(instruction, verdict)


def _usage_total(llm: Any) -> int:
    u = getattr(llm, "usage", None)
    return u.total_tokens if u is not None else 0


async def _answer_and_check(ctx: Context, rnd: int, key: str, finish, instruction: str, verdict: Verdict,
                            tokens_so_far: int, child_input: str) -> dict:
    """3. answer the survivor, 4. the response rules."""
    from ..llm import GenParams, LLMError
    from ..llm.reasoning import reasoning_history
    from ..prompts import render

    cfg, llm = ctx.cfg, ctx.llm
    rendered = render("answer", ctx.profile, instruction=instruction, input=child_input)
    params = GenParams(temperature=cfg.temperature, max_tokens=ctx.answer_tokens,
                       seed=derive_seed(cfg.seed, key, rnd, "answer"))
    try:
        completion = await llm.generate(rendered, params)
    except LLMError as exc:
        entry = finish(LLM_FAILED, instruction, verdict=verdict)
        entry["record"]["meta"]["evol"]["error"] = str(exc)[:300]
        return entry
    output = completion.text.strip()
    response_verdict = ctx.eliminator.check_response(output)
    entry = finish(response_verdict.reason, instruction, output, verdict=verdict)
    entry["tokens"] = tokens_so_far + completion.usage.total_tokens
    evol = entry["record"]["meta"]["evol"]
    evol["answer_template"], evol["answer_template_hash"] = rendered.template_id, rendered.hash
    entry["record"]["lineage"]["history"] += reasoning_history(llm, completion, "answer")  # --keep-reasoning
    if completion.truncated:
        evol["answer_truncated"] = True
    # the record id is a hash of its text: recompute now that input/output are final
    rec = Record.model_validate({**entry["record"], "id": ""})
    entry["record"] = json.loads(rec.model_dump_json())
    return entry


# ---------------------------------------------------------------------------------------- the run

@contextmanager
def _no_bar() -> Iterator[Any]:
    from ..progress import Bar

    yield Bar(None, None)


def _fingerprint(cfg: EvolveConfig, ids: list[str], model_id: str, profile: str) -> str:
    material = json.dumps({"cfg": cfg.fingerprint_fields(), "ids": ids, "model": model_id, "profile": profile,
                           "v": JOURNAL_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:24]


def journal_path_for(output_path: str | Path) -> Path:
    return Path(f"{output_path}.partial.jsonl")


def _load_journal(path: Path, fingerprint: str) -> dict[tuple[int, int, str], dict]:
    from ..io import Journal

    if not path.exists():
        return {}
    done: dict[tuple[int, int, str], dict] = {}
    with Journal(path) as j:  # repairs a torn last line
        entries = list(j.existing())
    if entries and entries[0].get("header") != fingerprint:
        raise DataforgeError(f"{path}: an unfinished run with different settings or input left this journal; "
                             "re-run with the same options to resume it, or delete the file to start over")
    for e in entries[1:]:
        done[(e["round"], e["slot"], e["parent"])] = e
    return done


def _make_context(cfg: EvolveConfig, llm: Any) -> Context:
    steering = None
    topics = list(cfg.topics)
    level_names: list[str] = []
    if cfg.steer:
        from ..curate.steer import load_steering

        steering = load_steering(cfg.steer)
        topics = topics + [t for t in steering.thin_topics if t not in topics]
        level_names = [n for n in steering.level_names if n != "unrated"]
        if not level_names:
            from ..curate.levels import DEFAULT_NAMES

            level_names = list(DEFAULT_NAMES)
    profile = llm.profile
    counted = _CountingLLM(llm)
    small = profile == "fewshot"
    if cfg.embedder:  # a user-chosen local model instead of MiniLM, loaded only if the fallback runs
        from functools import partial

        from ..quality.embed import get_embedder

        embedder_factory = partial(get_embedder, cfg.embedder)
    else:
        embedder_factory = default_embedder_factory()
    return Context(
        cfg=cfg, llm=counted, eliminator=Eliminator(cfg.elimination, llm=counted, embedder_factory=embedder_factory),
        profile=profile, topics=topics, steering=steering, level_names=level_names,
        evolve_tokens=cfg.evolve_max_tokens or (80 if small else 320),
        answer_tokens=cfg.answer_max_tokens or (96 if small else 768))


def run_evolve(input_path: str | Path, output_path: str | Path, cfg: EvolveConfig | None = None, *,
               llm: Any = None, progress: bool = True) -> dict[str, Any]:
    """Evolve every input record for `cfg.rounds` rounds and write the survivors (and, with
    `keep_failed`, the failures) to `output_path`. Returns the summary. Resumes an interrupted run."""
    from ..llm import run_sync, stage_llm

    cfg = cfg or EvolveConfig()
    with stage_llm(llm, cfg.backend) as llm:
        return run_sync(_run(Path(input_path), Path(output_path), cfg, llm, progress))


async def _run(input_path: Path, output_path: Path, cfg: EvolveConfig, llm: Any, progress: bool) -> dict[str, Any]:
    from ..io import Journal, ReadStats, RecordWriter, RejectSink, read_records, rejects_path_for
    from ..progress import progress_bar
    from ..shard import select

    t0 = time.time()
    stats = ReadStats()
    with RejectSink(rejects_path_for(output_path)) as sink:
        seeds = list(select(read_records(input_path, cfg.format, rejects=sink, strict=cfg.strict, stats=stats),
                            cfg.shard))
    if not seeds:
        raise DataforgeError(f"{input_path}: no usable records to evolve"
                             + (f" in shard {cfg.shard}" if cfg.shard else ""))
    ctx = _make_context(cfg, llm)
    fingerprint = _fingerprint(cfg, [r.id for r in seeds], llm.model_id, ctx.profile)
    jpath = journal_path_for(output_path)
    done = _load_journal(jpath, fingerprint)
    resumed = len(done)
    journal = Journal(jpath)
    if not jpath.stat().st_size:
        journal.append({"header": fingerprint, "input": str(input_path)})
        journal.sync()

    slots = [Slot(i, r) for i, r in enumerate(seeds)]
    entries: dict[tuple[int, int], dict] = {}
    start_usage = _usage_total(llm)
    sem = asyncio.Semaphore(cfg.max_in_flight)
    total_steps = len(slots) * cfg.rounds
    survived_so_far = 0
    # a local in-process model answers one request at a time: a speculative request there only adds work
    speculate = cfg.speculate and not str(llm.model_id).startswith("local:")
    in_flight: set[asyncio.Task] = set()  # speculative rewrites not yet kept or finished after discarding
    thrown_away = Counter()  # speculative steps discarded, and the requests they sent

    def discard(task: asyncio.Task) -> None:
        """Let a speculative rewrite finish (its requests land in the cache) and count what it cost."""
        def count(t: asyncio.Task) -> None:
            in_flight.discard(t)
            if not t.cancelled() and t.exception() is None:
                thrown_away["requests"] += t.result().requests
        thrown_away["steps"] += 1
        task.add_done_callback(count)

    with (progress_bar("evolve", total=total_steps, unit="step") if progress else _no_bar()) as bar:

        def settle(slot: Slot, rnd: int, entry: dict) -> None:
            """Record a confirmed step and move the slot on (a survivor becomes the next parent)."""
            nonlocal survived_so_far
            entries[(rnd, slot.index)] = entry
            if entry["reason"] is None:
                slot.current = Record.model_validate(entry["record"])
                slot.failed_ops = []
            else:
                slot.failed_ops.append(entry["op"])
            survived_so_far += entry["reason"] is None
            bar.advance()
            elapsed = max(time.time() - t0, 1e-6)
            bar.status(f"kept {survived_so_far} · {(_usage_total(llm) - start_usage) / elapsed:,.0f} tok/s")

        if speculate:
            async def speculative_rewrite(slot: Slot, rnd: int) -> Rewrite:
                counter = [0]
                _REQUESTS.set(counter)  # this task's own context: counts only its requests
                async with sem:
                    rw = await rewrite_step(ctx, slot, rnd)
                rw.requests = counter[0]
                return rw

            async def chain(slot: Slot) -> None:
                """All rounds of one slot, no barrier with other slots. While a survivor's answer is
                pending, its next-round rewrite is already in flight (the same request the next round
                would send, as everything is seeded by `chain_key`); a failed answer discards it."""
                ahead: asyncio.Task | None = None
                for rnd in range(1, cfg.rounds + 1):
                    entry = done.get((rnd, slot.index, slot.current.id))
                    if entry is None:
                        if ahead is not None:
                            rw = await ahead
                            in_flight.discard(ahead)
                            rw.reparent(slot.current.id)
                        else:
                            async with sem:
                                rw = await rewrite_step(ctx, slot, rnd)
                        ahead = None
                        if rw.entry is not None:
                            entry = rw.entry
                        else:
                            if rnd < cfg.rounds:
                                ahead = asyncio.create_task(speculative_rewrite(Slot(slot.index, rw.draft), rnd + 1))
                                in_flight.add(ahead)
                            async with sem:
                                entry = await rw.answer()
                            if entry["reason"] is not None and ahead is not None:
                                discard(ahead)
                                ahead = None
                        journal.append(entry)
                    elif ahead is not None:  # cannot happen with a journal written by this code
                        discard(ahead)
                        ahead = None
                    settle(slot, rnd, entry)

            tasks = [asyncio.create_task(chain(s)) for s in slots]
            try:
                await asyncio.gather(*tasks)
                await asyncio.gather(*list(in_flight), return_exceptions=True)  # discarded ones still running
            finally:
                for t in tasks + list(in_flight):
                    t.cancel()  # only on an error is anything left running
            journal.sync()
        else:
            for rnd in range(1, cfg.rounds + 1):
                plans = {s.index: plan_step(ctx, s, rnd) for s in slots}

                async def one(slot: Slot) -> dict:
                    entry = done.get((rnd, slot.index, slot.current.id))
                    if entry is None:
                        async with sem:
                            entry = await evolve_step(ctx, slot, rnd, plans[slot.index])
                        journal.append(entry)
                    return entry

                # round by round, requests grouped by operation: a local model reuses the cached few-shot prefix
                order = sorted(slots, key=lambda s: (plans[s.index][0], s.index))
                results = await asyncio.gather(*(one(s) for s in order))
                journal.sync()
                for slot, entry in zip(order, results):
                    settle(slot, rnd, entry)

    # deterministic output: seeds (optional), then round by round in input order
    written, seen = Counter(), set()
    duplicates = 0
    with RecordWriter(output_path, cfg.out_format) as writer:
        if cfg.include_seeds:
            for r in seeds:
                if r.id not in seen:
                    seen.add(r.id)
                    writer.write(r)
                    written["seed"] += 1
        for rnd in range(1, cfg.rounds + 1):
            for slot in slots:
                e = entries[(rnd, slot.index)]
                if e["reason"] is not None and not cfg.keep_failed:
                    continue
                rec = Record.model_validate(e["record"])
                if rec.id in seen:
                    duplicates += 1
                    continue
                seen.add(rec.id)
                writer.write(rec)
                written[rec.status] += 1
    journal.remove()
    summary = _summary(cfg, stats, seeds, entries, written, duplicates, resumed, llm, start_usage, t0, ctx)
    summary["speculative_discarded"] = ({"steps": thrown_away["steps"], "requests": thrown_away["requests"]}
                                        if speculate else None)
    return summary


def _summary(cfg, stats, seeds, entries, written, duplicates, resumed, llm, start_usage, t0, ctx) -> dict[str, Any]:
    per_round: dict[str, dict[str, int]] = {}
    per_op: dict[str, Counter] = defaultdict(Counter)
    reasons: Counter = Counter()
    tokens = 0
    for (rnd, _), e in sorted(entries.items()):
        r = per_round.setdefault(str(rnd), {"evolved": 0, "survived": 0, "failed": 0})
        r["evolved"] += 1
        ok = e["reason"] is None
        r["survived" if ok else "failed"] += 1
        per_op[e["op"]]["tried"] += 1
        per_op[e["op"]]["survived"] += ok
        if not ok:
            reasons[e["reason"]] += 1
        tokens += int(e.get("tokens") or 0)
    tried = sum(c["tried"] for c in per_op.values())
    survived = sum(c["survived"] for c in per_op.values())
    usage = getattr(llm, "usage", None)
    wall = time.time() - t0
    return {
        "stage": "evolve",
        "input": {"records": len(seeds), "bad_lines": stats.bad, "format": stats.fmt},
        "output": {"records": sum(written.values()), **dict(written)},
        "rounds": per_round,
        "operations": {op: {"tried": c["tried"], "survived": c["survived"],
                            "survival_rate": round(c["survived"] / c["tried"], 3) if c["tried"] else None}
                       for op, c in sorted(per_op.items())},
        "eliminated": dict(sorted(reasons.items())),
        "survival_rate": round(survived / tried, 3) if tried else None,
        "duplicates_dropped": duplicates,
        "resumed_steps": resumed,
        "model": llm.model_id, "profile": llm.profile, "profile_reason": llm.profile_decision.reason,
        "tokens": {"this_run": _usage_total(llm) - start_usage, "steps_total": tokens,
                   "requests": getattr(usage, "requests", 0), "cached": getattr(usage, "cached", 0),
                   "errors": getattr(usage, "errors", 0)},
        "wall_seconds": round(wall, 2),
        "steps_per_second": round(tried / wall, 3) if wall > 0 else None,
    }
