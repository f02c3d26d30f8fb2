"""Model judges for the gate: task alignment and contradiction as a yes/no probability (from the
first token's log-probabilities where the backend gives them, else from the answer text), and
complexity as a 1-10 score via structured output. Prompts live in prompts/judge_*.j2.

A judge that fails for good (LLMError) returns None: the check is then skipped for that record, and
the failure is counted, rather than the whole run dying on one bad request.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..llm.base import LLM, GenParams, LLMError
from ..prompts import render
from ..records import Record

_YES = ("yes", "true", "y")
_NO = ("no", "false", "n")
COMPLEXITY_SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}},
                     "required": ["score"]}


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

    def _vars(self, r: Record, response: str | None = None) -> dict[str, str]:
        return {"instruction": r.instruction, "input": r.input, "response": r.output if response is None else response}

    async def _yes_no(self, name: str, r: Record, response: str | None) -> float | None:
        prompt = render(name, self.llm.profile, **self._vars(r, response))
        params = GenParams(temperature=0.0, max_tokens=3, logprobs=5, seed=self.seed)  # legacy completions allow <= 5
        try:
            c = await self.llm.generate(prompt, params)
        except LLMError:
            self.errors += 1
            return None
        choice = c.choices[0] if c.choices else None
        p = yes_probability(c.text, choice.logprobs if choice else None)
        if p is None:
            self.unreadable += 1
        return p

    async def alignment(self, r: Record, response: str | None = None) -> float | None:
        return await self._yes_no("judge_alignment", r, response)

    async def contradiction(self, r: Record, response: str | None = None) -> float | None:
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
