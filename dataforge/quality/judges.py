"""Model judges for the gate: task alignment and contradiction as a yes/no probability, and complexity
as a 1-10 score via structured output. Prompts live in prompts/judge_*.j2.

Where the yes/no comes from: P(yes) from the first token's log-probabilities when the server returns
them. Many servers return none, and a reasoning model's first token is ``<think>``: then the judge asks
for a short generated verdict instead, ``{"verdict": "yes"|"no", "reason": "..."}``, through the
structured-output path (schema, validation, repair). A judge that still gives nothing (the request
failed for good, or no readable verdict) returns a `Judgement` without a score: the gate counts that
record as *unjudged* for the check, never as passed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..llm.base import LLM, GenParams, LLMError
from ..prompts import render
from ..records import Record

_YES = ("yes", "true", "y")
_NO = ("no", "false", "n")
COMPLEXITY_SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}},
                     "required": ["score"]}


class Verdict(BaseModel):
    """The generated verdict a judge falls back to when it cannot read log-probabilities."""

    model_config = ConfigDict(extra="forbid")
    verdict: Literal["yes", "no"]
    reason: str


@dataclass(frozen=True)
class Judgement:
    """One judge answer: `score` = P(yes) (None: no verdict), `how` it was read
    (logprobs | text | verdict | none) and the verdict's one-line `reason` when there is one."""

    score: float | None
    how: str
    reason: str | None = None


def yes_probability(text: str, logprobs: list[dict[str, float]] | None) -> float | None:
    """P(yes) / (P(yes) + P(no)) from the first generated token's alternatives, else 1/0 from the text."""
    if logprobs:
        yes = no = 0.0
        for tok, lp in (logprobs[0] or {}).items():
            t = tok.strip().lower()
            if t in _YES or t.startswith("yes"):
                yes += math.exp(lp)
            elif t in _NO or (t.startswith("no") and not t.startswith("not")):
                no += math.exp(lp)
        if yes + no > 0:
            return yes / (yes + no)
    m = re.search(r"[a-z]+", text.lower())
    if not m:
        return None
    word = m.group(0)
    if word in _YES:
        return 1.0
    if word in _NO:
        return 0.0
    return None


def parse_score(text: str, lo: int = 1, hi: int = 10) -> float | None:
    """The score from `{"score": N}` or the first number in the text, clipped to [lo, hi]."""
    value: Any = None
    try:
        obj = json.loads(text.strip().strip("`").removeprefix("json").strip())
        value = obj.get("score") if isinstance(obj, dict) else obj
    except (ValueError, AttributeError):
        m = re.search(r"-?\d+(?:\.\d+)?", text)
        value = m.group(0) if m else None
    try:
        return float(min(max(float(value), lo), hi))
    except (TypeError, ValueError):
        return None


class Judge:
    """Asks `llm` the gate's questions about one record; counts answers it could not read."""

    def __init__(self, llm: LLM, seed: int = 0):
        self.llm = llm
        self.seed = seed
        self.errors = 0
        self.unreadable = 0
        self.verdicts = 0  # answers that came from the generated-verdict fallback
        self.no_logprobs = False  # the server showed it gives none: go straight to the verdict

    @property
    def name(self) -> str:
        return str(getattr(self.llm, "model", "") or getattr(self.llm, "model_id", "model"))

    def _vars(self, r: Record, response: str | None = None) -> dict[str, str]:
        return {"instruction": r.instruction, "input": r.input, "response": r.output if response is None else response}

    async def _yes_no(self, name: str, r: Record, response: str | None) -> Judgement:
        variables = self._vars(r, response)
        if not self.no_logprobs:
            prompt = render(name, self.llm.profile, **variables)
            params = GenParams(temperature=0.0, max_tokens=3, logprobs=5, seed=self.seed)  # legacy completions allow <= 5
            try:
                c = await self.llm.generate(prompt, params)
            except LLMError as exc:
                if getattr(exc, "status", None) != 400:  # a 400 may be "no logprobs here": try the verdict
                    self.errors += 1
                    return Judgement(None, "none")
                self.no_logprobs = True
            else:
                choice = c.choices[0] if c.choices else None
                readable = choice is not None and choice.logprobs and not choice.reasoning and \
                    not next(iter(choice.logprobs[0] or {"": 0}), "").lstrip().startswith("<think")
                if readable:
                    p = yes_probability(c.text, choice.logprobs)
                    if p is not None:
                        return Judgement(p, "logprobs")
                else:
                    self.no_logprobs = True
        return await self._verdict(f"{name}_json", variables)

    async def _verdict(self, name: str, variables: dict[str, str]) -> Judgement:
        from ..llm.structured import generate_structured

        prompt = render(name, self.llm.profile, **variables)
        try:
            res = await generate_structured(self.llm, prompt, Verdict,
                                            GenParams(temperature=0.0, max_tokens=96, seed=self.seed), max_repairs=1)
        except LLMError:
            self.errors += 1
            return Judgement(None, "none")
        if not res.ok:
            self.unreadable += 1
            return Judgement(None, "none", f"no readable verdict ({res.reason})")
        self.verdicts += 1
        v = res.value
        return Judgement(1.0 if v.verdict == "yes" else 0.0, "verdict", " ".join(v.reason.split())[:200] or None)

    async def alignment(self, r: Record, response: str | None = None) -> Judgement:
        return await self._yes_no("judge_alignment", r, response)

    async def contradiction(self, r: Record, response: str | None = None) -> Judgement:
        return await self._yes_no("judge_contradiction", r, response)

    async def complexity(self, r: Record) -> float | None:
        prompt = render("judge_complexity", self.llm.profile, **self._vars(r))
        params = GenParams(temperature=0.0, max_tokens=16, seed=self.seed,
                           json_schema=COMPLEXITY_SCHEMA if prompt.is_chat else None)
        try:
            c = await self.llm.generate(prompt, params)
        except LLMError:
            self.errors += 1
            return None
        s = parse_score(c.text)
        if s is None:
            self.unreadable += 1
        return s
