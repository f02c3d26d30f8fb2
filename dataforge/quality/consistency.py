"""Self-consistency: a model that disagrees with itself does not know. For a response that ends in a
number or a short label, the model answers the same prompt k more times (sampled); the score is the
share of samples whose final answer equals the response's. No strong judge is needed: even a small
model's agreement separates the answers it is sure of from the ones it guessed.

Score ``consistency`` in [0, 1]; no score for free-form answers (nothing to compare) or when the
samples could not be had (counted in `errors`, never a pass).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..llm.base import GenParams, LLMError
from ..prompts import render
from ..records import Record
from .answers import final_answer


@dataclass(frozen=True)
class ConsistencySettings:
    samples: int = 5
    temperature: float = 0.7
    max_tokens: int | None = None  # None: 512 for chat models, 128 for few-shot ones


class SelfConsistency:
    def __init__(self, llm, settings: ConsistencySettings = ConsistencySettings(), seed: int = 0):
        self.llm, self.settings, self.seed = llm, settings, seed
        self.errors = 0
        self.sampled = 0

    async def check(self, r: Record, output: str) -> tuple[float, str | None] | None:
        own = final_answer(output)
        if own is None:
            return None
        s = self.settings
        prompt = render("answer", self.llm.profile, instruction=r.instruction, input=r.input)
        max_tokens = s.max_tokens or (512 if prompt.is_chat else 128)
        params = GenParams(temperature=s.temperature, max_tokens=max_tokens, n=s.samples, seed=self.seed)
        try:
            comp = await self.llm.generate(prompt, params)
        except LLMError:
            self.errors += 1
            return None
        self.sampled += 1
        answers = [final_answer(c.text, short_words=max(4, len(output.split()))) for c in comp.choices]
        agree = sum(1 for a in answers if a is not None and a.kind == own.kind and a.value == own.value)
        score = agree / max(len(answers), 1)
        if score >= 0.5:
            return score, None
        others = sorted({a.value for a in answers if a is not None and a.kind == own.kind and a.value != own.value})
        return score, f"{agree}/{len(answers)} samples agree with {own.value}" + (
            f" (others: {', '.join(others[:3])})" if others else "")
