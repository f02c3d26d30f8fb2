"""One Evol-Instruct step: choose an operation, rewrite the instruction, check it, answer it, check the
answer. `evolve.py` runs these steps for every chain and round; everything here is a function of its
arguments (every random choice comes from ``(seed, chain_key, round)``), so a resumed or speculative
run asks exactly the requests a plain one asks.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from .. import constraints as C
from ..errors import DataforgeError
from ..records import Lineage, Record, utc_now
from .elimination import COPIED_PROMPT, LLM_FAILED, Eliminator, Verdict, default_embedder_factory

if TYPE_CHECKING:
    from ..llm import LLM
    from .evolve import EvolveConfig

IN_DEPTH = ("add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input")
IN_BREADTH = ("breadth",)
OPERATIONS = IN_DEPTH + IN_BREADTH
TEMPLATES = {op: f"evol_{op}" for op in OPERATIONS}
INPUT_KINDS = ("a small table of data (a few rows and columns)", "a short piece of code",
               "a small JSON object", "a short list of numbers or measurements")
TRUNCATED = "truncated_evolution"
DUPLICATE = "duplicate"
# default budgets by prompt profile (max tokens of an evolved instruction, of an answer)
EVOLVE_TOKENS = {"chat": 320, "fewshot": 80}
ANSWER_TOKENS = {"chat": 768, "fewshot": 96}


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
    """What every step of one run shares: options, model, eliminator, prompt profile, steering, budgets."""

    cfg: "EvolveConfig"
    llm: "LLM"
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
    return [s for s in parent.meta.get("constraints") or [] if C.still_worded(s, text)]


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



def make_context(cfg: "EvolveConfig", llm: "LLM") -> Context:
    """The run's shared state: steering from a stats file, the eliminator, token budgets by profile."""
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
    small = profile == "fewshot"
    if cfg.embedder:  # a user-chosen local model instead of MiniLM, loaded only if the fallback runs
        from functools import partial

        from ..quality.embed import get_embedder

        embedder_factory = partial(get_embedder, cfg.embedder)
    else:
        embedder_factory = default_embedder_factory()
    return Context(
        cfg=cfg, llm=llm, eliminator=Eliminator(cfg.elimination, llm=llm, embedder_factory=embedder_factory),
        profile=profile, topics=topics, steering=steering, level_names=level_names,
        evolve_tokens=cfg.evolve_max_tokens or (EVOLVE_TOKENS["fewshot"] if small else EVOLVE_TOKENS["chat"]),
        answer_tokens=cfg.answer_max_tokens or (ANSWER_TOKENS["fewshot"] if small else ANSWER_TOKENS["chat"]))

