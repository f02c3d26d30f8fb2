"""Multi-turn conversations from single-turn records: the model plays the user and writes a follow-up, then
answers it as the assistant, until each conversation holds `turns` answers.

A follow-up has a *style*, one prompt file each in ``prompts/converse_<style>.*.j2``: ``clarify`` (ask about
something unclear in the last answer), ``deeper`` (why, what follows, an example), ``constraint`` (the last
answer again under one changed requirement) and ``challenge`` (a doubtful claim, a counter-example). Part of
the ``constraint`` follow-ups (`verifiable_share`) ask for the answer again under a constraint drawn from the
library (``prompts/converse_restate``) and attach its spec to the user turn, so the gate checks that answer
exactly. A follow-up the model botched (a fragment, the model answering instead of asking, a repeat of an
earlier question: `user_turns.py`) is asked for once more with another seed; a conversation that still
cannot reach `turns` answers goes to ``<out>.rejected.jsonl`` with the turn and the reason.

Every turn lands in `Record.turns` (typed); the output records are new (lineage: parent = the input
record, generator ``converse``) and pending, so the gate judges every answer again. Each record's
randomness comes from ``(seed, record id, turn)`` and each finished conversation is journaled: a killed
run resumes, a shard or Ray batch makes the same conversations.

>>> summary = run_converse("seeds.jsonl", "dialogues.jsonl", ConverseConfig(turns=3))   # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Optional

from pydantic import Field, field_validator

from ..records import Lineage, Record, Turn, utc_now
from ..stage import Cli, IOConfig, SideFiles, Stage, StageContext, operation
from .evolve_step import derive_seed, item_rng
from .user_turns import clean_user_message, user_message_problem

if TYPE_CHECKING:
    from pathlib import Path

    from ..llm import LLM

STYLES = ("clarify", "deeper", "constraint", "challenge")
FOLLOW_UP_TOKENS = {"chat": 120, "fewshot": 48}
ANSWER_TOKENS = {"chat": 768, "fewshot": 256}
TRIES = 2  # attempts at a usable follow-up per turn
REPEAT_ROUGE = 0.7  # a follow-up this similar (ROUGE-L F) to an earlier user message repeats it
_C = "Conversation"


class ConverseConfig(IOConfig):
    """Options of `dataforge converse` (and of a `converse` pipeline stage)."""

    turns: Annotated[int, Cli(panel=_C)] = Field(
        3, ge=2, le=20, description="answers each conversation ends with (the input record's answer is the first)")
    styles: Annotated[list[str], Cli(panel=_C, metavar="STYLE,...")] = Field(
        default_factory=lambda: list(STYLES), description=f"follow-up styles to draw from ({', '.join(STYLES)})")
    verifiable_share: Annotated[float, Cli(panel=_C)] = Field(
        0.5, ge=0, le=1, description="share of 'constraint' follow-ups that ask for the answer again under a "
        "checkable constraint from the library (attached to the turn) instead of a model-written change")
    temperature: Annotated[float, Cli(panel=_C)] = Field(0.7, ge=0, description="sampling temperature")
    follow_up_max_tokens: Annotated[Optional[int], Cli(panel=_C, default_text="120 chat models, 48 few-shot")] = \
        Field(None, ge=8, description="max tokens of a follow-up")
    answer_max_tokens: Annotated[Optional[int], Cli(panel=_C, default_text="768 chat models, 256 few-shot")] = \
        Field(None, ge=8, description="max tokens of an answer")
    max_in_flight: Annotated[int, Cli(panel=_C)] = Field(16, ge=1, description="conversations in flight at once")
    seed: int = Field(0, description="seed of every random choice (derived per record and turn)")

    @field_validator("styles")
    @classmethod
    def _known_styles(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in STYLES]
        if bad or not v:
            raise ValueError(f"unknown follow-up style(s) {bad}; choose from {', '.join(STYLES)}")
        return list(dict.fromkeys(v))


class ConverseStage(Stage[ConverseConfig]):
    """Extend single-turn records into conversations: the model writes the user's follow-up (clarify, go
    deeper, change a constraint, challenge the answer), then answers it, up to --turns answers."""

    name = "converse"
    partial_output = True  # stopped by a budget, it writes the conversations finished so far
    Config = ConverseConfig
    record_parallel = True
    output_neutral = frozenset({"max_in_flight", "out_format", "strict"})

    def __init__(self, cfg: ConverseConfig):
        super().__init__(cfg)
        self.outcomes: Counter[str] = Counter()
        self.styles: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()  # unusable follow-ups, by reason (each was asked for again)

    def needs_llm(self) -> bool:
        return True

    def side_outputs(self, side: SideFiles) -> dict[str, "Path"]:
        return {"rejected": side.rejected}

    async def process(self, records: Iterator[Record], ctx: StageContext) -> None:
        from ..stage.parallel import each_record

        await each_record(ctx, records, lambda r: self._converse(r, ctx.llm), lambda r, e: self._write(r, e, ctx),
                          max_in_flight=self.cfg.max_in_flight, label="converse", unit="conv")

    # ------------------------------------------------------------------ one conversation
    async def _converse(self, r: Record, llm: "LLM") -> dict[str, Any]:
        """The turns that extend `r`, as a journal entry (reason None: reached `turns` answers)."""
        cfg = self.cfg
        entry: dict[str, Any] = {"id": r.id, "turns": [], "reason": None, "truncated": [], "history": [],
                                 "dropped": []}
        if not r.output.strip():
            entry["reason"] = "converse:no_first_answer"
            return entry
        conversation = r.messages()
        system = r.meta.get("system")
        used = [s for t in r.turns for s in t.constraints] + list(r.meta.get("constraints") or [])
        for t in range(r.assistant_turns + 1, cfg.turns + 1):
            rng = item_rng(cfg.seed, r.id, t)
            style = rng.choice(cfg.styles)
            follow, problem = None, None
            for attempt in range(TRIES):
                follow, problem = await self._follow_up(r, conversation, style, rng, t, attempt, used, llm)
                if problem is None:
                    break
                entry["dropped"].append(problem)
            if problem is not None or follow is None:
                entry["reason"] = f"converse:follow_up_{problem} (turn {t})"
                return entry
            messages = ([{"role": "system", "content": str(system)}] if system else []) + conversation + \
                [{"role": "user", "content": follow["content"]}]
            answer, truncated, problem = await self._answer(messages, r, t, llm)
            if problem is not None:
                entry["reason"] = f"converse:answer_{problem} (turn {t})"
                return entry
            if truncated:
                entry["truncated"].append(t)
            template, template_hash = follow.pop("template"), follow.pop("template_hash")
            entry["turns"] += [follow, {"role": "assistant", "content": answer}]
            entry["history"].append({"step": f"turn {t}", "style": style, "template": template,
                                     "template_hash": template_hash, "attempts": attempt + 1})
            used += follow.get("constraints") or []
            conversation += [{"role": "user", "content": follow["content"]}, {"role": "assistant", "content": answer}]
        return entry

    async def _follow_up(self, r: Record, conversation: list[dict[str, str]], style: str, rng: Any, t: int,
                         attempt: int, used: list[dict[str, Any]], llm: "LLM") -> tuple[dict[str, Any] | None, str | None]:
        """(the user turn as a dict with its template, None) or (None, why it is unusable)."""
        from .. import constraints as C
        from ..errors import DataforgeError
        from ..llm import GenParams, LLMError
        from ..prompts import render
        from .novelty import rouge_l

        cfg = self.cfg
        if style == "constraint" and rng.random() < cfg.verifiable_share:
            try:
                spec = C.sample_constraint(rng, r.instruction, existing=used)
            except DataforgeError:
                spec = None
            if spec is not None:
                restate = render("converse_restate", "chat", phrase=spec["phrase"])
                return {"role": "user", "content": restate.text, "style": style, "constraints": [spec],
                        "template": restate.template_id, "template_hash": restate.hash}, None
        rendered = render(f"converse_{style}", llm.profile, conversation=conversation)
        small = llm.profile == "fewshot"
        params = GenParams(temperature=cfg.temperature, seed=derive_seed(cfg.seed, r.id, t, attempt, "follow_up"),
                           max_tokens=cfg.follow_up_max_tokens or FOLLOW_UP_TOKENS["fewshot" if small else "chat"])
        try:
            with operation("follow_up"):
                completion = await llm.generate(rendered, params)
        except LLMError:
            return None, "request_failed"
        label = rendered.meta.get("label")
        text = " ".join(clean_user_message(completion.text, (label,) if label else ()).split())
        problem = user_message_problem(text, truncated=completion.truncated)
        earlier = [m["content"] for m in conversation if m["role"] == "user"]
        if problem is None and any(rouge_l(e, text) > REPEAT_ROUGE for e in earlier):
            problem = "repeats_earlier_question"
        if problem is not None:
            return None, problem
        return {"role": "user", "content": text, "style": style, "template": rendered.template_id,
                "template_hash": rendered.hash}, None

    async def _answer(self, messages: list[dict[str, str]], r: Record, t: int, llm: "LLM"
                      ) -> tuple[str, bool, str | None]:
        from ..llm import GenParams, LLMError

        cfg = self.cfg
        small = llm.profile == "fewshot"
        params = GenParams(temperature=cfg.temperature, seed=derive_seed(cfg.seed, r.id, t, "answer"),
                           max_tokens=cfg.answer_max_tokens or ANSWER_TOKENS["fewshot" if small else "chat"])
        try:
            with operation("answer"):
                completion = await llm.chat(messages, params)
        except LLMError:
            return "", False, "request_failed"
        text = completion.text.strip()
        return text, completion.truncated, (None if text else "empty")

    # ------------------------------------------------------------------ output
    def _write(self, r: Record, entry: dict[str, Any], ctx: StageContext) -> None:
        self.dropped.update(entry.get("dropped") or [])
        if entry["reason"] is not None:
            self.outcomes["failed"] += 1
            ctx.out.write(r.with_status("rejected", entry["reason"]))
            return
        turns = [*r.turns, *(Turn.model_validate(t) for t in entry["turns"])]
        self.styles.update(t.style for t in turns[len(r.turns):] if t.style)
        meta = dict(r.meta)
        if entry["truncated"]:
            meta["converse"] = {"truncated_turns": entry["truncated"]}  # the gate reads it as finish_reason=length
        lineage = Lineage(parents=[r.id], root=r.lineage.root or r.id, generator="converse",
                          operation=",".join(dict.fromkeys(t.style for t in turns if t.style)) or None,
                          round=r.lineage.round, model=ctx.llm.model_id, template="converse",
                          timestamp=utc_now(), history=[*r.lineage.history, *entry["history"]])
        out = Record.model_validate({**r.model_dump(), "id": "", "turns": [t.model_dump() for t in turns],
                                     "status": "pending", "reasons": [], "scores": {}, "meta": meta,
                                     "lineage": lineage.model_dump()})
        self.outcomes["extended" if entry["turns"] else "already_long_enough"] += 1
        ctx.out.write(out)

    def finish(self, ctx: StageContext) -> dict[str, Any]:
        return {"turns": self.cfg.turns, "outcomes": dict(self.outcomes.most_common()),
                "follow_up_styles": dict(self.styles.most_common()),
                "follow_ups_dropped": dict(self.dropped.most_common())}


def run_converse(input_path, output_path, cfg: ConverseConfig | None = None, **kwargs: Any):
    """Python entry point: `run_stage` for this stage (same keyword arguments)."""
    from ..stage import run_stage

    return run_stage(ConverseStage, input_path, output_path, cfg, **kwargs)
